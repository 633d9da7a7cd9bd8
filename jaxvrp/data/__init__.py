"""Few-shot episode data and the reference annotations simulated from ground-truth masks."""
