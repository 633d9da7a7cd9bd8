"""Pre/post-processing against the official code and `torch.nn.functional.interpolate`."""

import numpy as np
import pytest
import torch

from conversion.official import import_segment_anything
from jaxvrp.sam import ResizeLongestSide, postprocess_masks, preprocess
from tests.conftest import rel_l2
from tests.sam.official import official_and_params


@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (333, 1001), (1024, 1024), (7, 3)])
def test_resize_longest_side_matches_official(hw):
    ours = ResizeLongestSide(1024)
    theirs = import_segment_anything().utils.transforms.ResizeLongestSide(1024)
    assert ours.get_preprocess_shape(*hw, 1024) == theirs.get_preprocess_shape(*hw, 1024)
    coords = np.random.RandomState(0).rand(4, 3, 2) * hw[::-1]
    np.testing.assert_array_equal(ours.apply_coords(coords, hw), theirs.apply_coords(coords, hw))
    boxes = np.random.RandomState(1).rand(2, 4) * (hw[::-1] * 2)
    np.testing.assert_array_equal(ours.apply_boxes(boxes, hw), theirs.apply_boxes(boxes, hw))
    image = np.random.RandomState(2).randint(0, 256, (*hw, 3)).astype(np.uint8)
    np.testing.assert_array_equal(ours.apply_image(image), theirs.apply_image(image))


def test_preprocess_matches_official():
    ref, _, config = official_and_params("test_tiny")
    image = np.random.RandomState(3).randint(0, 256, (1, 768, 1024, 3)).astype(np.uint8)
    with torch.no_grad():
        expected = ref.preprocess(torch.from_numpy(image).permute(0, 3, 1, 2).float())
    actual = preprocess(image, config)
    assert actual.shape == (1, 1024, 1024, 3)
    assert rel_l2(actual, expected.permute(0, 2, 3, 1).numpy()) <= 1e-6


@pytest.mark.parametrize("original", [(480, 640), (1000, 300), (50, 70)])
def test_postprocess_masks_matches_official(original):
    ref, _, config = official_and_params("test_tiny")
    input_size = ResizeLongestSide(1024).get_preprocess_shape(*original, 1024)
    low = np.random.RandomState(4).randn(2, 3, 256, 256).astype(np.float32)
    with torch.no_grad():
        expected = ref.postprocess_masks(torch.from_numpy(low), input_size, original).numpy()
    actual = postprocess_masks(low, input_size, original, config.image_size)
    assert actual.shape == (2, 3, *original)
    assert rel_l2(actual, expected) <= 1e-6
