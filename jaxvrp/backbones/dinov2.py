"""DINOv2 ViT backbones (official: facebookresearch/dinov2, `DinoVisionTransformer`), NHWC.

Module and parameter names follow the official module tree with list indices joined by an
underscore (`blocks.3.ls1.gamma` -> `blocks_3/ls1/gamma`), so `conversion.common.torch_key`
maps every leaf to its key in the official state dicts (`dinov2_vit{s,b,l}14_pretrain.pth`).

    config = backbones.get_config("dinov2_vitb14")
    params = backbones.init(jax.random.key(0), config)
    feats = backbones.apply(params, images, config=config)   # H, W multiples of 14
    feats["layer3"]                                 # (B, H/14, W/14, 768)

Outputs, all patch tokens reshaped to (B, H/14, W/14, D) unless noted, follow the split the
VRP-SAM authors describe for DINOv2-L (blocks[:8], [8:12], [12:21], [21:24]), generalised to
depth d as the split points ceil(d/3), ceil(d/2), ceil(7d/8):
  "layer0": after the patch embedding and position embedding;
  "layer1" .. "layer4": after each group of blocks (no final LayerNorm);
  "norm": the final-LayerNorm patch tokens; "cls": the final-LayerNorm class token (B, D).

Position-embedding interpolation (inputs other than `img_size` square). Checked facts:
- Official: unless the grid is the trained M x M, the (M, M) table is resized by
  `F.interpolate(mode="bicubic", antialias=interpolate_antialias)` with
  `scale_factor=((h0 + offset) / M, (w0 + offset) / M)` when `interpolate_offset` is non-zero
  (0.1 for the released ViT-S/B/L/g; the code names the axes w, h but reads them off
  `x.shape` as (H, W), so each factor does land on its own axis), else `size=(h0, w0)`
  (offset 0, with antialias, for the `_reg` models). With a scale factor PyTorch samples at
  1 / factor = M / (h0 + 0.1), not M / h0, so the two forms give different embeddings.
  The 2023 release (the `dinov2` 0.0.1 package) hard-codes the +0.1 scale-factor form.
- HF transformers 5.x `Dinov2Model` uses the size form, no offset, no antialias; its
  `Dinov2WithRegistersModel` the size form with antialias. Both equal the official code with
  `interpolate_offset=0` (and the matching antialias), which is how to reproduce them here;
  the default (0.1) reproduces the official models. At the trained size no interpolation
  happens in either, and all agree.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvrp.image import resize_bicubic
from jaxvrp.sam.common import Dtype, gelu, layer_norm
from jaxvrp.sam.image_encoder import PatchEmbed  # the same layer in both ViTs

Params = dict[str, Any]

FEATURE_NAMES = ("layer0", "layer1", "layer2", "layer3", "layer4", "norm", "cls")


@dataclasses.dataclass(frozen=True)
class Dinov2Config:
    """Every number that fixes a DINOv2 ViT's shapes and its position-embedding resizing.

    Frozen and hashable so it can be a static argument of `jax.jit`.
    """

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 14
    # The size the position embedding was trained for: 518 / 14 = 37 x 37 patches.
    img_size: int = 518
    mlp_ratio: float = 4.0
    num_register_tokens: int = 0
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    layer_norm_eps: float = 1e-6
    # Compute dtype ("float32" or "bfloat16"); parameters always stay float32.
    dtype: str = "float32"

    @property
    def grid_size(self) -> int:
        """Side M of the trained position-embedding grid (37 officially)."""
        return self.img_size // self.patch_size

    @property
    def feature_splits(self) -> tuple[int, int, int]:
        """Block counts after which layer1, layer2, layer3 are taken (8, 12, 21 for depth 24)."""
        d = self.depth
        return (math.ceil(d / 3), math.ceil(d / 2), math.ceil(7 * d / 8))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Dinov2Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown Dinov2Config keys: {unknown}")
        return cls(**d)


_REG = {"num_register_tokens": 4, "interpolate_offset": 0.0, "interpolate_antialias": True}

DINOV2_VARIANTS: dict[str, Dinov2Config] = {
    "dinov2_vits14": Dinov2Config(384, 12, 6),
    "dinov2_vitb14": Dinov2Config(768, 12, 12),
    "dinov2_vitl14": Dinov2Config(1024, 24, 16),
    # The official models with 4 registers (hub `dinov2_vit*14_reg`).
    "dinov2_vits14_reg": Dinov2Config(384, 12, 6, **_REG),
    "dinov2_vitb14_reg": Dinov2Config(768, 12, 12, **_REG),
    "dinov2_vitl14_reg": Dinov2Config(1024, 24, 16, **_REG),
    # DINOv2's structure at a fraction of the cost, for tests: 8 x 8 trained grid, depth 8 so
    # that the four block groups (3, 1, 3, 1 blocks) are all non-empty.
    "dinov2_test": Dinov2Config(64, 8, 2, img_size=14 * 8),
    "dinov2_test_reg": Dinov2Config(64, 8, 2, img_size=14 * 8, **_REG),
}


def get_config(variant: str, **overrides: Any) -> Dinov2Config:
    """The named variant, with optional field overrides (e.g. `dtype="bfloat16"`)."""
    if variant not in DINOV2_VARIANTS:
        raise ValueError(f"unknown DINOv2 variant {variant!r}; known: {sorted(DINOV2_VARIANTS)}")
    return dataclasses.replace(DINOV2_VARIANTS[variant], **overrides)


def interpolate_pos_embed(
    pos_embed: jax.Array,
    grid_hw: tuple[int, int],
    *,
    offset: float = 0.1,
    antialias: bool = False,
) -> jax.Array:
    """Position table (1, 1 + M*M, D) -> (1, 1 + h0*w0, D) for an (h0, w0) patch grid.

    Official `interpolate_pos_encoding` semantics (module docstring): unchanged for the
    trained square grid, else a bicubic resize of the patch part computed in float32.
    """
    n = pos_embed.shape[1] - 1
    m = math.isqrt(n)
    if m * m != n:
        raise ValueError(f"position table has {n} patch entries, not a square grid")
    h0, w0 = grid_hw
    if (h0, w0) == (m, m):
        return pos_embed
    dim = pos_embed.shape[-1]
    grid = pos_embed[0, 1:].astype(jnp.float32).reshape(m, m, dim)
    if offset:
        factors = ((h0 + offset) / m, (w0 + offset) / m)
        grid = resize_bicubic(grid, scale_factor=factors, antialias=antialias)
    else:
        grid = resize_bicubic(grid, (h0, w0), antialias=antialias)
    if grid.shape[:2] != (h0, w0):  # the official code asserts the same
        raise ValueError(
            f"interpolating the {m}x{m} position grid with offset {offset} gave "
            f"{grid.shape[:2]}, not the {h0}x{w0} patch grid"
        )
    patch = grid.reshape(1, h0 * w0, dim).astype(pos_embed.dtype)
    return jnp.concatenate([pos_embed[:, :1], patch], axis=1)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (official `Attention`)."""

    dim: int
    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, N, C) -> (B, N, C)."""
        b, n, c = x.shape
        head_dim = self.dim // self.num_heads
        qkv = nn.Dense(3 * self.dim, dtype=self.dtype, name="qkv")(x)
        qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, heads, hd)
        attn = jnp.einsum("bqhd,bkhd->bhqk", q * head_dim**-0.5, k)
        attn = jax.nn.softmax(attn.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, n, self.dim)
        return nn.Dense(self.dim, dtype=self.dtype, name="proj")(out)


class LayerScale(nn.Module):
    """Per-channel scale `gamma` (official `LayerScale`; the hub models use init 1.0)."""

    dim: int
    init_value: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gamma = self.param("gamma", nn.initializers.constant(self.init_value), (self.dim,))
        return x * gamma.astype(x.dtype)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (official `Mlp`)."""

    dim: int
    hidden_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.hidden_dim, dtype=self.dtype, name="fc1")(x)
        return nn.Dense(self.dim, dtype=self.dtype, name="fc2")(gelu(x))


class Block(nn.Module):
    """Pre-norm transformer block with layer scale (official `NestedTensorBlock`)."""

    dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, N, C) -> (B, N, C)."""
        y = layer_norm(self.eps, self.dtype, "norm1")(x)
        y = Attention(self.dim, self.num_heads, self.dtype, name="attn")(y)
        x = x + LayerScale(self.dim, name="ls1")(y)
        y = layer_norm(self.eps, self.dtype, "norm2")(x)
        y = Mlp(self.dim, int(self.dim * self.mlp_ratio), self.dtype, name="mlp")(y)
        return x + LayerScale(self.dim, name="ls2")(y)


class Dinov2(nn.Module):
    """DINOv2 ViT (official `DinoVisionTransformer`), returning the named feature maps."""

    config: Dinov2Config

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        start: str = "layer0",
        stop: str = "layer4",
        prefix: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """(B, H, W, 3) normalised images, H and W multiples of the patch size ->
        {"layer0".."layer4": (B, H/p, W/p, D), "<layer>_prefix": (B, 1 + registers, D),
        "norm": (B, H/p, W/p, D), "cls": (B, D)}.

        `start` / `stop` run only those stages; with `start` after layer0, `images` is the
        previous stage's patch map (B, h, w, D) and `prefix` its class and register tokens
        (the previous stage's "<layer>_prefix" output). "norm" and "cls" come with layer4.
        """
        c = self.config
        dtype = jnp.dtype(c.dtype)
        p = c.patch_size
        d = c.embed_dim
        n_prefix = 1 + c.num_register_tokens
        names = ("layer0", "layer1", "layer2", "layer3", "layer4")
        first, last = names.index(start), names.index(stop)
        # Block count after which each stage ends; split points may coincide for shallow
        # models, and each name then takes its own count.
        ends = dict(zip(names, (0, *c.feature_splits, c.depth), strict=True))
        if first == 0:
            b, h, w, _ = images.shape
            if h % p or w % p:
                raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
            h0, w0 = h // p, w // p
            x = PatchEmbed(p, d, dtype, name="patch_embed")(images.astype(dtype))
            x = x.reshape(b, h0 * w0, d)
            cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d))
            pos_embed = self.param(
                "pos_embed",
                nn.initializers.truncated_normal(0.02),
                (1, c.grid_size * c.grid_size + 1, d),
            )
            # Used only by masked-image-modelling training; kept so checkpoints convert strictly.
            self.param("mask_token", nn.initializers.zeros, (1, d))
            pos = interpolate_pos_embed(
                pos_embed,
                (h0, w0),
                offset=c.interpolate_offset,
                antialias=c.interpolate_antialias,
            ).astype(dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls_token.astype(dtype), (b, 1, d)), x], axis=1)
            x = x + pos
            if c.num_register_tokens:
                registers = self.param(
                    "register_tokens", nn.initializers.normal(1e-6), (1, c.num_register_tokens, d)
                )
                registers = jnp.broadcast_to(registers.astype(dtype), (b, c.num_register_tokens, d))
                x = jnp.concatenate([x[:, :1], registers, x[:, 1:]], axis=1)
            done = 0
        else:
            if prefix is None or prefix.shape[1:] != (n_prefix, d):
                raise ValueError(
                    f"DINOv2 from {start} needs `prefix`, the previous stage's class and "
                    f"register tokens of shape (B, {n_prefix}, {d})"
                )
            b, h0, w0, _ = images.shape
            x = jnp.concatenate(
                [prefix.astype(dtype), images.astype(dtype).reshape(b, h0 * w0, d)], axis=1
            )
            done = ends[names[first - 1]]

        out = {}

        def record(count: int) -> None:
            for name in names[first : last + 1]:
                if ends[name] == count:
                    out[name] = x[:, n_prefix:].reshape(b, h0, w0, d)
                    out[f"{name}_prefix"] = x[:, :n_prefix]

        record(done)
        for i in range(done, ends[stop]):
            x = Block(d, c.num_heads, c.mlp_ratio, c.layer_norm_eps, dtype, name=f"blocks_{i}")(x)
            record(i + 1)
        if stop == "layer4":
            x = layer_norm(c.layer_norm_eps, dtype, "norm")(x)
            out["norm"] = x[:, n_prefix:].reshape(b, h0, w0, d)
            out["cls"] = x[:, 0]
        return out
