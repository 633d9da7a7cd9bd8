"""`jaxvrp.image` against PyTorch's `F.interpolate` and ImageNet normalisation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxvrp.image import IMAGENET_MEAN, IMAGENET_STD, normalize, resize_bilinear, resize_nearest
from tests.conftest import rel_l2


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(64, 64), (13, 29), (200, 97)])
def test_resize_bilinear_matches_torch(align_corners, size):
    x = np.random.RandomState(5).randn(2, 50, 60, 3).astype(np.float32)
    expected = (
        F.interpolate(
            torch.from_numpy(x).permute(0, 3, 1, 2),
            size,
            mode="bilinear",
            align_corners=align_corners,
        )
        .permute(0, 2, 3, 1)
        .numpy()
    )
    assert rel_l2(resize_bilinear(x, size, align_corners=align_corners), expected) <= 1e-6


@pytest.mark.parametrize("size", [(64, 64), (13, 29), (200, 97)])
def test_resize_nearest_matches_torch(size):
    x = np.random.RandomState(6).randn(2, 50, 60, 3).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size, mode="nearest")
    np.testing.assert_array_equal(resize_nearest(x, size), expected.permute(0, 2, 3, 1).numpy())


def test_bilinear_channels_first_equals_channels_last():
    x = np.random.RandomState(7).randn(2, 3, 20, 30).astype(np.float32)
    first = resize_bilinear(x, (9, 41), channels_last=False)
    last = resize_bilinear(x.transpose(0, 2, 3, 1), (9, 41))
    np.testing.assert_allclose(first, np.asarray(last).transpose(0, 3, 1, 2), rtol=1e-6)


def test_imagenet_normalize():
    x = np.random.RandomState(8).rand(2, 5, 6, 3).astype(np.float32)
    expected = (x - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(normalize(x, IMAGENET_MEAN, IMAGENET_STD), expected, atol=1e-6)
