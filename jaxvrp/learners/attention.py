"""The attention layers of VRP-SAM's prompt generator (official: model/base/transformer_decoder.py).

Post-LayerNorm residual layers around `nn.MultiheadAttention` (dropout 0), and DETR's sine
positional encoding. PyTorch packs q, k, v in `in_proj_weight`; here they are three Dense
layers `q_proj`, `k_proj`, `v_proj` (the converter unpacks them).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvrp.sam.common import layer_norm


class MultiheadAttention(nn.Module):
    """PyTorch's `nn.MultiheadAttention` (batch first, no masks, no dropout)."""

    embed_dim: int
    num_heads: int

    @nn.compact
    def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
        """query (B, Nq, C), key and value (B, Nk, C) -> (B, Nq, C)."""
        d, h = self.embed_dim, self.num_heads
        init = nn.initializers.xavier_uniform()
        dense = lambda name: nn.Dense(
            d, kernel_init=init, bias_init=nn.initializers.zeros, name=name
        )
        c = d // h
        q = dense("q_proj")(query).reshape(*query.shape[:2], h, c)
        k = dense("k_proj")(key).reshape(*key.shape[:2], h, c)
        v = dense("v_proj")(value).reshape(*value.shape[:2], h, c)
        attn = jnp.einsum("bqhc,bkhc->bhqk", q / math.sqrt(c), k)
        attn = jax.nn.softmax(attn, axis=-1)
        out = jnp.einsum("bhqk,bkhc->bqhc", attn, v).reshape(*query.shape[:2], d)
        return dense("out_proj")(out)


class CrossAttentionLayer(nn.Module):
    """tgt + MHA(tgt, memory + pos, memory), then LayerNorm."""

    d_model: int
    nhead: int

    @nn.compact
    def __call__(self, tgt: jax.Array, memory: jax.Array, pos: jax.Array) -> jax.Array:
        out = MultiheadAttention(self.d_model, self.nhead, name="multihead_attn")(
            tgt, memory + pos, memory
        )
        return layer_norm(1e-5, jnp.float32, "norm")(tgt + out)


class SelfAttentionLayer(nn.Module):
    """tgt + MHA(tgt, tgt, tgt), then LayerNorm (no query positions in VRP-SAM)."""

    d_model: int
    nhead: int

    @nn.compact
    def __call__(self, tgt: jax.Array) -> jax.Array:
        out = MultiheadAttention(self.d_model, self.nhead, name="self_attn")(tgt, tgt, tgt)
        return layer_norm(1e-5, jnp.float32, "norm")(tgt + out)


def sine_position_embedding(
    h: int, w: int, num_pos_feats: int = 128, temperature: float = 10000.0
) -> jax.Array:
    """DETR's normalised sine encoding (scale 2 pi) of an (h, w) grid: (h, w, 2 * feats).

    Channels are [y features, x features], each alternating sin and cos.
    """
    eps, scale = 1e-6, 2 * math.pi
    y = jnp.arange(1, h + 1, dtype=jnp.float32)[:, None] * jnp.ones((1, w), jnp.float32)
    x = jnp.arange(1, w + 1, dtype=jnp.float32)[None, :] * jnp.ones((h, 1), jnp.float32)
    y = y / (h + eps) * scale
    x = x / (w + eps) * scale
    i = jnp.arange(num_pos_feats, dtype=jnp.float32)
    dim_t = temperature ** (2 * jnp.floor(i / 2) / num_pos_feats)

    def encode(p):
        p = p[..., None] / dim_t
        return jnp.stack([jnp.sin(p[..., 0::2]), jnp.cos(p[..., 1::2])], axis=-1).reshape(
            h, w, num_pos_feats
        )

    return jnp.concatenate([encode(y), encode(x)], axis=-1)
