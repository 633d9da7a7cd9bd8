"""Image resizing with PyTorch's `F.interpolate` semantics (no antialiasing).

`jax.image.resize` antialiases when downsampling, which PyTorch's bilinear does not; SAM's
mask post-processing and the backbones' reference code depend on PyTorch's exact sampling,
so resizes are written here as separable interpolation matrices (computed on the host,
applied with highest-precision matmuls).
"""

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def bilinear_matrix(in_size: int, out_size: int, align_corners: bool = False) -> np.ndarray:
    """(out_size, in_size) weights of 1-D linear interpolation as PyTorch computes it.

    PyTorch computes source positions in float32 (`scale * (dst + 0.5) - 0.5`), which moves
    the weights of far pixels by up to ~4e-5 from the exact values; this mirrors that
    arithmetic so results agree to float rounding rather than to 1e-5.
    """
    f32 = np.float32
    dst = np.arange(out_size).astype(f32)
    if align_corners:
        scale = f32((in_size - 1) / (out_size - 1)) if out_size > 1 else f32(0.0)
        src = scale * dst
    else:
        scale = f32(in_size / out_size)
        src = np.maximum(scale * (dst + f32(0.5)) - f32(0.5), f32(0.0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = np.clip(src - i0.astype(f32), f32(0.0), f32(1.0))
    w = np.zeros((out_size, in_size), np.float32)
    np.add.at(w, (np.arange(out_size), i0), f32(1.0) - lam)
    np.add.at(w, (np.arange(out_size), i1), lam)
    return w


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output pixel for PyTorch's `mode="nearest"`."""
    scale = in_size / out_size
    return np.minimum(np.floor(np.arange(out_size) * scale).astype(np.int64), in_size - 1)


def resize_bilinear(
    x: jax.Array, size: tuple[int, int], *, align_corners: bool = False, channels_last: bool = True
) -> jax.Array:
    """Bilinear resize of (..., H, W, C) (or (..., H, W) with `channels_last=False`)."""
    h_ax, w_ax = (-3, -2) if channels_last else (-2, -1)
    wh = jnp.asarray(bilinear_matrix(x.shape[h_ax], size[0], align_corners))
    ww = jnp.asarray(bilinear_matrix(x.shape[w_ax], size[1], align_corners))
    hp = jax.lax.Precision.HIGHEST
    if channels_last:
        x = jnp.einsum("oh,...hwc->...owc", wh, x, precision=hp)
        return jnp.einsum("pw,...owc->...opc", ww, x, precision=hp)
    x = jnp.einsum("oh,...hw->...ow", wh, x, precision=hp)
    return jnp.einsum("pw,...ow->...op", ww, x, precision=hp)


def resize_nearest(x: jax.Array, size: tuple[int, int], *, channels_last: bool = True) -> jax.Array:
    """Nearest resize with PyTorch's `mode="nearest"` index rule."""
    h_ax, w_ax = (-3, -2) if channels_last else (-2, -1)
    x = jnp.take(x, jnp.asarray(nearest_indices(x.shape[h_ax], size[0])), axis=h_ax)
    return jnp.take(x, jnp.asarray(nearest_indices(x.shape[w_ax], size[1])), axis=w_ax)


def normalize(images: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
    """(x - mean) / std over the last (channel) axis, in float32."""
    mean_ = jnp.asarray(mean, jnp.float32)
    std_ = jnp.asarray(std, jnp.float32)
    return (images.astype(jnp.float32) - mean_) / std_
