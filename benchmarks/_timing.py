"""Timing shared by the benchmark scripts (imported as a sibling: `python benchmarks/X.py`
puts this folder first on `sys.path`)."""

import time

import jax
import numpy as np


def seconds_per_call(fn, steps: int, repeats: int, *, warmup: bool = True) -> float:
    """Median over `repeats` of the seconds per call over `steps` calls of `fn` (which
    returns arrays to wait for), after one untimed call when `warmup`."""
    if warmup:
        jax.block_until_ready(fn())
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            out = fn()
        jax.block_until_ready(out)
        runs.append((time.perf_counter() - t) / steps)
    return float(np.median(runs))
