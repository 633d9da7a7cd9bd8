"""SAM's image encoder as a backbone ("sam_<variant>"): the stages are the encoder's blocks."""

import jax
import numpy as np
import pytest

from jaxvrp import backbones, frozen
from jaxvrp.learners import vrp
from jaxvrp.sam import config as sam_config
from jaxvrp.sam import model


@pytest.fixture(scope="module")
def encoder():
    sam = sam_config.get_config("tiny_128")
    params = model.init(jax.random.key(3), sam)
    images = np.random.default_rng(0).normal(size=(2, 128, 128, 3)).astype(np.float32)
    _, state = model.Sam(sam).apply(
        {"params": params},
        images,
        method=model.Sam.encode_image,
        capture_intermediates=True,
        mutable=["intermediates"],
    )
    blocks = state["intermediates"]["image_encoder"]
    return sam, params, images, [blocks[f"blocks_{i}"]["__call__"][0] for i in range(4)]


def test_stages_are_the_sam_encoder_blocks(encoder):
    sam, params, images, blocks = encoder
    config = backbones.get_config("sam_tiny_128")
    assert config.stage_ends() == {"layer0": 0, "layer1": 1, "layer2": 2, "layer3": 3, "layer4": 4}
    feats = backbones.apply(params["image_encoder"], images, config=config)
    for k in range(1, 5):
        np.testing.assert_allclose(feats[f"layer{k}"], blocks[k - 1], rtol=1e-5, atol=1e-5)
    # layer4 from layer3 (as VRP-SAM runs the masked reference) continues the same blocks
    rest = backbones.apply(params["image_encoder"], feats["layer3"], config=config, start="layer4")
    np.testing.assert_allclose(rest["layer4"], feats["layer4"], rtol=1e-5, atol=1e-5)


def test_vit_b_stage_split_and_input_size():
    assert backbones.get_config("sam_vit_b").stage_ends()["layer2"] == 6
    config = backbones.get_config("sam_tiny_128")
    shapes = backbones.param_shapes(config)
    assert "neck_0" not in shapes and "blocks_3" in shapes
    with pytest.raises(ValueError, match="128x128"):
        backbones.apply(
            jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes),
            np.zeros((1, 64, 64, 3), np.float32),
            config=config,
        )


def test_the_learner_takes_the_sam_weights_and_resizes_its_input(encoder):
    sam, params, _, _ = encoder
    config = vrp.make_config("sam_tiny_128", "tiny_128", num_queries=4)
    assert frozen.sam_backbone_params(params, config) is params["image_encoder"]
    other = vrp.make_config("sam_tiny_128", "test_small_image", num_queries=4)
    with pytest.raises(ValueError, match="SAM encoder"):
        frozen.sam_backbone_params(params, other)
    x = np.zeros((1, 64, 64, 3), np.float32)
    assert vrp.backbone_input(x, config).shape == (1, 128, 128, 3)


def test_one_encoder_pass_gives_the_query_stages_and_its_embedding(encoder):
    """VRP-SAM on its SAM's own encoder: the query's embedding is SAM's neck on the
    backbone's last stage, equal to the separate encoder pass; the query is encoded once."""
    from jaxvrp import stacked

    _, params, _, _ = encoder
    config = vrp.make_config("sam_tiny_128", "tiny_128", num_queries=4)
    assert vrp.shares_sam_encoder(config)
    assert not vrp.shares_sam_encoder(vrp.make_config("resnet_test", "tiny_128"))
    f = {"sam": params, "backbone": frozen.sam_backbone_params(params, config)}
    r = np.random.default_rng(5)
    batch = {
        "query_image": r.normal(size=(2, 96, 96, 3)).astype(np.float32),  # resized to 128
        "support_images": r.normal(size=(2, 2, 96, 96, 3)).astype(np.float32),
        "support_annotations": (r.random((2, 2, 96, 96)) > 0.5).astype(np.float32),
    }
    feats, emb = jax.jit(lambda f, b: vrp.frozen_features(f, b, config))(f, batch)
    separate = vrp.query_embeddings(f, batch, config)
    assert emb.shape == separate.shape == (2, 16, 16, 64)
    np.testing.assert_allclose(emb, separate, rtol=1e-5, atol=1e-5)
    for a, b in zip(feats, vrp.shot_features(f, batch, config), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    jaxpr = jax.make_jaxpr(lambda f, b: vrp.frozen_features(f, b, config))(f, batch).jaxpr
    assert sorted(s[0] for s in stacked._image_convs(jaxpr)) == [2, 4]  # 2 queries, 4 shots
    # a precomputed embedding is used as it is
    _, given = vrp.frozen_features(f, {**batch, "query_embedding": separate + 1}, config)
    np.testing.assert_array_equal(given, separate + 1)
