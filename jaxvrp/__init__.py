"""jaxvrp: visual-reference segmentation with a frozen Segment Anything model, in JAX/Flax."""

__version__ = "0.1.0"
