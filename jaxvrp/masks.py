"""Geometry of binary masks, shared by SAM training, the baselines, evaluation and outputs."""

import jax
import jax.numpy as jnp
import numpy as np


def tight_boxes(masks: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Tight boxes of binary masks (B, H, W): (B, 4) float32 (x0, y0, x1, y1), x1 and y1 the
    last foreground column / row plus one (as `jaxvrp.data.annotations.tight_box`), and
    `empty` (B,) bool. An empty mask's box is (0, 0, 0, 0), tight_box's convention."""
    _, h, w = masks.shape
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    xs, ys = jnp.arange(w, dtype=jnp.float32), jnp.arange(h, dtype=jnp.float32)
    box = jnp.stack(
        [
            jnp.where(cols, xs, w).min(axis=1),
            jnp.where(rows, ys, h).min(axis=1),
            jnp.where(cols, xs + 1, 0).max(axis=1),
            jnp.where(rows, ys + 1, 0).max(axis=1),
        ],
        axis=1,
    )
    empty = ~cols.any(axis=1)
    return jnp.where(empty[:, None], 0.0, box), empty


def erode(mask: np.ndarray, *, outside: bool = False) -> np.ndarray:
    """One step of 4-neighbour erosion of a bool (H, W) mask: a pixel stays set when it and
    its 4 neighbours are; `outside` is what lies beyond the image border."""
    p = np.pad(mask, 1, constant_values=outside)
    return mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def pool_windows(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-pooling windows [floor(i n_in / n_out), ceil((i + 1) n_in / n_out)) for
    i < n_out (torch `adaptive_max_pool2d`'s); never empty."""
    i = np.arange(n_out)
    return (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)


def any_pool(mask, size: tuple[int, int]) -> jax.Array:
    """ "Any" pooling of binary masks (..., H, W) -> float32 (..., h, w): an output cell is 1
    when any input pixel of its adaptive-pooling window is set, so single pixels and thin
    strokes survive any downsampling. Exact (integer cumulative sums); numpy or JAX input,
    jittable. Used by VRP-SAM's `annotation_downsample="any"` and `jaxvrp segment`'s
    scribbles."""
    m = jnp.asarray(mask) > 0
    for axis, n_out in ((-2, size[0]), (-1, size[1])):
        lo, hi = pool_windows(m.shape[axis], n_out)
        c = jnp.cumsum(m.astype(jnp.int32), axis=axis)
        pad = [(0, 0)] * c.ndim
        pad[axis] = (1, 0)
        c = jnp.pad(c, pad)
        m = (jnp.take(c, hi, axis=axis) - jnp.take(c, lo, axis=axis)) > 0
    return m.astype(jnp.float32)
