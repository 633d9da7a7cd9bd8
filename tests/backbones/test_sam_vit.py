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
