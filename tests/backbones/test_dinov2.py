"""DINOv2 parity with HF transformers' `Dinov2Model` / `Dinov2WithRegistersModel`.

The reference models get seeded random weights (every tensor, layer-scale gammas and
embeddings included); their state dicts are renamed to the official DINOv2 keys with
`hf_to_official` and converted with `conversion.dinov2.convert_dinov2_state_dict`, so the
parity tests also exercise the converter.

Position-embedding interpolation: HF's `Dinov2Model` resizes with `size=` (offset 0, no
antialias) while the official models use the `scale_factor=(n + 0.1) / M` form. The
size form is tested against HF as is (config `interpolate_offset=0.0`); the official form
(the default) against HF whose `interpolate_pos_encoding` is replaced by
`_official_interpolate_pos_encoding`, which follows the official code's call.
"""

import math
import re
from functools import partial

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from conversion.dinov2 import convert_dinov2_state_dict
from jaxvrp.backbones import apply, init
from jaxvrp.backbones.dinov2 import (
    DINOV2_VARIANTS,
    FEATURE_NAMES,
    Dinov2Config,
    get_config,
    interpolate_pos_embed,
)
from tests.conftest import rel_l2

torch = pytest.importorskip("torch", reason="torch is needed for the DINOv2 parity tests")
transformers = pytest.importorskip(
    "transformers", reason="HF transformers (the DINOv2 reference) is not installed"
)
F = torch.nn.functional

TOL = 1e-5
NATIVE = (14 * 8, 14 * 8)  # dinov2_test's trained 8 x 8 grid: no interpolation
OTHER = (14 * 6, 14 * 10)  # 6 x 10 patches: interpolated, not square


# HF name -> official DINOv2 name. HF splits the official fused `attn.qkv` into q/k/v
# projections (`attention.{q,k,v}_proj` in transformers 5, `attention.attention.{query,key,
# value}` before); the official rows are q, k, v stacked in that order.
_HF_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.register_tokens$", "register_tokens"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.(o_proj|output\.dense)\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.mlp\.(fc[12])\.", r"blocks.\1.mlp.\2."),
    (r"^layernorm\.", "norm."),
]
_HF_QKV = re.compile(
    r"^encoder\.layer\.(\d+)\.attention\.(?:(q|k|v)_proj|attention\.(query|key|value))"
    r"\.(weight|bias)$"
)


def hf_to_official(hf_state_dict: dict) -> dict:
    """HF Dinov2(WithRegisters)Model state dict -> official DINOv2 keys (tensors kept as is).

    Fails on any HF key it does not know, so the map is complete for the installed version.
    """
    out, qkv = {}, {}
    for key, value in hf_state_dict.items():
        m = _HF_QKV.match(key)
        if m:
            which = (m.group(2) or m.group(3))[0]  # q / k / v
            qkv.setdefault((m.group(1), m.group(4)), {})[which] = value
            continue
        for pattern, repl in _HF_RENAMES:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise KeyError(f"no official DINOv2 name for HF key {key!r}")
    for (block, leaf), parts in qkv.items():
        out[f"blocks.{block}.attn.qkv.{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def _hf_config(config: Dinov2Config):
    kwargs = dict(
        hidden_size=config.embed_dim,
        num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads,
        mlp_ratio=int(config.mlp_ratio),
        image_size=config.img_size,
        patch_size=config.patch_size,
        layer_norm_eps=config.layer_norm_eps,
        hidden_act="gelu",  # exact (erf) GELU, as the official nn.GELU()
        qkv_bias=True,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
        attn_implementation="eager",
    )
    if config.num_register_tokens:
        return transformers.Dinov2WithRegistersConfig(
            num_register_tokens=config.num_register_tokens, **kwargs
        )
    return transformers.Dinov2Config(**kwargs)


def hf_model(config: Dinov2Config, *, device=None):
    """The HF reference model of `config`'s shapes (random init; meta tensors on "meta")."""
    cls = transformers.Dinov2WithRegistersModel if config.num_register_tokens else None
    cls = cls or transformers.Dinov2Model
    if device is None:
        return cls(_hf_config(config)).eval()
    with torch.device(device):
        return cls(_hf_config(config)).eval()


def _randomize(model, seed: int) -> None:
    """Seeded random values for every tensor of the HF model, scaled to keep O(1) activations."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if re.search(r"(norm[12]?|layernorm)\.weight$", name):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith("lambda1"):  # layer-scale gamma
                p.copy_(0.5 + 0.2 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            elif name.endswith(".weight"):  # linear and patch conv: fan-in scaling
                p.copy_(noise / math.sqrt(p[0].numel()))
            else:  # cls / mask / register tokens, position embeddings
                p.copy_(0.5 * noise)


def _official_interpolate_pos_encoding(module, config: Dinov2Config):
    """HF's `interpolate_pos_encoding` replaced by the official DINOv2 call.

    Official `DinoVisionTransformer.interpolate_pos_encoding`: unchanged for the trained
    square grid, else `F.interpolate(grid, mode="bicubic", antialias=...)` with
    `scale_factor=((h0 + offset) / M, (w0 + offset) / M)` when the offset is non-zero (the
    official code calls the axes w, h but takes them from `x.shape[2:]` = (H, W)) or
    `size=(h0, w0)` when it is zero, in float32.
    """

    def interpolate(embeddings, height, width):
        pos = module.position_embeddings
        n = pos.shape[1] - 1
        m = int(math.sqrt(n))
        h0, w0 = height // config.patch_size, width // config.patch_size
        if embeddings.shape[1] - 1 == n and height == width:
            return pos
        grid = pos[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
        if config.interpolate_offset:
            off = config.interpolate_offset
            kwargs = {"scale_factor": (float(h0 + off) / m, float(w0 + off) / m)}
        else:
            kwargs = {"size": (h0, w0)}
        grid = F.interpolate(grid, mode="bicubic", antialias=config.interpolate_antialias, **kwargs)
        assert tuple(grid.shape[-2:]) == (h0, w0)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)
        return torch.cat([pos[:, :1], grid.to(pos.dtype)], dim=1)

    return interpolate


def _reference(config: Dinov2Config, seed: int):
    model = hf_model(config)
    _randomize(model, seed)
    sd = {k: v.detach().numpy().copy() for k, v in hf_to_official(model.state_dict()).items()}
    return model, convert_dinov2_state_dict(sd, config)


def _reference_features(model, config: Dinov2Config, images: np.ndarray) -> dict:
    """The feature dict computed from the HF model's hidden states (NHWC)."""
    b, h, w, _ = images.shape
    h0, w0 = h // config.patch_size, w // config.patch_size
    n_prefix = 1 + config.num_register_tokens
    with torch.no_grad():
        out = model(torch.from_numpy(images).permute(0, 3, 1, 2), output_hidden_states=True)
    hidden = out.hidden_states  # hidden[k]: after k blocks (hidden[0]: the embeddings)
    assert len(hidden) == config.depth + 1

    def patches(t):
        return t[:, n_prefix:].reshape(b, h0, w0, -1).numpy()

    s1, s2, s3 = config.feature_splits
    counts = {"layer0": 0, "layer1": s1, "layer2": s2, "layer3": s3, "layer4": config.depth}
    feats = {name: patches(hidden[k]) for name, k in counts.items()}
    # the class / register tokens each stage hands to the next (for runs that start there)
    feats.update({f"{name}_prefix": hidden[k][:, :n_prefix].numpy() for name, k in counts.items()})
    feats["norm"] = patches(out.last_hidden_state)
    feats["cls"] = out.last_hidden_state[:, 0].numpy()
    return feats


def _images(hw: tuple[int, int], seed: int, batch: int = 2) -> np.ndarray:
    return np.random.RandomState(seed).randn(batch, *hw, 3).astype(np.float32)


def _check(actual: dict, expected: dict, tol: float = TOL) -> dict:
    assert set(actual) == set(expected)
    errors = {k: rel_l2(actual[k], expected[k]) for k in expected}
    print({k: f"{v:.2e}" for k, v in errors.items()})  # shown with pytest -s
    assert all(e <= tol for e in errors.values()), errors
    return errors


@pytest.fixture(scope="module")
def plain():
    """dinov2_test with the official offset, its HF reference and converted params."""
    config = get_config("dinov2_test")
    model, params = _reference(config, seed=0)
    return config, model, params


@pytest.mark.parametrize("hw", [NATIVE, OTHER], ids=["native", "interpolated"])
def test_matches_hf_size_form(plain, hw):
    """`interpolate_offset=0` is HF's behaviour (at the native size nothing is resized)."""
    config, model, params = plain
    config = Dinov2Config(**{**config.to_dict(), "interpolate_offset": 0.0})
    images = _images(hw, seed=1)
    actual = jax.jit(partial(apply, config=config))(params, images)
    _check(actual, _reference_features(model, config, images))
    h0, w0 = hw[0] // 14, hw[1] // 14
    assert actual["layer2"].shape == (2, h0, w0, 64) and actual["cls"].shape == (2, 64)


@pytest.mark.parametrize("hw", [NATIVE, OTHER], ids=["native", "interpolated"])
def test_matches_official_offset_form(plain, hw, monkeypatch):
    """The default (official `interpolate_offset=0.1` scale-factor form)."""
    config, model, params = plain
    emb = model.embeddings
    monkeypatch.setattr(
        emb, "interpolate_pos_encoding", _official_interpolate_pos_encoding(emb, config)
    )
    images = _images(hw, seed=2)
    actual = jax.jit(partial(apply, config=config))(params, images)
    _check(actual, _reference_features(model, config, images))


@pytest.mark.parametrize("hw", [NATIVE, OTHER], ids=["native", "interpolated"])
def test_registers_match_hf_with_registers(hw):
    """The `_reg` models: 4 register tokens, antialiased size-form interpolation."""
    config = get_config("dinov2_test_reg")
    model, params = _reference(config, seed=3)
    images = _images(hw, seed=4)
    actual = jax.jit(partial(apply, config=config))(params, images)
    _check(actual, _reference_features(model, config, images))


def test_full_size_vits14_matches_hf():
    """The real ViT-S/14 shapes (37 x 37 table, 12 blocks split 4/2/5/1), on a small image."""
    config = get_config("dinov2_vits14", interpolate_offset=0.0)  # HF's size form
    model, params = _reference(config, seed=6)
    images = _images((28, 42), seed=7, batch=1)
    actual = jax.jit(partial(apply, config=config))(params, images)
    _check(actual, _reference_features(model, config, images))


def test_official_and_hf_interpolation_differ():
    """The two forms give different tables at the full-size 37 x 37 grid (not a rounding)."""
    pos = np.random.RandomState(5).randn(1, 1 + 37 * 37, 8).astype(np.float32)
    official = interpolate_pos_embed(pos, (32, 45), offset=0.1)
    hf = interpolate_pos_embed(pos, (32, 45), offset=0.0)
    assert official.shape == hf.shape == (1, 1 + 32 * 45, 8)
    assert rel_l2(official, hf) > 1e-2
    # ... and both are the identity at the trained size
    np.testing.assert_array_equal(interpolate_pos_embed(pos, (37, 37), offset=0.1), pos)


@pytest.mark.parametrize(
    ("grid", "offset", "antialias"),
    [((32, 45), 0.1, False), ((16, 16), 0.1, False), ((40, 24), 0.0, True), ((74, 20), 0.0, True)],
)
def test_interpolate_pos_embed_full_grid_matches_torch(grid, offset, antialias):
    """The 37 x 37 table of the released models, against the official call in PyTorch."""
    pos = np.random.RandomState(6).randn(1, 1 + 37 * 37, 8).astype(np.float32)
    config = Dinov2Config(8, 1, 1, interpolate_offset=offset, interpolate_antialias=antialias)

    class _Emb:
        position_embeddings = torch.from_numpy(pos)

    embeddings = torch.zeros(1, 1 + grid[0] * grid[1], 8)
    expected = _official_interpolate_pos_encoding(_Emb, config)(
        embeddings, grid[0] * 14, grid[1] * 14
    )
    actual = interpolate_pos_embed(pos, grid, offset=offset, antialias=antialias)
    assert rel_l2(actual, expected.numpy()) <= 1e-6


def test_feature_splits():
    assert DINOV2_VARIANTS["dinov2_vitl14"].feature_splits == (8, 12, 21)
    assert DINOV2_VARIANTS["dinov2_vitb14"].feature_splits == (4, 6, 11)
    assert DINOV2_VARIANTS["dinov2_vits14"].feature_splits == (4, 6, 11)
    assert DINOV2_VARIANTS["dinov2_test"].feature_splits == (3, 4, 7)


def test_shallow_model_returns_every_feature():
    """Depth 2: split points 1, 1, 2 coincide; every name is still there, equal to its peer."""
    config = Dinov2Config(16, 2, 2, img_size=28)
    params = jax.jit(partial(init, config=config))(jax.random.key(0))
    out = jax.jit(partial(apply, config=config))(params, _images((28, 42), seed=9))
    assert set(out) == set(FEATURE_NAMES) | {f"layer{i}_prefix" for i in range(5)}
    np.testing.assert_array_equal(out["layer1"], out["layer2"])
    np.testing.assert_array_equal(out["layer3"], out["layer4"])
    assert out["layer4"].shape == (2, 2, 3, 16)


def test_rejects_sizes_not_multiple_of_patch(plain):
    config, _, params = plain
    with pytest.raises(ValueError, match="not a multiple of the patch size 14"):
        apply(params, np.zeros((1, 112, 100, 3), np.float32), config=config)


def test_bfloat16_close_to_float32(plain):
    config, _, params = plain
    images = _images(OTHER, seed=7)
    f32 = jax.jit(partial(apply, config=config))(params, images)
    bf16_config = get_config("dinov2_test", dtype="bfloat16")
    bf16 = jax.jit(partial(apply, config=bf16_config))(params, images)
    for k in f32:
        assert bf16[k].dtype == np.float32
        assert rel_l2(bf16[k], f32[k]) <= 5e-2, k


def test_sharded_over_8_devices_equals_one_device(plain, devices):
    config, _, params = plain
    images = _images(OTHER, seed=8, batch=8)
    fn = jax.jit(partial(apply, config=config))
    single = fn(params, images)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
    sharded_images = jax.device_put(images, NamedSharding(mesh, PartitionSpec("data")))
    replicated = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    sharded = fn(replicated, sharded_images)
    for k in single:
        assert len(sharded[k].sharding.device_set) == 8
        assert rel_l2(sharded[k], single[k]) <= 1e-6, k
