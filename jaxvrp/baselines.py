"""Reference points for the learners: SAM prompted with geometric prompts, no training.

- GP-SAM (VRP-SAM paper §5.3, Table 3): the target's pseudo-mask (VRP-SAM's prior: the
  highest cosine similarity of each target position to the annotated reference features of
  the frozen backbone's layer4) gives geometric prompts for the frozen SAM. The paper: "for
  point prompts, we randomly sample 5 points from the pseudo-mask. For box prompt, we adopt
  the bounding box of the pseudo-mask." Unstated there, chosen here: the pseudo-mask is
  min-max normalised per target and binarised at 0.5 (`threshold`), with K shots the
  per-shot pseudo-masks are merged by their maximum, the points are drawn uniformly from
  the binarised cells (with replacement) at the cell centres, and "points+box" passes both.
  An empty binarised map falls back to the single best cell.
- Oracle box (an upper bound): SAM with the tight box of the target's ground-truth mask,
  i.e. perfect localisation, SAM's own segmentation quality.

Each is a `predict(params, frozen, batch, rng) -> logits (B, H, W)` with the learners'
batch format, so `jaxvrp.evaluate.evaluate(..., predict=...)` scores it on the same episodes.
SAM gets a single output mask (several prompts are not ambiguous).
"""

from functools import partial

import jax
import jax.numpy as jnp

from jaxvrp.image import resize_bilinear
from jaxvrp.learners import vrp
from jaxvrp.masks import tight_boxes
from jaxvrp.sam import model as sam_model

GP_MODES = ("points", "box", "points+box")


def pseudo_mask(frozen, batch, config: vrp.VRPConfig) -> jax.Array:
    """Min-max normalised pseudo-mask of each target, max over its K shots: (B, h, w)."""
    b, k = batch["support_images"].shape[:2]
    *_, pm = vrp.shot_features(frozen, batch, config)  # (B * K, h, w, 1)
    pm = pm[..., 0].reshape(b, k, *pm.shape[1:3])
    lo = pm.min(axis=(2, 3), keepdims=True)
    hi = pm.max(axis=(2, 3), keepdims=True)
    return ((pm - lo) / (hi - lo + 1e-7)).max(axis=1)


def gp_sam_prompts(pm: jax.Array, rng: jax.Array, *, num_points: int, threshold: float, scale):
    """Points (B, P, 2) and boxes (B, 4) in SAM's input pixels from pseudo-masks (B, h, w)."""
    b, h, w = pm.shape
    region = pm > threshold
    best = jax.nn.one_hot(jnp.argmax(pm.reshape(b, -1), axis=1), h * w, dtype=bool)
    region = jnp.where(region.any(axis=(1, 2))[:, None, None], region, best.reshape(b, h, w))
    flat = region.reshape(b, -1)
    noise = jax.random.uniform(rng, (num_points, b, h * w))
    cells = jnp.argmax(noise + 2.0 * flat[None], axis=2).T  # (B, P)
    sx, sy = scale / w, scale / h
    points = jnp.stack([(cells % w + 0.5) * sx, (cells // w + 0.5) * sy], axis=-1)
    return points, tight_boxes(region)[0] * jnp.array([sx, sy, sx, sy])


def _sam_logits(sam_params, batch, config: vrp.VRPConfig, **prompts) -> jax.Array:
    emb = vrp.query_embeddings({"sam": sam_params}, batch, config)
    low, _ = sam_model.predict_masks(
        sam_params, emb, config=config.sam, multimask_output=False, **prompts
    )
    size = batch["query_image"].shape[1:3]
    return resize_bilinear(low[:, 0], size, align_corners=True, channels_last=False)


def gp_sam(
    params,
    frozen,
    batch,
    rng,
    *,
    config: vrp.VRPConfig,
    mode: str = "points+box",
    num_points: int = 5,
    threshold: float = 0.5,
) -> jax.Array:
    """GP-SAM logits (B, H, W); `params` is unused (nothing is trained)."""
    del params
    if mode not in GP_MODES:
        raise ValueError(f"GP-SAM mode must be one of {GP_MODES}, got {mode!r}")
    pm = pseudo_mask(frozen, batch, config)
    points, boxes = gp_sam_prompts(
        pm, rng, num_points=num_points, threshold=threshold, scale=config.sam.image_size
    )
    b = points.shape[0]
    prompts = {}
    if mode != "box":
        prompts["points"] = points
        prompts["point_labels"] = jnp.ones((b, num_points), jnp.int32)
    if mode != "points":
        prompts["boxes"] = boxes
    return _sam_logits(frozen["sam"], batch, config, **prompts)


def oracle_box(params, frozen, batch, rng, *, config: vrp.VRPConfig) -> jax.Array:
    """SAM with the tight box of the target's ground truth: logits (B, H, W)."""
    del params, rng
    mask = batch["query_mask"] > 0
    _, h, w = mask.shape
    s = config.sam.image_size
    box = tight_boxes(mask)[0] * s / jnp.array([w, h, w, h], jnp.float32)  # empty: zero box
    return _sam_logits(frozen["sam"], batch, config, boxes=box)


def predictors(config: vrp.VRPConfig) -> dict:
    """Name -> predict function of every baseline, for `jaxvrp.evaluate.evaluate`."""
    out = {f"GP-SAM ({m})": partial(gp_sam, config=config, mode=m) for m in GP_MODES}
    out["SAM + oracle box"] = partial(oracle_box, config=config)
    return out
