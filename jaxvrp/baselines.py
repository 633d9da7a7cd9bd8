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

Both are training-free learners of the protocol (`jaxvrp.learners.protocol`: empty params,
no loss), registered as "gp_sam" (option `mode`: "points", "box" or "points+box") and
"oracle_box", so the evaluator, the demo and `jaxvrp segment` run them like any learner.
SAM gets a single output mask (several prompts are not ambiguous).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxvrp.learners import frozen_sam, protocol, registry, vrp
from jaxvrp.learners.protocol import FrozenSpec, Learner, no_params
from jaxvrp.masks import tight_boxes
from jaxvrp.sam import config as sam_config
from jaxvrp.sam import model as sam_model

GP_MODES = ("points", "box", "points+box")


@dataclasses.dataclass(frozen=True)
class GPSAMConfig:
    vrp: vrp.VRPConfig  # the backbone, SAM and pseudo-mask settings
    mode: str = "points+box"  # one of GP_MODES
    num_points: int = 5  # VRP-SAM paper §5.3: "randomly sample 5 points"
    threshold: float = 0.5  # binarisation of the min-max normalised pseudo-mask (ours)


def make_gp_sam_config(
    backbone: str = "resnet50_deepstem",
    sam: str = "vit_h",
    *,
    mode: str = "points+box",
    num_points: int = 5,
    threshold: float = 0.5,
    **vrp_options: Any,
) -> GPSAMConfig:
    """GP-SAM on VRP-SAM's frozen backbone and SAM; `vrp_options` are VRP-SAM's (e.g.
    `annotation_downsample`); the learned ones (`num_queries`, `dropout`, ...) are unused."""
    if mode not in GP_MODES:
        raise ValueError(f"GP-SAM mode must be one of {GP_MODES}, got {mode!r}")
    return GPSAMConfig(vrp.make_config(backbone, sam, **vrp_options), mode, num_points, threshold)


def pseudo_mask(frozen, batch, config: vrp.VRPConfig, feats=None) -> jax.Array:
    """Min-max normalised pseudo-mask of each target, max over its K shots: (B, h, w);
    `feats`: `vrp.shot_features` already computed."""
    b, k = batch["support_images"].shape[:2]
    *_, pm = vrp.shot_features(frozen, batch, config) if feats is None else feats
    pm = pm[..., 0].reshape(b, k, *pm.shape[1:3])  # (B * K, h, w, 1) -> (B, K, h, w)
    return frozen_sam.minmax(pm, (2, 3)).max(axis=1)


def gp_sam_prompts(pm: jax.Array, rng: jax.Array, *, num_points: int, threshold: float, scale):
    """Points (B, P, 2) and boxes (B, 4) in SAM's input pixels from pseudo-masks (B, h, w)."""
    b, h, w = pm.shape
    region = pm > threshold
    best = jax.nn.one_hot(jnp.argmax(pm.reshape(b, -1), axis=1), h * w, dtype=bool)
    region = jnp.where(region.any(axis=(1, 2))[:, None, None], region, best.reshape(b, h, w))
    flat = region.reshape(b, -1)
    if protocol.per_example(rng):  # (B,) keys: each target's points from its own key
        draw = lambda key: jax.random.uniform(key, (num_points, h * w))
        noise = jnp.swapaxes(jax.vmap(draw)(rng), 0, 1)
    else:
        noise = jax.random.uniform(rng, (num_points, b, h * w))
    cells = jnp.argmax(noise + 2.0 * flat[None], axis=2).T  # (B, P)
    sx, sy = scale / w, scale / h
    points = jnp.stack([(cells % w + 0.5) * sx, (cells // w + 0.5) * sy], axis=-1)
    return points, tight_boxes(region)[0] * jnp.array([sx, sy, sx, sy])


def sam_logits(sam_params, batch, sam: sam_config.SamConfig, emb=None, **prompts) -> jax.Array:
    """SAM's single-output logits (B, H, W) for geometric prompts in SAM input pixels
    (`emb`: the query embedding already computed)."""
    if emb is None:
        emb = frozen_sam.query_embeddings({"sam": sam_params}, batch, sam)
    low, _ = sam_model.predict_masks(sam_params, emb, config=sam, multimask_output=False, **prompts)
    return frozen_sam.to_query_size(low[:, 0], batch)


def gp_sam(params, frozen, batch, *, config: GPSAMConfig, rng=None, train=False) -> jax.Array:
    """GP-SAM logits (B, H, W); `params` is empty (nothing is trained). Without an `rng` the
    points are drawn with `jax.random.key(0)`."""
    del params, train
    rng = jax.random.key(0) if rng is None else rng
    v = config.vrp
    feats, emb = vrp.frozen_features(frozen, batch, v)  # one query pass on a SAM backbone
    pm = pseudo_mask(frozen, batch, v, feats)
    points, boxes = gp_sam_prompts(
        pm, rng, num_points=config.num_points, threshold=config.threshold, scale=v.sam.image_size
    )
    b = points.shape[0]
    prompts = {}
    if config.mode != "box":
        prompts["points"] = points
        prompts["point_labels"] = jnp.ones((b, config.num_points), jnp.int32)
    if config.mode != "points":
        prompts["boxes"] = boxes
    return sam_logits(frozen["sam"], batch, v.sam, emb, **prompts)


@dataclasses.dataclass(frozen=True)
class OracleBoxConfig:
    sam: sam_config.SamConfig


def make_oracle_box_config(sam: str = "vit_h", sam_dtype: str = "float32") -> OracleBoxConfig:
    return OracleBoxConfig(sam_config.get_config(sam, dtype=sam_dtype))


def oracle_box(params, frozen, batch, *, config: OracleBoxConfig, rng=None, train=False):
    """SAM with the tight box of the target's ground truth: logits (B, H, W)."""
    del params, rng, train
    mask = batch["query_mask"] > 0
    _, h, w = mask.shape
    s = config.sam.image_size
    box = tight_boxes(mask)[0] * s / jnp.array([w, h, w, h], jnp.float32)  # empty: zero box
    return sam_logits(frozen["sam"], batch, config.sam, boxes=box)


GP_SAM = registry.register(
    Learner(
        name="gp_sam",
        title="GP-SAM",
        make_config=make_gp_sam_config,
        init=no_params,
        apply=gp_sam,
        frozen=lambda c: vrp.frozen_spec(c.vrp),
        module=__name__,
        backbone_stages=lambda c: vrp.precomputable_stages(c.vrp),  # vrp.shot_features
    )
)
ORACLE_BOX = registry.register(
    Learner(
        name="oracle_box",
        title="SAM + oracle box",
        make_config=make_oracle_box_config,
        init=no_params,
        apply=oracle_box,
        frozen=lambda c: FrozenSpec(sam=c.sam),
        module=__name__,
    )
)
