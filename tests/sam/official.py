"""Randomly initialised official SAMs and their converted jaxvrp params, cached per variant."""

import functools

import numpy as np

from conversion.official import build_official_sam, randomize_
from conversion.sam import convert_sam_state_dict
from jaxvrp.sam.config import get_config

TOL = 1e-5  # relative L2, float32, highest matmul precision (issue #2)


@functools.cache
def official_and_params(variant: str, seed: int = 0):
    """(official torch Sam, jaxvrp params, SamConfig) sharing the same random weights."""
    config = get_config(variant)
    ref = randomize_(build_official_sam(config), seed)
    state_dict = {k: v.numpy() for k, v in ref.state_dict().items()}
    return ref, convert_sam_state_dict(state_dict, config), config


def random_prompts(config, batch: int, num_points: int, seed: int):
    """Points with labels in {-1, 0, 1}, boxes and mask logits in input-frame pixels."""
    rs = np.random.RandomState(seed)
    s, m = config.image_size, config.low_res_mask_size
    points = (rs.rand(batch, num_points, 2) * s).astype(np.float32)
    labels = rs.randint(-1, 2, (batch, num_points)).astype(np.int32)
    boxes = np.sort(rs.rand(batch, 2, 2) * s, axis=1).reshape(batch, 4).astype(np.float32)
    masks = (3 * rs.randn(batch, m, m, 1)).astype(np.float32)
    return points, labels, boxes, masks
