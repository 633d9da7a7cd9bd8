"""Layers shared by the convolutional backbones."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvrp.sam.common import Dtype


class FrozenBatchNorm(nn.Module):
    """BatchNorm in inference mode, with its statistics stored as parameters.

    The backbones are always frozen, so the running statistics live in the one params tree
    (`scale`, `bias`, `mean`, `var` <- PyTorch's weight, bias, running_mean, running_var)
    instead of a separate `batch_stats` collection.
    """

    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        mean = self.param("mean", nn.initializers.zeros, (c,))
        var = self.param("var", nn.initializers.ones, (c,))
        alpha = scale * jax.lax.rsqrt(var + self.eps)
        return (x * alpha.astype(self.dtype) + (bias - mean * alpha).astype(self.dtype)).astype(
            self.dtype
        )


def max_pool(
    x: jax.Array, window: int, stride: int, padding: int = 0, ceil_mode: bool = False
) -> jax.Array:
    """PyTorch's `nn.MaxPool2d(window, stride, padding, ceil_mode)` on (B, H, W, C)."""
    pads = []
    for size in x.shape[1:3]:
        span = size + 2 * padding - window
        out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
        if ceil_mode and (out - 1) * stride >= size + padding:
            out -= 1  # the last window must start inside the input or the left padding
        extra = max((out - 1) * stride + window - (size + 2 * padding), 0)
        pads.append((padding, padding + extra))
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)
