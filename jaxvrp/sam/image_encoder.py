"""SAM's ViT image encoder (official: modeling/image_encoder.py), NHWC.

Module and parameter names follow the official module tree with list indices joined by
an underscore (`blocks.3` -> `blocks_3`, `neck.0` -> `neck_0`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvrp.sam.common import Dtype, MLPBlock, layer_norm, layer_norm_2d


def window_partition(x: jax.Array, window_size: int) -> tuple[jax.Array, tuple[int, int]]:
    """(B, H, W, C) -> (B * nW, ws, ws, C), zero-padding H, W up to multiples of ws.

    As in the official code the padding is plain zeros added after norm1 and is not masked
    out of the attention: padded tokens act as keys.
    """
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: jax.Array, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> jax.Array:
    """Inverse of `window_partition`: (B * nW, ws, ws, C) -> (B, H, W, C)."""
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window_size) * (wp // window_size))
    x = windows.reshape(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :]


def get_rel_pos(q_size: int, k_size: int, rel_pos: jax.Array) -> jax.Array:
    """Relative position table (2S-1, C) -> per (query, key) pair (q_size, k_size, C)."""
    if rel_pos.shape[0] != 2 * max(q_size, k_size) - 1:
        # The official code interpolates the table here; SAM's encoder always runs at its
        # configured size, so a mismatch can only be a wrong config.
        raise ValueError(
            f"relative position table of length {rel_pos.shape[0]} does not fit "
            f"q_size={q_size}, k_size={k_size}"
        )
    q_coords = jnp.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = jnp.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.astype(jnp.int32)]


class Attention(nn.Module):
    """Multi-head self-attention with decomposed relative positions (MViTv2)."""

    dim: int
    num_heads: int
    qkv_bias: bool = True
    use_rel_pos: bool = True
    input_size: tuple[int, int] = (64, 64)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        head_dim = self.dim // self.num_heads
        qkv = nn.Dense(3 * self.dim, use_bias=self.qkv_bias, dtype=self.dtype, name="qkv")(x)
        qkv = qkv.reshape(b, h * w, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, heads, hd)
        attn = jnp.einsum("bqnd,bknd->bnqk", q * head_dim**-0.5, k)
        if self.use_rel_pos:
            rel_pos_h = self.param(
                "rel_pos_h", nn.initializers.zeros, (2 * self.input_size[0] - 1, head_dim)
            )
            rel_pos_w = self.param(
                "rel_pos_w", nn.initializers.zeros, (2 * self.input_size[1] - 1, head_dim)
            )
            rh = get_rel_pos(h, h, rel_pos_h).astype(q.dtype)  # (H, H, hd)
            rw = get_rel_pos(w, w, rel_pos_w).astype(q.dtype)  # (W, W, hd)
            r_q = q.reshape(b, h, w, self.num_heads, head_dim)  # unscaled q, as officially
            rel_h = jnp.einsum("byxnc,ykc->bnyxk", r_q, rh)
            rel_w = jnp.einsum("byxnc,xkc->bnyxk", r_q, rw)
            attn = attn.reshape(b, self.num_heads, h, w, h, w)
            attn = attn + rel_h[..., :, None] + rel_w[..., None, :]
            attn = attn.reshape(b, self.num_heads, h * w, h * w)
        attn = jax.nn.softmax(attn.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bnqk,bknd->bqnd", attn, v).reshape(b, h, w, self.dim)
        return nn.Dense(self.dim, dtype=self.dtype, name="proj")(out)


class Block(nn.Module):
    """Transformer block with windowed (window_size > 0) or global attention."""

    dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    use_rel_pos: bool = True
    window_size: int = 0
    input_size: tuple[int, int] = (64, 64)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x
        x = layer_norm(1e-6, self.dtype, "norm1")(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
        attn_size = (
            self.input_size if self.window_size == 0 else (self.window_size, self.window_size)
        )
        x = Attention(
            self.dim,
            self.num_heads,
            self.qkv_bias,
            self.use_rel_pos,
            attn_size,
            self.dtype,
            name="attn",
        )(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (h, w))
        x = shortcut + x
        y = layer_norm(1e-6, self.dtype, "norm2")(x)
        return x + MLPBlock(
            self.dim, int(self.dim * self.mlp_ratio), "gelu", self.dtype, name="mlp"
        )(y)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, H, W, 3) -> (B, H/p, W/p, dim)."""

    patch_size: int
    embed_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.patch_size
        return nn.Conv(
            self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="proj"
        )(x)


class ImageEncoderViT(nn.Module):
    """(B, S, S, 3) normalised, padded images -> (B, S/16, S/16, out_chans) embeddings."""

    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 256
    qkv_bias: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = ()
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        grid = self.img_size // self.patch_size
        x = PatchEmbed(self.patch_size, self.embed_dim, self.dtype, name="patch_embed")(x)
        pos_embed = self.param("pos_embed", nn.initializers.zeros, (1, grid, grid, self.embed_dim))
        x = x + pos_embed.astype(x.dtype)
        for i in range(self.depth):
            x = Block(
                self.embed_dim,
                self.num_heads,
                self.mlp_ratio,
                self.qkv_bias,
                self.use_rel_pos,
                0 if i in self.global_attn_indexes else self.window_size,
                (grid, grid),
                self.dtype,
                name=f"blocks_{i}",
            )(x)
        x = nn.Conv(self.out_chans, (1, 1), use_bias=False, dtype=self.dtype, name="neck_0")(x)
        x = layer_norm_2d(self.dtype, "neck_1")(x)
        x = nn.Conv(
            self.out_chans,
            (3, 3),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            dtype=self.dtype,
            name="neck_2",
        )(x)
        return layer_norm_2d(self.dtype, "neck_3")(x)
