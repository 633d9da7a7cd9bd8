"""Promptable-segmentation training of SAM itself, as pure functions.

The official repository has no training code; this follows the training recipe of the SAM
paper (Kirillov et al. 2023, §3 and Appendix A "Training algorithm"):

- Prompts are simulated from the ground-truth mask: a foreground point drawn uniformly from
  the mask, and the mask's bounding box with noise on each coordinate of standard deviation
  10 % of the box side, at most 20 pixels (at SAM's 1024 input; scaled to other inputs).
- Corrections: later points are drawn uniformly from the error region of the previous
  prediction (foreground where it missed, background where it overshot), and the previous
  low-resolution logits (unthresholded) are passed back as the mask prompt; with several
  outputs, the mask with the highest predicted IoU is the one carried forward.
- A single point is ambiguous: the three multimask outputs are predicted and only the
  lowest loss among them is back-propagated. Boxes and multi-point prompts use the single
  (fourth) output.
- Loss: focal : dice = 20 : 1 on the masks, plus the mean-squared error between the IoU
  head's prediction and the predicted mask's IoU with the ground truth (weight 1).

Every image of a batch gets one point round, one box round and `correction_rounds` rounds
that add one correction point each to the point round (the paper's 11 rounds per mask are a
GPU budget; the count is a config option). All rounds share the image embedding, which is
computed once. `trainable` picks which of SAM's three parts are updated, so the same code
trains a small SAM from scratch or fine-tunes a converted one (e.g. only the decoder).

Batch: `image` (B, S, S, 3) SAM-normalised and padded (as `jaxvrp.sam.transforms`), `mask`
(B, S, S) binary target, optional `ignore` (B, S, S) bool (left out of the loss).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxvrp.image import resize_bilinear
from jaxvrp.masks import tight_boxes
from jaxvrp.sam import model as sam_model
from jaxvrp.sam.config import SamConfig

Params = dict[str, Any]

PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The loss and prompt-simulation settings (SAM paper values by default)."""

    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    focal_alpha: float = 0.25  # the focal loss's usual alpha (RetinaNet; torchvision default)
    focal_gamma: float = 2.0
    box_noise: float = 0.1  # noise std as a fraction of the box side
    box_noise_max: float = 20.0 / 1024  # noise cap as a fraction of the input side
    correction_rounds: int = 2
    trainable: tuple[str, ...] = PARTS

    def __post_init__(self):
        unknown = sorted(set(self.trainable) - set(PARTS))
        if unknown or not self.trainable:
            raise ValueError(f"trainable must be a non-empty subset of {PARTS}, got {unknown}")
        if self.correction_rounds < 0:
            raise ValueError(f"correction_rounds must be >= 0, got {self.correction_rounds}")


def focal_loss(logits: jax.Array, target: jax.Array, valid: jax.Array, alpha, gamma):
    """Sigmoid focal loss, mean over valid pixels: (B, ..., H, W) -> (B, ...)."""
    p = jax.nn.sigmoid(logits)
    ce = optax.sigmoid_binary_cross_entropy(logits, target)
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return (loss * valid).sum(axis=(-2, -1)) / jnp.maximum(valid.sum(axis=(-2, -1)), 1.0)


def dice_loss(logits: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
    """1 - (2 |p t| + 1) / (|p| + |t| + 1) over valid pixels: (B, ..., H, W) -> (B, ...)."""
    p = jax.nn.sigmoid(logits) * valid
    t = target * valid
    num = 2.0 * (p * t).sum(axis=(-2, -1)) + 1.0
    return 1.0 - num / (p.sum(axis=(-2, -1)) + t.sum(axis=(-2, -1)) + 1.0)


def mask_iou(logits: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
    """IoU of (logits > 0) with the binary target over valid pixels: (B, ..., H, W) -> (B, ...)."""
    pred = (logits > 0).astype(jnp.float32) * valid
    t = target * valid
    inter = (pred * t).sum(axis=(-2, -1))
    union = pred.sum(axis=(-2, -1)) + t.sum(axis=(-2, -1)) - inter
    return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 1.0)


def sample_points(rng: jax.Array, region: jax.Array) -> jax.Array:
    """One pixel drawn uniformly from each region (B, H, W) bool, as (x, y) pixel coordinates
    (B, 2). An empty region falls back to a uniform pixel of the whole image."""
    b, h, w = region.shape
    score = jax.random.uniform(rng, (b, h * w)) + 2.0 * region.reshape(b, -1)
    flat = jnp.argmax(score, axis=1)
    return jnp.stack([flat % w, flat // w], axis=1).astype(jnp.float32)


def noisy_boxes(rng: jax.Array, mask: jax.Array, config: TrainConfig) -> jax.Array:
    """Bounding boxes (x0, y0, x1, y1) of binary masks (B, H, W) with the paper's noise,
    clipped to the image; an empty mask gives the whole image. x1, y1 are the last
    foreground column / row plus one, as `jaxvrp.data.annotations.tight_box`."""
    _, h, w = mask.shape
    box, empty = tight_boxes(mask)
    limit = jnp.array([w, h, w, h], jnp.float32)
    box = jnp.where(empty[:, None], limit * jnp.array([0.0, 0.0, 1.0, 1.0]), box)
    side = jnp.stack([box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]] * 2, axis=1)
    std = jnp.minimum(config.box_noise * side, config.box_noise_max * max(h, w))
    box = box + std * jax.random.normal(rng, box.shape)
    box = jnp.clip(box, 0.0, limit)
    # keep x0 <= x1 and y0 <= y1 after the noise
    return jnp.concatenate(
        [jnp.minimum(box[:, :2], box[:, 2:]), jnp.maximum(box[:, :2], box[:, 2:])], axis=1
    )


def _round_loss(low_res, iou_pred, target, valid, config: TrainConfig):
    """Losses of one round: low-res logits (B, M, h, w) upsampled to the target's (H, W).

    Returns (loss (B,), parts, full-size logits (B, M, H, W))."""
    logits = resize_bilinear(low_res, target.shape[1:], channels_last=False)
    t, v = target[:, None], valid[:, None]
    focal = focal_loss(logits, t, v, config.focal_alpha, config.focal_gamma)
    dice = dice_loss(logits, t, v)
    per_mask = config.focal_weight * focal + config.dice_weight * dice  # (B, M)
    best = jnp.argmin(per_mask, axis=1)  # multimask: back-propagate the best mask only
    take = lambda x: jnp.take_along_axis(x, best[:, None], axis=1)[:, 0]
    iou_true = jax.lax.stop_gradient(mask_iou(logits, t, v))
    iou_mse = ((iou_pred - iou_true) ** 2).mean(axis=1)
    loss = take(per_mask) + config.iou_weight * iou_mse
    parts = {"focal": take(focal), "dice": take(dice), "iou_mse": iou_mse, "iou": take(iou_true)}
    return loss, parts, logits


def loss_fn(
    params: Params,
    batch: dict,
    rng: jax.Array,
    *,
    sam: SamConfig,
    config: TrainConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SAM's training loss on a batch: (mean loss, metrics). Only the parts named in
    `config.trainable` receive gradients (the others are behind `stop_gradient`)."""
    params = {
        k: v if k in config.trainable else jax.lax.stop_gradient(v) for k, v in params.items()
    }
    target = batch["mask"].astype(jnp.float32)
    ignore = batch.get("ignore")
    valid = jnp.ones_like(target) if ignore is None else 1.0 - ignore.astype(jnp.float32)
    gt = (target > 0) & (valid > 0)
    emb = sam_model.encode_image(params, batch["image"], config=sam)
    b = target.shape[0]
    k_point, k_box, k_fix = jax.random.split(rng, 3)

    def predict(points, labels, boxes, masks, multimask):
        return sam_model.predict_masks(
            params,
            emb,
            config=sam,
            points=points,
            point_labels=labels,
            boxes=boxes,
            masks=masks,
            multimask_output=multimask,
        )

    rounds = {}
    points = sample_points(k_point, gt)[:, None]  # (B, 1, 2)
    labels = jnp.ones((b, 1), jnp.int32)
    low, iou = predict(points, labels, None, None, True)
    rounds["point"] = _round_loss(low, iou, target, valid, config)
    boxes = noisy_boxes(k_box, gt, config)
    low_b, iou_b = predict(None, None, boxes, None, False)
    rounds["box"] = _round_loss(low_b, iou_b, target, valid, config)
    full = rounds["point"][2]
    for r, key in enumerate(jax.random.split(k_fix, config.correction_rounds)):
        # carry the mask with the highest predicted IoU, unthresholded, without gradient
        pick = jnp.argmax(iou, axis=1)[:, None, None, None]
        prev_low = jax.lax.stop_gradient(jnp.take_along_axis(low, pick, axis=1))
        pred = jnp.take_along_axis(full, pick, axis=1)[:, 0] > 0
        error = (pred != gt) & (valid > 0)
        new = sample_points(key, error)
        xi, yi = new[:, 0].astype(jnp.int32), new[:, 1].astype(jnp.int32)
        new_label = gt[jnp.arange(b), yi, xi].astype(jnp.int32)
        points = jnp.concatenate([points, new[:, None]], axis=1)
        labels = jnp.concatenate([labels, new_label[:, None]], axis=1)
        low, iou = predict(points, labels, None, jnp.moveaxis(prev_low, 1, -1), False)
        rounds[f"fix{r + 1}"] = _round_loss(low, iou, target, valid, config)
        full = rounds[f"fix{r + 1}"][2]
    loss = jnp.mean(jnp.stack([v[0] for v in rounds.values()]))
    metrics = {"loss": loss}
    for name, (_, parts, _) in rounds.items():
        metrics[f"{name}_iou"] = parts["iou"].mean()
    for part in ("focal", "dice", "iou_mse"):
        metrics[part] = jnp.mean(jnp.stack([v[1][part].mean() for v in rounds.values()]))
    return loss, metrics


def param_labels(params: Params, config: TrainConfig) -> Params:
    """ "train" / "frozen" per top-level part, for `optax.multi_transform`."""
    return {
        k: jax.tree.map(lambda _, k=k: "train" if k in config.trainable else "frozen", v)
        for k, v in params.items()
    }
