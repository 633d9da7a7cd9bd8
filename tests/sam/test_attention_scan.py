"""The image encoder's attention implementations and its scanned-blocks option.

"dot_product" (relative positions folded into augmented q/k) and "dot_product_bias"
(relative positions as a bias) must compute what the official formulation ("xla") does;
`scan_blocks=True` must compute what the unrolled blocks do on the same (stacked) params.
"""

import dataclasses
import functools
import types
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxvrp.sam import config as sam_config
from jaxvrp.sam import encode_image
from jaxvrp.sam import image_encoder as ie
from jaxvrp.sam.model import Sam, match_block_layout, param_shapes
from tests.conftest import rel_l2
from tests.sam.official import TOL, official_and_params

FUSED = ("dot_product", "dot_product_bias")


def _perturbed(tree, seed, scale=0.1):
    """Every leaf plus seeded noise, so the zero-initialised ones (relative-position tables,
    biases, position embedding) are not zero; small enough that no softmax saturates."""
    leaves, treedef = jax.tree.flatten(tree)
    rs = np.random.RandomState(seed)
    new = [(np.asarray(x) + scale * rs.randn(*x.shape)).astype(np.float32) for x in leaves]
    return jax.tree.unflatten(treedef, new)


@pytest.mark.parametrize("attention", FUSED)
@pytest.mark.parametrize(
    "size,batch",
    [
        ((14, 14), 3),  # a ViT window (several windows in the batch)
        ((5, 7), 2),  # odd and non-square, global over the whole map
        ((9, 9), 1),
    ],
)
def test_attention_matches_the_official_formulation(attention, size, batch):
    dim, heads = 48, 3
    x = np.random.RandomState(0).randn(batch, *size, dim).astype(np.float32)
    ref = ie.Attention(dim, heads, input_size=size)
    params = _perturbed(jax.jit(ref.init)(jax.random.key(0), x)["params"], seed=1)
    want = jax.jit(ref.apply)({"params": params}, x)
    fused = ie.Attention(dim, heads, input_size=size, attention=attention)
    got = jax.jit(fused.apply)({"params": params}, x)
    err = rel_l2(got, want)
    print(f"{attention} {size} batch {batch}: rel L2 {err:.1e}")
    assert err <= TOL


def test_augmented_qk_carry_the_relative_positions_exactly():
    """q' . k' = scale q . k + rel_h[qy, ky] + rel_w[qx, kx] for every (query, key) pair."""
    rs = np.random.RandomState(2)
    b, h, w, n, d = 2, 3, 6, 2, 8
    q, k, v = (rs.randn(b, h * w, n, d).astype(np.float32) for _ in range(3))
    rel_h = rs.randn(b, h, w, n, h).astype(np.float32)
    rel_w = rs.randn(b, h, w, n, w).astype(np.float32)
    qa, ka, va = ie.rel_pos_augmented_qkv(q, k, v, rel_h, rel_w, 0.25)
    assert qa.shape[-1] == ka.shape[-1] == va.shape[-1] == 24  # 8 + 3 + 6, padded to 8k
    logits = np.einsum("bqnd,bknd->bnqk", qa, ka).reshape(b, n, h, w, h, w)
    want = 0.25 * np.einsum("bqnd,bknd->bnqk", q, k).reshape(b, n, h, w, h, w)
    want = (
        want
        + rel_h.transpose(0, 3, 1, 2, 4)[..., :, None]
        + rel_w.transpose(0, 3, 1, 2, 4)[..., None, :]
    )
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(va[..., :d], v)
    assert not np.any(va[..., d:])


def _device(platform, kind, cc=None):
    return types.SimpleNamespace(platform=platform, device_kind=kind, compute_capability=cc)


@pytest.mark.parametrize(
    "device,head_dim,dtype,expected",
    [
        (_device("cpu", "cpu"), 208, jnp.bfloat16, "xla"),
        (_device("gpu", "NVIDIA H200", "9.0"), 208, jnp.bfloat16, "cudnn"),  # ViT-H global
        (_device("gpu", "NVIDIA H200", "9.0"), 264, jnp.bfloat16, "xla"),  # over 256
        (_device("gpu", "NVIDIA H200", "9.0"), 108, jnp.bfloat16, "xla"),  # not 8k
        (_device("gpu", "NVIDIA H200", "9.0"), 208, jnp.float32, "xla"),  # flash is 16-bit
        (_device("gpu", "NVIDIA A100", "8.0"), 208, jnp.float16, "xla"),  # 128 before Hopper
        (_device("gpu", "NVIDIA A100", "8.0"), 112, jnp.float16, "cudnn"),
        (_device("gpu", "AMD Instinct MI300X"), 64, jnp.bfloat16, "xla"),
    ],
)
def test_fused_implementation_choice(monkeypatch, device, head_dim, dtype, expected):
    monkeypatch.setattr(jax, "devices", lambda *a: [device])
    assert ie.fused_implementation(head_dim, dtype) == expected


@pytest.mark.parametrize("attention", FUSED)
def test_encoder_matches_official_with_fused_attention(attention):
    """test_small_image: windowed blocks (16 -> 21 padded, window 7) and a global block."""
    ref, params, config = official_and_params("test_small_image")
    images = np.random.RandomState(4).randn(2, 256, 256, 3).astype(np.float32)
    with torch.no_grad():
        want = ref.image_encoder(torch.from_numpy(images).permute(0, 3, 1, 2))
    want = want.permute(0, 2, 3, 1).numpy()
    cfg = dataclasses.replace(config, attention=attention)
    got = jax.jit(partial(encode_image, config=cfg))(params, images)
    xla = jax.jit(partial(encode_image, config=config))(params, images)
    err, err_xla = rel_l2(got, want), rel_l2(got, xla)
    print(f"encoder {attention}: rel L2 vs official {err:.1e}, vs xla {err_xla:.1e}")
    assert err <= TOL and err_xla <= TOL


# 6 blocks, global every 3rd (2 scan steps of (window, window, global)), 8x8 tokens, window
# 3 (padded 8 -> 9): small, and every structural case of the scan.
SCAN_CONFIG = sam_config.SamConfig(
    32, 6, 2, (2, 5), image_size=128, window_size=3, prompt_embed_dim=32, decoder_mlp_dim=64
)


@functools.cache
def scan_params(seed=6):
    """Random SCAN_CONFIG image-encoder params (per-block layout), as a SAM params tree."""
    images = jnp.zeros((1, 128, 128, 3))
    enc = jax.jit(partial(Sam(SCAN_CONFIG).init, method=Sam.encode_image))(
        jax.random.key(0), images
    )
    return _perturbed(enc["params"], seed)


def test_block_period():
    assert ie.block_period(12, (2, 5, 8, 11)) == 3
    assert ie.block_period(24, (5, 11, 17, 23)) == 6
    assert ie.block_period(32, (7, 15, 23, 31)) == 8
    for depth, idx in [(12, (2, 5, 8)), (12, (1, 5, 8, 11)), (4, ()), (5, (1, 3))]:
        with pytest.raises(ValueError, match="scan_blocks needs global attention"):
            ie.block_period(depth, idx)


def test_stack_unstack_round_trip_and_init_layout():
    enc = scan_params()["image_encoder"]
    stacked = ie.stack_blocks(enc, 6, 3)
    assert set(stacked["blocks"]) == {"blocks_0", "blocks_1", "blocks_2"}
    np.testing.assert_array_equal(
        stacked["blocks"]["blocks_1"]["attn"]["qkv"]["kernel"][1],
        enc["blocks_4"]["attn"]["qkv"]["kernel"],
    )
    back = ie.unstack_blocks(stacked, 6, 3)
    assert jax.tree.structure(back) == jax.tree.structure(enc)
    jax.tree.map(np.testing.assert_array_equal, back, enc)
    scanned_shapes = param_shapes(dataclasses.replace(SCAN_CONFIG, scan_blocks=True))
    assert jax.tree.map(np.shape, scanned_shapes["image_encoder"]) == jax.tree.map(
        np.shape, stacked
    )
    with pytest.raises(ValueError, match="not the per-block layout"):
        ie.stack_blocks(stacked, 6, 3)
    with pytest.raises(ValueError, match="not the scanned layout"):
        ie.unstack_blocks(enc, 6, 3)


@pytest.mark.parametrize("attention", ["xla", "dot_product"])
def test_scanned_blocks_equal_unrolled(attention):
    params = scan_params()
    images = np.random.RandomState(7).randn(2, 128, 128, 3).astype(np.float32)
    unrolled = jax.jit(partial(encode_image, config=SCAN_CONFIG))(params, images)
    cfg = dataclasses.replace(SCAN_CONFIG, scan_blocks=True, attention=attention)
    stacked = match_block_layout(params, cfg)
    assert "blocks" in stacked["image_encoder"]
    fn = jax.jit(partial(encode_image, config=cfg))
    scanned = fn(stacked, images)
    err = rel_l2(scanned, unrolled)
    assert np.std(unrolled) > 0.1
    print(f"scan_blocks {attention}: rel L2 vs unrolled {err:.1e}")
    assert err <= TOL
    # per-block params (as converted checkpoints hold them) are stacked on the fly
    np.testing.assert_array_equal(fn(params, images), scanned)
    # and the unrolled encoder takes stacked params back
    np.testing.assert_array_equal(
        jax.jit(partial(encode_image, config=SCAN_CONFIG))(stacked, images), unrolled
    )


def test_config_compute_options_are_not_architecture():
    base = sam_config.get_config("vit_b")
    fast = sam_config.get_config("vit_b", attention="dot_product", scan_blocks=True)
    assert fast.architecture() == base.architecture()
    assert sam_config.SamConfig.from_dict(fast.to_dict()) == fast
    old = {k: v for k, v in base.to_dict().items() if k not in ("attention", "scan_blocks")}
    assert sam_config.SamConfig.from_dict(old) == base  # checkpoints written before them
    with pytest.raises(ValueError, match="attention must be one of"):
        sam_config.get_config("vit_b", attention="flash")
