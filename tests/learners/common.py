"""A small VRP-SAM / ProSAM set-up shared by the learner tests."""

import functools

import jax
import numpy as np

from jaxvrp import backbones
from jaxvrp.sam import get_config as sam_config
from jaxvrp.sam import init as sam_init

BACKBONE, SAM = "resnet_test_deepstem", "test_small_image"


@functools.cache
def frozen_params(seed: int = 0) -> dict:
    bb = backbones.get_config(BACKBONE)
    sam = sam_config(SAM)
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"sam": sam_init(k1, sam), "backbone": backbones.init(k2, bb)}


def make_batch(b: int = 2, k: int = 1, size: int = 64, seed: int = 0) -> dict:
    """Random images; reference annotations and the target mask are discs."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[:size, :size]

    def disc():
        cy, cx, r = rs.randint(size // 4, 3 * size // 4, 2).tolist() + [rs.randint(6, size // 3)]
        return ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.float32)

    return {
        "query_image": rs.randn(b, size, size, 3).astype(np.float32),
        "support_images": rs.randn(b, k, size, size, 3).astype(np.float32),
        "support_annotations": np.stack([np.stack([disc() for _ in range(k)]) for _ in range(b)]),
        "query_mask": np.stack([disc() for _ in range(b)]),
    }
