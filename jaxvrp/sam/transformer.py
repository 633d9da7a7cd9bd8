"""SAM's two-way transformer (official: modeling/transformer.py)."""

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
    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        """q (B, Nq, C), k and v (B, Nk, C) -> (B, Nq, C)."""
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
        attn = jax.nn.softmax(attn.astype(jnp.float32), axis=-1).astype(v.dtype)
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
    def __call__(self, queries, keys, query_pe, key_pe):
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
            q, k, keys
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
        self, image_embedding: jax.Array, image_pe: jax.Array, point_embedding: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """image_embedding, image_pe (B, h, w, C); tokens (B, T, C) -> (B, T, C), (B, hw, C)."""
        b, h, w, c = image_embedding.shape
        keys = image_embedding.reshape(b, h * w, c)
        image_pe = image_pe.reshape(image_pe.shape[0], h * w, c)
        queries = point_embedding
        for i in range(self.depth):
            queries, keys = TwoWayAttentionBlock(
                self.embedding_dim,
                self.num_heads,
                self.mlp_dim,
                self.attention_downsample_rate,
                skip_first_layer_pe=i == 0,
                dtype=self.dtype,
                name=f"layers_{i}",
            )(queries, keys, point_embedding, image_pe)
        q, k = queries + point_embedding, keys + image_pe
        queries = queries + Attention(
            self.embedding_dim,
            self.num_heads,
            self.attention_downsample_rate,
            self.dtype,
            name="final_attn_token_to_image",
        )(q, k, keys)
        queries = layer_norm(1e-5, self.dtype, "norm_final_attn")(queries)
        return queries, keys
