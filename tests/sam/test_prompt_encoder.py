"""Prompt encoder parity with the official PyTorch `PromptEncoder`."""

import numpy as np
import pytest
import torch

from jaxvrp.sam import encode_prompts
from jaxvrp.sam.model import Sam
from tests.conftest import rel_l2
from tests.sam.official import TOL, official_and_params, random_prompts

KINDS = ["points", "boxes", "masks", "points+boxes", "points+masks", "points+boxes+masks"]


@pytest.mark.parametrize("variant", ["test_tiny", "test_small_image"])
@pytest.mark.parametrize("kinds", KINDS)
def test_prompt_encoder_matches_official(variant, kinds):
    ref, params, config = official_and_params(variant)
    points, labels, boxes, masks = random_prompts(config, batch=3, num_points=5, seed=4)
    use = set(kinds.split("+"))
    with torch.no_grad():
        ref_sparse, ref_dense = ref.prompt_encoder(
            (torch.from_numpy(points), torch.from_numpy(labels)) if "points" in use else None,
            torch.from_numpy(boxes) if "boxes" in use else None,
            torch.from_numpy(masks).permute(0, 3, 1, 2) if "masks" in use else None,
        )
    sparse, dense = encode_prompts(
        params,
        config=config,
        points=points if "points" in use else None,
        point_labels=labels if "points" in use else None,
        boxes=boxes if "boxes" in use else None,
        masks=masks if "masks" in use else None,
    )
    ref_sparse = ref_sparse.numpy()
    assert sparse.shape == ref_sparse.shape
    if ref_sparse.size:
        assert rel_l2(sparse, ref_sparse) <= TOL
    assert rel_l2(dense, ref_dense.detach().permute(0, 2, 3, 1).numpy()) <= TOL


def test_padding_and_not_a_point_labels():
    """Label -1 gives not_a_point_embed whatever the coordinates; a padding point is added
    only when no box is given."""
    ref, params, config = official_and_params("test_tiny")
    pts = np.array([[[10.0, 20.0], [500.0, 7.0], [999.0, 999.0]]], np.float32)
    lab = np.array([[1, -1, -1]], np.int32)
    sparse, _ = encode_prompts(params, config=config, points=pts, point_labels=lab)
    assert sparse.shape == (1, 4, 256)
    not_a_point = params["prompt_encoder"]["not_a_point_embed"]["embedding"][0]
    for i in (1, 2, 3):
        np.testing.assert_array_equal(sparse[0, i], not_a_point)
    sparse_box, _ = encode_prompts(
        params, config=config, points=pts, point_labels=lab, boxes=np.zeros((1, 4), np.float32)
    )
    assert sparse_box.shape == (1, 5, 256)


def test_dense_positional_encoding_matches_official():
    ref, params, config = official_and_params("test_small_image")
    pe = Sam(config).apply({"params": params}, method=lambda m: m.prompt_encoder.get_dense_pe())
    with torch.no_grad():
        expected = ref.prompt_encoder.get_dense_pe()[0].permute(1, 2, 0).numpy()
    assert rel_l2(pe, expected) <= TOL


def test_wrong_mask_input_size_is_a_clear_error():
    _, params, config = official_and_params("test_tiny")
    with pytest.raises(ValueError, match=r"mask input must have shape \(B, 256, 256, 1\)"):
        encode_prompts(params, config=config, masks=np.zeros((1, 64, 64, 1), np.float32))
