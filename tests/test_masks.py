"""Mask geometry (`jaxvrp.masks`)."""

import jax.numpy as jnp
import numpy as np

from jaxvrp.data.annotations import tight_box
from jaxvrp.masks import erode, tight_boxes


def test_tight_boxes_equal_the_host_tight_box_and_flag_empty_masks():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 13, 17)) < 0.05
    masks[2] = False
    masks[4] = False
    masks[4, 12, 16] = True  # the last pixel: box (16, 12, 17, 13)
    boxes, empty = tight_boxes(jnp.asarray(masks))
    for i, m in enumerate(masks):
        np.testing.assert_array_equal(boxes[i], tight_box(m))
    np.testing.assert_array_equal(empty, [False, False, True, False, False])


def test_erode_with_the_border_outside_or_inside():
    m = np.zeros((5, 6), bool)
    m[0:3, 0:4] = True
    inner = np.zeros_like(m)
    inner[1, 1:3] = True
    np.testing.assert_array_equal(erode(m), inner)
    inner_border = np.zeros_like(m)
    inner_border[0:2, 0:3] = True  # the image border does not erode
    np.testing.assert_array_equal(erode(m, outside=True), inner_border)
