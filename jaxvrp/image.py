"""Image resizing with PyTorch's `F.interpolate` semantics, and normalisation.

Bilinear (align_corners False / True), nearest, and bicubic (with or without PyTorch's
antialiasing, with `size=` or `scale_factor=` semantics). `jax.image.resize` antialiases
when downsampling, which PyTorch's bilinear does not; SAM's mask post-processing and the
backbones' reference code depend on PyTorch's exact sampling, so resizes are written here as
separable interpolation matrices (computed on the host, applied with highest-precision
matmuls).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

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


_CUBIC_A = -0.75  # PyTorch's bicubic (no antialias) uses Keys' kernel with A = -0.75
_CUBIC_A_ANTIALIAS = -0.5  # ... and with antialias A = -0.5 (as PIL)


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 a * b + c rounded once, as a fused multiply-add (exact product in float64)."""
    return (np.float64(a) * np.float64(b) + np.float64(c)).astype(np.float32)


# PyTorch's CPU kernels are built with fused multiply-adds, which round `a * b + c` once; the
# float32 weights below are computed the same way so that they agree with PyTorch's to about
# one float32 ulp instead of a few.


def _cubic_near(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic kernel for 0 <= x <= 1, in float32."""
    f32 = np.float32
    x, a = np.asarray(x, f32), f32(a)
    return _fma(_fma(a + f32(2), x, -(a + f32(3))) * x, x, f32(1))


def _cubic_far(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic kernel for 1 <= x <= 2, in float32."""
    f32 = np.float32
    x, a = np.asarray(x, f32), f32(a)
    return _fma(_fma(_fma(a, x, -(f32(5) * a)), x, f32(8) * a), x, -(f32(4) * a))


def _cubic_kernel(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic kernel at any x (float32), zero for |x| >= 2."""
    x = np.abs(np.asarray(x, np.float32))
    return np.where(x < 1, _cubic_near(x, a), np.where(x < 2, _cubic_far(x, a), 0)).astype(
        np.float32
    )


def interpolate_output_size(in_size: int, scale_factor: float) -> int:
    """Output length of `F.interpolate(scale_factor=...)`: floor(in * scale) in double."""
    return int(math.floor(float(in_size) * float(scale_factor)))


def _source_scale(
    in_size: int, out_size: int, scale_factor: float | None, align_corners: bool
) -> np.float32:
    """PyTorch's `area_pixel_compute_scale` in float32.

    Given a scale factor (and `recompute_scale_factor` unset), PyTorch samples with
    1 / scale_factor, not in / out: the two differ whenever in * scale_factor is not an
    integer (DINOv2's position-embedding interpolation relies on this).
    """
    f32 = np.float32
    if align_corners:
        return f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0.0)
    if scale_factor is not None and scale_factor > 0:
        return f32(1.0 / scale_factor)
    return f32(in_size) / f32(out_size)


def bicubic_matrix(
    in_size: int,
    out_size: int,
    *,
    scale_factor: float | None = None,
    align_corners: bool = False,
    antialias: bool = False,
) -> np.ndarray:
    """(out_size, in_size) weights of 1-D cubic interpolation as PyTorch computes it.

    Mirrors `F.interpolate(mode="bicubic")` on CPU, in its float32 arithmetic:
    - without antialias: Keys' kernel with A = -0.75 on the 4 taps around
      `scale * (dst + 0.5) - 0.5`, the taps clamped to the border (border pixels repeat);
    - with antialias: Keys' kernel with A = -0.5 stretched by the scale when downsampling,
      over the taps within its support, truncated at the borders and renormalised; an axis
      whose length does not change is left as it is (PyTorch skips it).
    `scale_factor` is what was passed to `F.interpolate` (then `out_size` must be
    `interpolate_output_size(in_size, scale_factor)`); it changes the sampling positions.
    """
    f32 = np.float32
    if antialias and align_corners:
        raise ValueError("antialiased bicubic with align_corners=True is not implemented")
    scale = _source_scale(in_size, out_size, scale_factor, align_corners)
    w = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    dst = rows.astype(f32)
    if not antialias:
        if align_corners:
            src = scale * dst
        else:
            src = _fma(scale, dst + f32(0.5), f32(-0.5))  # not clamped at 0 for cubic
        i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
        t = np.clip(src - i0.astype(f32), f32(0.0), f32(1.0))
        t2 = f32(1) - t
        # the four taps' weights computed as PyTorch's `get_cubic_upsample_coefficients`
        coeffs = (
            _cubic_far(t + f32(1), _CUBIC_A),
            _cubic_near(t, _CUBIC_A),
            _cubic_near(t2, _CUBIC_A),
            _cubic_far(t2 + f32(1), _CUBIC_A),
        )
        for k, c in enumerate(coeffs):
            np.add.at(w, (rows, np.clip(i0 - 1 + k, 0, in_size - 1)), c)
        return w
    if in_size == out_size:
        # PyTorch's separable antialiased kernel skips an axis whose length does not change,
        # whatever the scale factor says.
        return np.eye(out_size, dtype=np.float32)
    # Antialiased: PyTorch's `_compute_indices_min_size_weights_aa`.
    support = f32(2.0 * float(scale)) if scale >= 1 else f32(2.0)
    invscale = f32(1.0) / scale if scale >= 1 else f32(1.0)
    max_taps = int(math.ceil(float(support))) * 2 + 1
    for i in range(out_size):
        center = f32(float(scale) * (i + 0.5))
        xmin = max(int(float(center) - float(support) + 0.5), 0)
        xsize = min(int(float(center) + float(support) + 0.5), in_size) - xmin
        xsize = min(max(xsize, 0), max_taps)
        j = np.arange(xmin, xmin + xsize)
        offsets = (j.astype(f32) - center).astype(np.float64) + 0.5
        taps = _cubic_kernel((offsets * float(invscale)).astype(f32), _CUBIC_A_ANTIALIAS)
        total = f32(0.0)
        for v in taps:  # sequential float32 sum, as PyTorch
            total = f32(total + v)
        if total != 0:
            taps = taps / total
        w[i, xmin : xmin + xsize] = taps
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


def resize_bicubic(
    x: jax.Array,
    size: tuple[int, int] | None = None,
    *,
    scale_factor: float | tuple[float, float] | None = None,
    align_corners: bool = False,
    antialias: bool = False,
    channels_last: bool = True,
) -> jax.Array:
    """Bicubic resize of (..., H, W, C) (or (..., H, W) with `channels_last=False`).

    `F.interpolate(mode="bicubic")` semantics, given either `size` (out_h, out_w) or
    `scale_factor` (one float or (s_h, s_w)); with a scale factor the output is
    floor(in * s) long and the sampling follows 1 / s, as in PyTorch.
    """
    if (size is None) == (scale_factor is None):
        raise ValueError("give exactly one of size and scale_factor")
    h_ax, w_ax = (-3, -2) if channels_last else (-2, -1)
    in_hw = (x.shape[h_ax], x.shape[w_ax])
    if scale_factor is not None:
        factors = (
            tuple(scale_factor)
            if isinstance(scale_factor, tuple | list)
            else (scale_factor, scale_factor)
        )
        if len(factors) != 2:
            raise ValueError(f"scale_factor needs one or two values, got {scale_factor!r}")
        size = tuple(interpolate_output_size(n, f) for n, f in zip(in_hw, factors, strict=True))
    else:
        factors = (None, None)
    if min(size) < 1:
        raise ValueError(f"bicubic resize of {in_hw} to {tuple(size)}: empty output")
    wh, ww = (
        jnp.asarray(
            bicubic_matrix(n, m, scale_factor=f, align_corners=align_corners, antialias=antialias)
        )
        for n, m, f in zip(in_hw, size, factors, strict=True)
    )
    hp = jax.lax.Precision.HIGHEST
    if channels_last:
        x = jnp.einsum("oh,...hwc->...owc", wh, x, precision=hp)
        return jnp.einsum("pw,...owc->...opc", ww, x, precision=hp)
    x = jnp.einsum("oh,...hw->...ow", wh, x, precision=hp)
    return jnp.einsum("pw,...ow->...op", ww, x, precision=hp)


def normalize(images: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
    """(x - mean) / std over the last (channel) axis, in float32."""
    mean_ = jnp.asarray(mean, jnp.float32)
    std_ = jnp.asarray(std, jnp.float32)
    return (images.astype(jnp.float32) - mean_) / std_


def normalized_image(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (S, S, 3) as the learners take images (training episodes,
    `jaxvrp segment`): PIL bilinear resize to a square (aspect not kept), / 255,
    ImageNet-normalised. Host-side numpy."""
    image = np.asarray(rgb, np.uint8)
    if image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    return (image.astype(np.float32) / 255.0 - np.array(IMAGENET_MEAN, np.float32)) / np.array(
        IMAGENET_STD, np.float32
    )


def resized_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W) label or binary mask -> (S, S) as training episodes resize masks (PIL
    nearest, aspect not kept): the same for dataset masks and `jaxvrp segment`'s reference
    masks. Host-side numpy."""
    mask = np.asarray(mask, np.uint8)
    if mask.shape[:2] == (size, size):
        return mask
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))


def rgb8(image: "Image.Image") -> np.ndarray:
    """A decoded PIL image as (H, W, 3) uint8, as it looks: grayscale, palette, RGBA (alpha
    dropped), CMYK, ... converted by PIL; 16-bit grayscale ("I;16*", or "I" with values up
    to 65535) scaled to 8 bits (v >> 8), where PIL's own conversion would clip every value
    above 255 to white. A float ("F") image has no agreed scale and raises `ValueError`."""
    mode = image.mode
    if mode.startswith("I"):
        array = np.asarray(image).astype(np.int64)
        if array.min() < 0 or array.max() > 65535:
            raise ValueError(f"{mode} image values outside 0..65535")
        gray = (array >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "F":
        raise ValueError("32-bit float images have no agreed 8-bit scale; save as 8 or 16 bit")
    return np.asarray(image.convert("RGB"))


def binary_mask(image: "Image.Image") -> np.ndarray:
    """A decoded mask image as (H, W) bool, foreground = every pixel that is not black and,
    where the image has alpha, not transparent: the same rule for 1-bit, grayscale (8 or 16
    bit), palette (by colour, not by index) and RGB(A) files."""
    mode = image.mode
    if mode.startswith("I") or mode in ("F", "1"):
        return np.asarray(image) != 0
    alpha = None
    if "A" in mode or (mode == "P" and "transparency" in image.info):
        alpha = np.asarray(image.convert("RGBA"))[..., 3] > 0
    fg = np.asarray(image.convert("RGB")).any(axis=-1)
    return fg if alpha is None else fg & alpha
