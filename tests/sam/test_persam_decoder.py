"""PerSAM's decoder options (`attn_sim`, `target_embedding`) against a PyTorch reference: the
PyPI `segment-anything` decoder with the two per_segment_anything changes
(`tests/learners/persam_reference.py`), on random weights."""

import functools
from functools import partial

import jax
import numpy as np
import pytest
import torch

from jaxvrp.sam import decode_masks, encode_prompts
from tests.conftest import rel_l2
from tests.learners import persam_reference as ref_impl
from tests.sam.official import TOL, random_prompts

VARIANT = "test_small_image"  # 16x16 embedding grid, 64-wide prompts


@functools.cache
def _jitted_decode(config, multimask):
    return jax.jit(partial(decode_masks, config=config, multimask_output=multimask))


def _inputs(config, batch, seed):
    rs = np.random.RandomState(seed)
    g, c = config.embedding_size, config.prompt_embed_dim
    emb = rs.randn(batch, g, g, c).astype(np.float32)
    # a sigmoid map with real contrast, as PerSAM's (values in (0, 1))
    attn_sim = (1 / (1 + np.exp(-3 * rs.randn(batch, g, g)))).astype(np.float32)
    target = (2 * rs.randn(batch, c)).astype(np.float32)
    return emb, attn_sim, target, random_prompts(config, batch, num_points=3, seed=seed)


def _reference(ref, emb, sparse, dense, multimask, attn_sim, target, inplace=True):
    """The torch decoder for one image: attn_sim (g, g) -> (1, 1, 1, g*g), target (C,) ->
    (1, 1, C), as persam.py shapes them."""
    sim_t = None if attn_sim is None else torch.from_numpy(attn_sim).reshape(1, 1, 1, -1)
    t_t = None if target is None else torch.from_numpy(target).reshape(1, 1, -1)
    lo, iou = ref_impl.mask_decoder(
        ref.mask_decoder,
        torch.from_numpy(np.array(emb)).permute(0, 3, 1, 2),
        ref.prompt_encoder.get_dense_pe(),
        torch.from_numpy(np.array(sparse)),
        torch.from_numpy(np.array(dense)).permute(0, 3, 1, 2),
        multimask,
        sim_t,
        t_t,
        inplace,
    )
    return lo.numpy(), iou.numpy()


@pytest.mark.parametrize(
    "use_sim,use_target,multimask",
    [(True, False, False), (False, True, True), (True, True, True)],
)
def test_options_match_the_per_segment_anything_decoder(use_sim, use_target, multimask):
    ref, params, config = ref_impl.official_and_params(VARIANT)
    emb, attn_sim, target, (points, labels, boxes, masks) = _inputs(config, batch=2, seed=3)
    sparse, dense = encode_prompts(
        params, config=config, points=points, point_labels=labels, boxes=boxes, masks=masks
    )
    decode = _jitted_decode(config, multimask)
    kw = {
        "attn_sim": attn_sim if use_sim else None,
        "target_embedding": target if use_target else None,
    }
    logits, iou = decode(params, emb, sparse, dense, **kw)
    plain, _ = decode(params, emb, sparse, dense)
    for b in range(2):
        ref_lo, ref_iou = _reference(
            ref,
            emb[b : b + 1],
            sparse[b : b + 1],
            dense[b : b + 1],
            multimask,
            attn_sim[b] if use_sim else None,
            target[b] if use_target else None,
        )
        assert rel_l2(logits[b : b + 1], ref_lo) <= TOL
        assert rel_l2(iou[b : b + 1], ref_iou) <= TOL
    # the options do change the decoder's output
    assert rel_l2(plain, logits) > 1e-2


def test_target_embedding_aliasing_is_reproduced():
    """The in-place `queries += target_embedding` also shifts the query PE; the reference
    without the aliasing gives clearly different logits, and ours follows the aliased one."""
    ref, params, config = ref_impl.official_and_params(VARIANT)
    emb, _, target, (points, labels, boxes, masks) = _inputs(config, batch=2, seed=3)
    sparse, dense = encode_prompts(
        params, config=config, points=points, point_labels=labels, boxes=boxes, masks=masks
    )
    logits, _ = _jitted_decode(config, True)(
        params, emb, sparse, dense, attn_sim=None, target_embedding=target
    )
    one = (emb[:1], sparse[:1], dense[:1], True, None, target[0])
    aliased, _ = _reference(ref, *one, inplace=True)
    plain, _ = _reference(ref, *one, inplace=False)
    assert rel_l2(logits[:1], aliased) <= TOL
    assert rel_l2(plain, aliased) > 1e-2
    assert rel_l2(logits[:1], plain) > 1e-2


def test_shared_options_broadcast_over_the_batch():
    """attn_sim / target_embedding with batch 1 apply to every prompt set."""
    _, params, config = ref_impl.official_and_params(VARIANT)
    emb, attn_sim, target, (points, labels, boxes, masks) = _inputs(config, batch=2, seed=3)
    sparse, dense = encode_prompts(
        params, config=config, points=points, point_labels=labels, boxes=boxes, masks=masks
    )
    decode = _jitted_decode(config, True)
    shared, _ = decode(
        params, emb, sparse, dense, attn_sim=attn_sim[:1], target_embedding=target[:1]
    )
    tiled, _ = decode(
        params,
        emb,
        sparse,
        dense,
        attn_sim=np.repeat(attn_sim[:1], 2, 0),
        target_embedding=np.repeat(target[:1], 2, 0),
    )
    np.testing.assert_allclose(shared, tiled, rtol=1e-6, atol=1e-6)
