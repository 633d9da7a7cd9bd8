"""`jaxvrp.image` bicubic resizing against PyTorch's `F.interpolate(mode="bicubic")`."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxvrp.image import bicubic_matrix, interpolate_output_size, resize_bicubic
from tests.conftest import rel_l2


def _torch(x: np.ndarray, **kwargs) -> np.ndarray:
    out = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), mode="bicubic", **kwargs)
    return out.permute(0, 2, 3, 1).numpy()


def _image(seed: int, hw=(37, 29)) -> np.ndarray:
    return np.random.RandomState(seed).randn(2, *hw, 3).astype(np.float32)


# antialias with align_corners=True is not implemented (nothing uses it)
@pytest.mark.parametrize(
    ("align_corners", "antialias"), [(False, False), (True, False), (False, True)]
)
@pytest.mark.parametrize("size", [(74, 58), (12, 7), (20, 64), (37, 29), (1, 3)])
def test_size_form_matches_torch(size, align_corners, antialias):
    x = _image(0)
    expected = _torch(x, size=size, align_corners=align_corners, antialias=antialias)
    actual = resize_bicubic(x, size, align_corners=align_corners, antialias=antialias)
    assert rel_l2(actual, expected) <= 1e-6


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize(
    "scale_factor",
    [
        (32.1 / 37, 45.1 / 29),  # DINOv2's (n + 0.1) / M: down on one axis, up on the other
        (6.1 / 37, 10.1 / 37),  # far down
        (2.5, 1.7),  # up
        (1.01, 0.99),  # output sizes unchanged on one axis, sampling not
        0.45,  # one factor for both axes
    ],
)
def test_scale_factor_form_matches_torch(scale_factor, antialias):
    x = _image(1)
    factors = scale_factor if isinstance(scale_factor, tuple) else (scale_factor,) * 2
    expected = _torch(x, scale_factor=factors, antialias=antialias)
    actual = resize_bicubic(x, scale_factor=scale_factor, antialias=antialias)
    assert actual.shape == expected.shape
    assert rel_l2(actual, expected) <= 1e-6


def test_scale_factor_samples_at_its_inverse_not_in_over_out():
    """PyTorch's rule that DINOv2's interpolation depends on: same output size, other values."""
    x = _image(2)
    s = 32.1 / 37
    assert interpolate_output_size(37, s) == 32
    by_factor = resize_bicubic(x, scale_factor=(s, 1.0))
    by_size = resize_bicubic(x, (32, 29))
    assert by_factor.shape == by_size.shape
    assert rel_l2(by_factor, by_size) > 1e-3
    assert rel_l2(by_factor, _torch(x, scale_factor=(s, 1.0))) <= 1e-6


def test_weights_rows_sum_to_one_and_identity_at_same_size():
    for n_in, n_out in [(37, 32), (8, 10), (5, 5), (2, 9)]:
        for antialias in (False, True):
            w = bicubic_matrix(n_in, n_out, antialias=antialias)
            np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(bicubic_matrix(9, 9), np.eye(9), atol=1e-7)


def test_channels_first_equals_channels_last():
    x = np.random.RandomState(3).randn(2, 3, 20, 30).astype(np.float32)
    first = resize_bicubic(x, (9, 41), channels_last=False)
    last = resize_bicubic(x.transpose(0, 2, 3, 1), (9, 41))
    np.testing.assert_allclose(first, np.asarray(last).transpose(0, 3, 1, 2), rtol=1e-6)


def test_argument_errors():
    x = _image(4)
    with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
        resize_bicubic(x, (4, 4), scale_factor=2.0)
    with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
        resize_bicubic(x)
    with pytest.raises(ValueError, match="empty output"):
        resize_bicubic(x, scale_factor=0.01)
    with pytest.raises(ValueError, match="align_corners=True is not implemented"):
        bicubic_matrix(8, 4, antialias=True, align_corners=True)
