"""The pure-function API: init, config handling, bf16 compute."""

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvrp.sam import (
    SamConfig,
    encode_image,
    get_config,
    init,
    param_shapes,
    predict_masks,
)
from tests.conftest import rel_l2
from tests.sam.official import official_and_params, random_prompts


def test_init_matches_param_shapes_and_is_seeded():
    config = get_config("test_small_image")
    a, b = init(jax.random.key(0), config), init(jax.random.key(0), config)
    shapes = param_shapes(config)
    assert jax.tree.structure(a) == jax.tree.structure(shapes)
    assert all(
        x.shape == s.shape for x, s in zip(jax.tree.leaves(a), jax.tree.leaves(shapes), strict=True)
    )
    assert all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
    c = init(jax.random.key(1), config)
    assert not np.array_equal(
        a["mask_decoder"]["iou_token"]["embedding"], c["mask_decoder"]["iou_token"]["embedding"]
    )


def test_config_round_trip_and_errors():
    config = get_config("vit_b", dtype="bfloat16")
    assert SamConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown SAM variant 'vit_x'"):
        get_config("vit_x")
    with pytest.raises(ValueError, match=r"unknown SamConfig keys: \['bogus'\]"):
        SamConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    _, params, config = official_and_params("test_small_image")
    bf16 = dataclasses.replace(config, dtype="bfloat16")
    images = np.random.RandomState(0).randn(2, 256, 256, 3).astype(np.float32)
    f32_emb = jax.jit(partial(encode_image, config=config))(params, images)
    bf16_emb = jax.jit(partial(encode_image, config=bf16))(params, images)
    assert bf16_emb.dtype == jnp.float32
    assert 0 < rel_l2(bf16_emb, f32_emb) < 0.05
    points, labels, boxes, _ = random_prompts(config, 2, 3, seed=1)
    run = partial(predict_masks, points=points, point_labels=labels, boxes=boxes)
    lo32, iou32 = run(params, f32_emb, config=config)
    lo16, iou16 = run(params, f32_emb, config=bf16)
    assert lo16.dtype == iou16.dtype == jnp.float32
    assert rel_l2(lo16, lo32) < 0.05
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
