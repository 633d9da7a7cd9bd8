"""ml-collections config files, one per trainable or evaluable thing (README.md here)."""
