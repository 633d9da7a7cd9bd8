"""SAM's two-way transformer (official: modeling/transformer.py).

Two optional inputs, off by default, reproduce PerSAM's modified decoder (ZrrSkywalker/
Personalize-SAM, `per_segment_anything/modeling/transformer.py`); see `docs/persam.md`:

- `attn_sim` (B, h*w) "target-guided attention": in the token->image cross-attention of
  every two-way block (not the final attention, not image->token), the attention map becomes
  `softmax(softmax(q k^T / sqrt(d)) + attn_sim)`, the second softmax again over the image
  positions, `attn_sim` broadcast over heads and all tokens.
- `target_embedding` (B, C) "target-semantic prompting", added to the tokens with the
  official in-place aliasing reproduced (see `TwoWayTransformer`).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvrp.sam.common import Dtype, MLPBlock, layer_norm


class Attention(nn.Module):
    """Attention with q/k/v projected down to `embedding_dim // downsample_rate`."""

    embedding_dim: int
    num_heads: int
    downsample_rate: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, q: jax.Array, k: jax.Array, v: jax.Array, attn_sim: jax.Array | None = None
    ) -> jax.Array:
        """q (B, Nq, C), k and v (B, Nk, C) -> (B, Nq, C).

        `attn_sim` (B or 1, Nk), PerSAM: the softmaxed attention map plus `attn_sim`,
        softmaxed again over the keys (official per_segment_anything `Attention.forward`).
        """
        internal_dim = self.embedding_dim // self.downsample_rate
        if internal_dim % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide {internal_dim}")
        q = nn.Dense(internal_dim, dtype=self.dtype, name="q_proj")(q)
        k = nn.Dense(internal_dim, dtype=self.dtype, name="k_proj")(k)
        v = nn.Dense(internal_dim, dtype=self.dtype, name="v_proj")(v)
        c = internal_dim // self.num_heads
        q = q.reshape(*q.shape[:2], self.num_heads, c)
        k = k.reshape(*k.shape[:2], self.num_heads, c)
        v = v.reshape(*v.shape[:2], self.num_heads, c)
        attn = jnp.einsum("bqnc,bknc->bnqk", q, k) / math.sqrt(c)
        attn = jax.nn.softmax(attn.astype(jnp.float32), axis=-1)
        if attn_sim is not None:
            # (B, Nk) -> (B, 1 head, 1 query, Nk): every head and every token
            sim = attn_sim.astype(jnp.float32)[:, None, None, :]
            attn = jax.nn.softmax(attn + sim, axis=-1)
        attn = attn.astype(v.dtype)
        out = jnp.einsum("bnqk,bknc->bqnc", attn, v).reshape(*q.shape[:2], internal_dim)
        return nn.Dense(self.embedding_dim, dtype=self.dtype, name="out_proj")(out)


class TwoWayAttentionBlock(nn.Module):
    """Self-attn on tokens, token->image, MLP, image->token (with post-LayerNorms)."""

    embedding_dim: int
    num_heads: int
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    skip_first_layer_pe: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, queries, keys, query_pe, key_pe, attn_sim=None):
        dim, heads, rate, dt = (
            self.embedding_dim,
            self.num_heads,
            self.attention_downsample_rate,
            self.dtype,
        )
        self_attn = Attention(dim, heads, 1, dt, name="self_attn")
        if self.skip_first_layer_pe:
            # Layer 0: no positional encoding and no residual (official behaviour).
            queries = self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self_attn(q, q, queries)
        queries = layer_norm(1e-5, dt, "norm1")(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = queries + Attention(dim, heads, rate, dt, name="cross_attn_token_to_image")(
            q, k, keys, attn_sim
        )
        queries = layer_norm(1e-5, dt, "norm2")(queries)

        queries = queries + MLPBlock(dim, self.mlp_dim, "relu", dt, name="mlp")(queries)
        queries = layer_norm(1e-5, dt, "norm3")(queries)

        q, k = queries + query_pe, keys + key_pe
        keys = keys + Attention(dim, heads, rate, dt, name="cross_attn_image_to_token")(
            k, q, queries
        )
        keys = layer_norm(1e-5, dt, "norm4")(keys)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Tokens attend to the image and the image to the tokens, `depth` times."""

    depth: int
    embedding_dim: int
    num_heads: int
    mlp_dim: int
    attention_downsample_rate: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        image_embedding: jax.Array,
        image_pe: jax.Array,
        point_embedding: jax.Array,
        attn_sim: jax.Array | None = None,
        target_embedding: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """image_embedding, image_pe (B, h, w, C); tokens (B, T, C) -> (B, T, C), (B, hw, C).

        PerSAM options (None = the official SAM): `attn_sim` (B or 1, h*w) and
        `target_embedding` (B or 1, C).

        PerSAM's transformer does `queries = point_embedding` and then, in its layer loop,
        `queries += target_embedding` in place. On the first layer `queries` *is*
        `point_embedding`, so the tokens' positional encoding picks up t as well, and every
        later use of `point_embedding` sees it. With P = tokens + t the official computes:
        layer 0 queries = P with query PE = P; layer i > 0 queries = out_{i-1} + t with PE
        = P; final attention q = out_last + P + t (k = keys + key PE, v = keys), and the
        residual adds the attention output to out_last (no t). This is written out
        explicitly below; it is a parity quirk, not a design.
        """
        b, h, w, c = image_embedding.shape
        keys = image_embedding.reshape(b, h * w, c)
        image_pe = image_pe.reshape(image_pe.shape[0], h * w, c)
        t = None
        if target_embedding is not None:
            t = target_embedding.astype(point_embedding.dtype)[:, None, :]  # (B, 1, C)
            point_embedding = point_embedding + t  # P: the aliased query PE
        if attn_sim is not None:
            attn_sim = attn_sim.reshape(attn_sim.shape[0], h * w)
        queries = point_embedding
        for i in range(self.depth):
            if t is not None and i > 0:  # layer 0's `+= t` is already in P
                queries = queries + t
            queries, keys = TwoWayAttentionBlock(
                self.embedding_dim,
                self.num_heads,
                self.mlp_dim,
                self.attention_downsample_rate,
                skip_first_layer_pe=i == 0,
                dtype=self.dtype,
                name=f"layers_{i}",
            )(queries, keys, point_embedding, image_pe, attn_sim)
        q, k = queries + point_embedding, keys + image_pe
        if t is not None:
            q = q + t
        queries = queries + Attention(
            self.embedding_dim,
            self.num_heads,
            self.attention_downsample_rate,
            self.dtype,
            name="final_attn_token_to_image",
        )(q, k, keys)
        queries = layer_norm(1e-5, self.dtype, "norm_final_attn")(queries)
        return queries, keys
