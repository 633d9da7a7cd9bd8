"""Mask decoder parity with the official PyTorch `MaskDecoder`, and per-image batching."""

from functools import partial

import jax
import numpy as np
import pytest
import torch

from jaxvrp.sam import decode_masks, encode_prompts
from tests.conftest import rel_l2
from tests.sam.official import TOL, official_and_params, random_prompts


def _official_decode(ref, emb, sparse, dense, multimask):
    with torch.no_grad():
        lo, iou = ref.mask_decoder(
            image_embeddings=torch.from_numpy(np.array(emb)).permute(0, 3, 1, 2),
            image_pe=ref.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=torch.from_numpy(np.array(sparse)),
            dense_prompt_embeddings=torch.from_numpy(np.array(dense)).permute(0, 3, 1, 2),
            multimask_output=multimask,
        )
    return lo.numpy(), iou.numpy()


def _inputs(config, batch, seed):
    rs = np.random.RandomState(seed)
    g = config.embedding_size
    emb = rs.randn(batch, g, g, config.prompt_embed_dim).astype(np.float32)
    return emb, random_prompts(config, batch, num_points=4, seed=seed)


@pytest.mark.parametrize("variant", ["test_tiny", "test_small_image"])
@pytest.mark.parametrize("multimask", [True, False])
def test_batch_of_images_each_with_its_own_prompts(variant, multimask):
    """Image b with prompt set b, compared with the official decoder run image by image
    (the official decoder cannot take several images in one call)."""
    ref, params, config = official_and_params(variant)
    emb, (points, labels, boxes, masks) = _inputs(config, batch=3, seed=5)
    sparse, dense = encode_prompts(
        params, config=config, points=points, point_labels=labels, boxes=boxes, masks=masks
    )
    decode = jax.jit(partial(decode_masks, config=config, multimask_output=multimask))
    logits, iou = decode(params, emb, sparse, dense)
    m = 3 if multimask else 1
    size = config.low_res_mask_size
    assert logits.shape == (3, m, size, size) and iou.shape == (3, m)
    for b in range(3):
        ref_lo, ref_iou = _official_decode(
            ref, emb[b : b + 1], sparse[b : b + 1], dense[b : b + 1], multimask
        )
        assert rel_l2(logits[b : b + 1], ref_lo) <= TOL
        assert rel_l2(iou[b : b + 1], ref_iou) <= TOL


@pytest.mark.parametrize("multimask", [True, False])
def test_one_image_shared_by_many_prompt_sets(multimask):
    """An image batch of 1 is broadcast over the prompt sets, as the official decoder does."""
    ref, params, config = official_and_params("test_tiny")
    emb, (points, labels, _, _) = _inputs(config, batch=4, seed=6)
    sparse, dense = encode_prompts(params, config=config, points=points, point_labels=labels)
    logits, iou = decode_masks(
        params, emb[:1], sparse, dense, config=config, multimask_output=multimask
    )
    ref_lo, ref_iou = _official_decode(ref, emb[:1], sparse, dense, multimask)
    assert rel_l2(logits, ref_lo) <= TOL
    assert rel_l2(iou, ref_iou) <= TOL


def test_mismatched_image_and_prompt_batches_are_rejected():
    _, params, config = official_and_params("test_tiny")
    emb, (points, labels, _, _) = _inputs(config, batch=3, seed=7)
    sparse, dense = encode_prompts(params, config=config, points=points, point_labels=labels)
    with pytest.raises(ValueError, match="image_embeddings batch 2 does not match"):
        decode_masks(params, emb[:2], sparse, dense, config=config, multimask_output=True)
