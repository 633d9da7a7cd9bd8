"""The DINOv2 converter: official key names and shapes, strict refusal, variant inference."""

import re

import jax
import numpy as np
import pytest
from flax import traverse_util

from conversion.common import TRANSFORMS, ConversionError, torch_key
from conversion.dinov2 import (
    DINOV2_ARCHS,
    convert_dinov2_state_dict,
    infer_dinov2_variant,
    transform_of,
)
from jaxvrp.backbones import apply, param_shapes
from jaxvrp.backbones.dinov2 import DINOV2_VARIANTS, Dinov2Config, get_config


def official_shapes(config: Dinov2Config) -> dict[str, tuple[int, ...]]:
    """Key -> PyTorch shape of an official DINOv2 state dict (hub model, `block_chunks=0`).

    From facebookresearch/dinov2: `DinoVisionTransformer` (cls_token, pos_embed,
    register_tokens when there are registers, mask_token, patch_embed.proj conv, blocks, norm),
    `Block` (norm1, attn.qkv / attn.proj, ls1.gamma, norm2, mlp.fc1 / mlp.fc2, ls2.gamma).
    """
    d, hidden = config.embed_dim, int(config.embed_dim * config.mlp_ratio)
    p = config.patch_size
    shapes = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, 1 + config.grid_size**2, d),
        "mask_token": (1, d),
        "patch_embed.proj.weight": (d, 3, p, p),
        "patch_embed.proj.bias": (d,),
        "norm.weight": (d,),
        "norm.bias": (d,),
    }
    if config.num_register_tokens:
        shapes["register_tokens"] = (1, config.num_register_tokens, d)
    for i in range(config.depth):
        b = f"blocks.{i}."
        shapes.update(
            {
                b + "norm1.weight": (d,),
                b + "norm1.bias": (d,),
                b + "attn.qkv.weight": (3 * d, d),
                b + "attn.qkv.bias": (3 * d,),
                b + "attn.proj.weight": (d, d),
                b + "attn.proj.bias": (d,),
                b + "ls1.gamma": (d,),
                b + "norm2.weight": (d,),
                b + "norm2.bias": (d,),
                b + "mlp.fc1.weight": (hidden, d),
                b + "mlp.fc1.bias": (hidden,),
                b + "mlp.fc2.weight": (d, hidden),
                b + "mlp.fc2.bias": (d,),
                b + "ls2.gamma": (d,),
            }
        )
    return shapes


def _shape_only(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Arrays of the right shapes that allocate nothing (zero-stride views)."""
    return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}


def _random_state_dict(config: Dinov2Config, seed: int = 0) -> dict[str, np.ndarray]:
    rs = np.random.RandomState(seed)
    return {k: rs.randn(*s).astype(np.float32) for k, s in official_shapes(config).items()}


def test_torch_key_names():
    assert torch_key(("blocks_3", "ls1", "gamma")) == "blocks.3.ls1.gamma"
    assert torch_key(("blocks_11", "attn", "qkv", "kernel")) == "blocks.11.attn.qkv.weight"
    assert torch_key(("blocks_0", "norm1", "scale")) == "blocks.0.norm1.weight"
    assert torch_key(("patch_embed", "proj", "kernel")) == "patch_embed.proj.weight"
    assert torch_key(("cls_token",)) == "cls_token"
    assert torch_key(("norm", "bias")) == "norm.bias"


@pytest.mark.parametrize("arch", [*DINOV2_ARCHS, "dinov2_vitb14_reg"])
def test_full_size_names_and_shapes_match_official(arch):
    """Every target leaf <- one official key with the right shape, without allocating."""
    config = DINOV2_VARIANTS[arch]
    official = official_shapes(config)
    flat = traverse_util.flatten_dict(param_shapes(config))
    keys = {torch_key(path): leaf for path, leaf in flat.items()}
    assert sorted(keys) == sorted(official)
    for key, leaf in keys.items():
        view = np.broadcast_to(np.float32(0), official[key])
        assert TRANSFORMS[transform_of(key)](view).shape == leaf.shape, key
    assert infer_dinov2_variant(_shape_only(official)) == arch


def test_full_size_parameter_counts():
    """Sizes of the released models (backbone parameters, mask token included)."""
    counts = {
        a: sum(x.size for x in jax.tree.leaves(param_shapes(DINOV2_VARIANTS[a])))
        for a in DINOV2_ARCHS
    }
    assert counts == {
        "dinov2_vits14": 22_056_576,
        "dinov2_vitb14": 86_580_480,
        "dinov2_vitl14": 304_368_640,
    }


@pytest.mark.parametrize("arch", DINOV2_ARCHS)
def test_hf_key_map_covers_full_size_models(arch):
    """HF's model of the same size, on the meta device, maps onto the official key list."""
    pytest.importorskip("transformers", reason="HF transformers is not installed")
    from tests.backbones.test_dinov2 import hf_model, hf_to_official  # noqa: PLC0415

    config = DINOV2_VARIANTS[arch]
    mapped = hf_to_official(hf_model(config, device="meta").state_dict())
    assert {k: tuple(v.shape) for k, v in mapped.items()} == official_shapes(config)


def test_converts_with_the_layout_transforms():
    config = get_config("dinov2_test")
    sd = _random_state_dict(config)
    params = convert_dinov2_state_dict(sd, config)
    np.testing.assert_array_equal(
        params["blocks_2"]["attn"]["qkv"]["kernel"], sd["blocks.2.attn.qkv.weight"].T
    )
    np.testing.assert_array_equal(
        params["blocks_7"]["mlp"]["fc2"]["kernel"], sd["blocks.7.mlp.fc2.weight"].T
    )
    np.testing.assert_array_equal(
        params["patch_embed"]["proj"]["kernel"],
        sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(params["blocks_3"]["ls1"]["gamma"], sd["blocks.3.ls1.gamma"])
    np.testing.assert_array_equal(params["norm"]["scale"], sd["norm.weight"])
    np.testing.assert_array_equal(params["pos_embed"], sd["pos_embed"])
    np.testing.assert_array_equal(params["mask_token"], sd["mask_token"])
    out = apply(params, np.zeros((1, 28, 42, 3), np.float32), config=config)
    assert out["layer4"].shape == (1, 2, 3, 64)


def test_refuses_missing_key():
    config = get_config("dinov2_test")
    sd = _random_state_dict(config)
    del sd["blocks.3.ls1.gamma"]
    with pytest.raises(ConversionError, match=r"missing keys \(1\):\n.*blocks\.3\.ls1\.gamma"):
        convert_dinov2_state_dict(sd, config)


def test_refuses_extra_key():
    config = get_config("dinov2_test")
    sd = _random_state_dict(config)
    sd["head.weight"] = np.zeros((10, 64), np.float32)
    with pytest.raises(ConversionError, match=r"unexpected keys \(1\):\n\s+head\.weight"):
        convert_dinov2_state_dict(sd, config)


def test_refuses_register_tokens_for_a_model_without_registers():
    sd = _random_state_dict(get_config("dinov2_test_reg"))
    with pytest.raises(ConversionError, match="register_tokens"):
        convert_dinov2_state_dict(sd, get_config("dinov2_test"))


def test_refuses_wrong_shape():
    config = get_config("dinov2_test")
    sd = _random_state_dict(config)
    sd["pos_embed"] = np.zeros((1, 1 + 10 * 10, 64), np.float32)  # trained for another size
    with pytest.raises(ConversionError, match=re.escape("pos_embed: source (1, 101, 64)")):
        convert_dinov2_state_dict(sd, config)


def test_infers_variants():
    assert infer_dinov2_variant(_random_state_dict(get_config("dinov2_test"))) == "dinov2_test"
    reg = _random_state_dict(get_config("dinov2_test_reg"))
    assert infer_dinov2_variant(reg) == "dinov2_test_reg"
    sd = _shape_only(official_shapes(Dinov2Config(512, 12, 8)))
    with pytest.raises(ConversionError, match="no DINOv2 variant has width 512, depth 12"):
        infer_dinov2_variant(sd)
    with pytest.raises(ConversionError, match="not a DINOv2 state dict"):
        infer_dinov2_variant({"image_encoder.patch_embed.proj.weight": np.zeros(1)})


def test_config_dict_round_trip():
    config = get_config("dinov2_vitl14_reg")
    assert Dinov2Config.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown Dinov2Config keys"):
        Dinov2Config.from_dict({**config.to_dict(), "depth_": 3})
    with pytest.raises(ValueError, match="unknown DINOv2 variant"):
        get_config("dinov2_vitg14")
