"""Small layers shared by SAM's encoder and decoder (official: modeling/common.py)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def layer_norm(eps: float, dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
    """LayerNorm over the last axis with PyTorch's two-pass variance.

    `use_fast_variance=False` computes E[(x - mean)^2] like PyTorch instead of
    E[x^2] - mean^2, which matters for parity at 1e-5.
    """
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


def layer_norm_2d(dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
    """The official `LayerNorm2d` (channel LayerNorm, eps 1e-6); channels are last in NHWC."""
    return layer_norm(1e-6, dtype, name)


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, PyTorch's `nn.GELU()` default."""
    return nn.gelu(x, approximate=False)


class MLPBlock(nn.Module):
    """lin1 -> act -> lin2 (official `MLPBlock`)."""

    embedding_dim: int
    mlp_dim: int
    act: str = "gelu"  # "gelu" (image encoder) or "relu" (two-way transformer)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="lin1")(x)
        x = gelu(x) if self.act == "gelu" else nn.relu(x)
        return nn.Dense(self.embedding_dim, dtype=self.dtype, name="lin2")(x)


class Embedding(nn.Module):
    """A learned table `(num_embeddings, features)` used as a whole (official `nn.Embedding`).

    SAM never looks embeddings up by index; it reads `.weight` directly, so this returns the
    table. Initialised N(0, 1) like PyTorch.
    """

    num_embeddings: int
    features: int

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param(
            "embedding", nn.initializers.normal(1.0), (self.num_embeddings, self.features)
        )


class MLP(nn.Module):
    """`num_layers` Dense layers with ReLU between them (official mask_decoder `MLP`)."""

    hidden_dim: int
    output_dim: int
    num_layers: int
    sigmoid_output: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            x = nn.Dense(
                self.output_dim if last else self.hidden_dim, dtype=self.dtype, name=f"layers_{i}"
            )(x)
            if not last:
                x = nn.relu(x)
        if self.sigmoid_output:
            x = nn.sigmoid(x)
        return x
