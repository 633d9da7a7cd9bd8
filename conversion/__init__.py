"""Converters from PyTorch checkpoints to jaxvrp params checkpoints (needs torch)."""
