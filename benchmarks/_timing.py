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


def with_backbone_stages(host_batch: dict, backbone_params, bb) -> dict:
    """`host_batch` plus the frozen backbone's stored stages, as `jaxvrp.precompute` stores
    them with `data.backbone_features` (VRP-SAM's `query_features/<stage>` (B, h, w, C) and
    `support_features/<stage>` (B, K, h, w, C)), computed here on the batch's images."""
    from jaxvrp.learners import vrp

    refs = host_batch["support_images"]
    b, k = refs.shape[:2]
    stages = jax.jit(lambda p, x: vrp.stored_stages(p, x, bb, vrp.QUERY_STAGES))
    q = stages(backbone_params, host_batch["query_image"])
    r = stages(backbone_params, refs.reshape(b * k, *refs.shape[2:]))
    return {
        **host_batch,
        **{f"query_features/{n}": np.asarray(v) for n, v in q.items()},
        **{
            f"support_features/{n}": np.asarray(r[n]).reshape(b, k, *r[n].shape[1:])
            for n in vrp.support_stages(bb)
        },
    }
