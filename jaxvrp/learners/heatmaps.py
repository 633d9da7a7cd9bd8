"""Saliency-like heat maps of point prompts (SAMIC, papers/samic.md §3.2-3.5), in JAX.

- `gaussian_heatmap`: points -> the sum of Gaussians of §3.2, max-normalised into [0, 1].
- `heatmap_loss` and its terms `kld`, `cc_loss`, `nss_loss`: the saliency losses of §3.5.
- `label_components` / `components`: connected components of a binary map with static shapes
  (what §3.4 gets from `cv2.findContours`), jittable and vmappable.
- `heatmap_prompts`: §3.4's peak detection: threshold, components, one point per component.

Coordinates: a point is (x, y) in pixels of the map it belongs to, pixel (row i, column j)
sitting at (x=j, y=i); SAM's prompt encoder uses the same convention (it adds the half-pixel
itself). All maps are (..., H, W) float32.
"""

import jax
import jax.numpy as jnp

HP = jax.lax.Precision.HIGHEST


def gaussian_heatmap(
    points: jax.Array, valid: jax.Array, size: tuple[int, int], sigma: float = 0.02
) -> jax.Array:
    """G(x, y) = sum_k exp(-[((x - x_k) / W)^2 + ((y - y_k) / H)^2] / (2 sigma^2)) / max G.

    points (..., P, 2) float (x, y) pixels; valid (..., P) bool marks the real points (the
    rest is padding); size (H, W). Returns (..., H, W) in [0, 1]; all zeros where no point is
    valid. sigma is in normalised coordinates (§3.2: 0.02, about 4.5 pixels at 224).
    The Gaussian is separable, so the (P, H, W) sum is an outer product per point.
    """
    h, w = size
    points = jnp.asarray(points, jnp.float32)
    x = jnp.arange(w, dtype=jnp.float32)
    y = jnp.arange(h, dtype=jnp.float32)
    ex = jnp.exp(-(((x - points[..., 0:1]) / w) ** 2) / (2 * sigma**2))  # (..., P, W)
    ey = jnp.exp(-(((y - points[..., 1:2]) / h) ** 2) / (2 * sigma**2))  # (..., P, H)
    ey = ey * jnp.asarray(valid, jnp.float32)[..., None]
    g = jnp.einsum("...ph,...pw->...hw", ey, ex, precision=HP)
    top = g.max(axis=(-2, -1), keepdims=True)
    return jnp.where(top > 0, g / jnp.where(top > 0, top, 1.0), 0.0)


# ----------------------------------------------------------------------------- losses (§3.5)


def _moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-map mean and standard deviation over (H, W), each (..., 1, 1). The variance gets
    1e-12 under the root so a constant map has finite gradients."""
    mu = x.mean(axis=(-2, -1), keepdims=True)
    var = ((x - mu) ** 2).mean(axis=(-2, -1), keepdims=True)
    return mu, jnp.sqrt(var + 1e-12)


def kld(pred: jax.Array, target: jax.Array, *, eps: float = 1e-6, normalize: bool = True):
    """Eq. 1: sum_i G_i log(eps + G_i / (Ghat_i + eps)) per map, (..., H, W) -> (...).

    The paper does not say whether the maps are sum-normalised first; the saliency code it
    cites does (maps become distributions), and so does `normalize=True`: each map is
    divided by (its sum + eps) before eq. 1.
    """
    if normalize:
        target = target / (target.sum(axis=(-2, -1), keepdims=True) + eps)
        pred = pred / (pred.sum(axis=(-2, -1), keepdims=True) + eps)
    return (target * jnp.log(eps + target / (pred + eps))).sum(axis=(-2, -1))


def cc_loss(pred: jax.Array, target: jax.Array, *, eps: float = 1e-6) -> jax.Array:
    """Eq. 2: 1 - Pearson(Ghat, G) over the pixels of each map, in [0, 2]: (...)."""
    mp, sp = _moments(pred)
    mt, st = _moments(target)
    cov = ((pred - mp) * (target - mt)).mean(axis=(-2, -1))
    return 1.0 - cov / (sp[..., 0, 0] * st[..., 0, 0] + eps)


def nss_loss(
    pred: jax.Array,
    target: jax.Array,
    *,
    threshold: float = 0.5,
    form: str = "printed",
    eps: float = 1e-6,
) -> jax.Array:
    """Eq. 3 on the fixation map F = 1[G > 0.5], N = sum F, z(x) = (x - mu(x)) / sigma(x):

    - "printed" (the paper's eq. 3): (1/N) sum_i (z(G)_i - z(Ghat)_i) F_i;
    - "standard" (the NSS metric, negated): -(1/N) sum_i z(Ghat)_i F_i.

    The two differ by mean z(G) over F, which does not depend on the prediction, so their
    gradients are equal. N is clamped to >= 1 (an empty fixation map gives 0). (...).
    """
    if form not in ("printed", "standard"):
        raise ValueError(f"nss form must be 'printed' or 'standard', got {form!r}")
    fix = (target > threshold).astype(jnp.float32)
    n = jnp.maximum(fix.sum(axis=(-2, -1)), 1.0)
    mp, sp = _moments(pred)
    zp = (pred - mp) / (sp + eps)
    if form == "standard":
        return -(zp * fix).sum(axis=(-2, -1)) / n
    mt, st = _moments(target)
    zt = (target - mt) / (st + eps)
    return ((zt - zp) * fix).sum(axis=(-2, -1)) / n


def heatmap_loss(
    pred: jax.Array,
    target: jax.Array,
    *,
    kld_weight: float = 1.0,
    cc_weight: float = 1.0,
    nss_weight: float = 1.0,
    nss: str = "printed",
    kld_normalize: bool = True,
    eps: float = 1e-6,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted KLD + CC + NSS (§3.5: weights 1 each), mean over the maps marked `valid`.

    pred, target (B, H, W); valid (B,) bool (default all): a map without any target point is
    left out (the loss has nothing to match there: KLD is 0 and CC undefined on G = 0); with
    no valid map the loss is 0. Returns (loss, {"kld", "cc", "nss"}), each term a batch mean.
    """
    pred = jnp.asarray(pred, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    terms = {
        "kld": kld(pred, target, eps=eps, normalize=kld_normalize),
        "cc": cc_loss(pred, target, eps=eps),
        "nss": nss_loss(pred, target, form=nss, eps=eps),
    }
    w = jnp.ones(pred.shape[0]) if valid is None else jnp.asarray(valid, jnp.float32)
    denom = jnp.maximum(w.sum(), 1.0)
    # jnp.where rather than a product: a term of an invalid map may be nan (e.g. CC's 0/0)
    means = {k: jnp.where(w > 0, v, 0.0).sum() / denom for k, v in terms.items()}
    loss = kld_weight * means["kld"] + cc_weight * means["cc"] + nss_weight * means["nss"]
    return loss, means


# ------------------------------------------------------------ connected components (§3.4)

_NEIGHBOURS = {
    4: ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)),
    8: tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)),
}


def _label_one(mask: jax.Array, connectivity: int) -> jax.Array:
    h, w = mask.shape
    n = h * w
    big = jnp.int32(n + 1)  # background sentinel, larger than every label
    idx = jnp.arange(1, n + 1, dtype=jnp.int32).reshape(h, w)
    init = jnp.where(mask, idx, big)
    shifts = _NEIGHBOURS[connectivity]

    def propagate(lab):
        p = jnp.pad(lab, 1, constant_values=n + 1)
        m = lab
        for dy, dx in shifts:
            m = jnp.minimum(m, p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w])
        return jnp.where(mask, m, big)

    def jump(lab):
        # every label is 1 + the index of a pixel of the same component whose own label is no
        # larger, so following it (pointer jumping) is safe and shortens long chains
        flat = lab.reshape(-1)
        via = flat[jnp.clip(flat - 1, 0, n - 1)].reshape(h, w)
        return jnp.where(mask, jnp.minimum(lab, via), big)

    def body(state):
        lab, _, it = state
        new = jump(jump(propagate(lab)))
        return new, jnp.any(new != lab), it + 1

    lab, _, _ = jax.lax.while_loop(
        lambda s: s[1] & (s[2] < n + 1), body, (init, jnp.bool_(True), jnp.int32(0))
    )
    return jnp.where(mask, lab, 0)


def label_components(mask: jax.Array, *, connectivity: int = 8) -> jax.Array:
    """Connected components of binary maps by iterated min-label propagation.

    mask (..., H, W) bool -> labels (..., H, W) int32: 0 on the background, else 1 + the
    raster index (row * W + column) of the component's first pixel. 8-connectivity (default)
    matches the outer contours of `cv2.findContours`, which §3.4 uses; 4 is the alternative.
    Each `lax.while_loop` pass takes the minimum label over the neighbourhood, then follows
    labels twice (pointer jumping); it stops when nothing changes.
    """
    if connectivity not in _NEIGHBOURS:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    mask = jnp.asarray(mask, bool)
    *lead, h, w = mask.shape
    flat = mask.reshape(-1, h, w)
    out = jax.vmap(lambda m: _label_one(m, connectivity))(flat)
    return out.reshape(*lead, h, w)


def components(
    mask: jax.Array, max_components: int, *, connectivity: int = 8
) -> dict[str, jax.Array]:
    """The `max_components` largest connected components of binary maps, padded.

    mask (B, H, W) bool -> dict of
    - "masks" (B, M, H, W) bool, largest first (ties: the earlier first pixel in raster order);
    - "areas" (B, M) int32 pixel counts (0 for padding);
    - "valid" (B, M) bool, the real components;
    - "count" (B,) int32, the number of components before truncation to M;
    - "labels" (B, H, W) int32 from `label_components`.
    """
    mask = jnp.asarray(mask, bool)
    b, h, w = mask.shape
    n = h * w
    if not 1 <= max_components <= n:
        raise ValueError(f"max_components must be in [1, {n}], got {max_components}")
    labels = label_components(mask, connectivity=connectivity)
    flat = labels.reshape(b, n)
    counts = jax.vmap(lambda f: jnp.zeros(n + 1, jnp.int32).at[f].add(1))(flat)
    own = jnp.arange(1, n + 1, dtype=jnp.int32)
    is_root = flat == own  # a component's first pixel carries its label
    root_area = jnp.where(is_root, counts[:, 1:], 0)
    areas, roots = jax.lax.top_k(root_area, max_components)
    valid = areas > 0
    masks = (labels[:, None] == (roots + 1)[:, :, None, None]) & valid[:, :, None, None]
    return {
        "masks": masks,
        "areas": areas,
        "valid": valid,
        "count": is_root.sum(axis=1).astype(jnp.int32),
        "labels": labels,
    }


def component_points(
    comp_masks: jax.Array, valid: jax.Array, heat: jax.Array, *, point: str = "centroid"
) -> jax.Array:
    """One point (x, y) per component: (B, M, H, W) bool, (B, M) bool, heat (B, H, W) ->
    (B, M, 2) float32 (padding: (0, 0)).

    "centroid" (§3.4): (sum x / A, sum y / A) over the component's pixels, the first-order
    moments of the binary map (it can fall outside a non-convex component); "peak": the
    component's heat-map maximum (first in raster order on ties).
    """
    _, _, h, w = comp_masks.shape
    m = comp_masks.astype(jnp.float32)
    if point == "centroid":
        area = jnp.maximum(m.sum(axis=(2, 3)), 1.0)
        xs = jnp.arange(w, dtype=jnp.float32)
        ys = jnp.arange(h, dtype=jnp.float32)
        cx = jnp.einsum("bmhw,w->bm", m, xs, precision=HP) / area
        cy = jnp.einsum("bmhw,h->bm", m, ys, precision=HP) / area
        pts = jnp.stack([cx, cy], axis=-1)
    elif point == "peak":
        scores = jnp.where(comp_masks, heat[:, None], -jnp.inf).reshape(*comp_masks.shape[:2], -1)
        best = jnp.argmax(scores, axis=-1)
        pts = jnp.stack([best % w, best // w], axis=-1).astype(jnp.float32)
    else:
        raise ValueError(f"point must be 'centroid' or 'peak', got {point!r}")
    return jnp.where(valid[..., None], pts, 0.0)


def heatmap_prompts(
    heat: jax.Array,
    *,
    threshold: float = 0.5,
    max_components: int = 8,
    point: str = "centroid",
    connectivity: int = 8,
) -> dict[str, jax.Array]:
    """§3.4's peak detection: binarise heat (B, H, W) at `threshold` (strictly above, as
    `cv2.threshold`'s THRESH_BINARY), take the connected components, one positive point per
    component. Returns `components`' dict plus "points" (B, M, 2) (x, y) in heat-map pixels.
    """
    comps = components(heat > threshold, max_components, connectivity=connectivity)
    comps["points"] = component_points(comps["masks"], comps["valid"], heat, point=point)
    return comps
