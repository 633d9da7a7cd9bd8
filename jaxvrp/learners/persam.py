"""PerSAM and PerSAM-F: SAM personalised from one reference, without training SAM.

Ported from the official code (ZrrSkywalker/Personalize-SAM, `persam.py`, `persam_f.py`,
`per_segment_anything/`), as pure jittable functions over the learners' batch format. Both
are learners with empty params (`name="persam"` / `"persam_f"`); `docs/persam.md` lists every
mapping choice and the measured parity.

    config = make_config(sam="vit_h")                      # or make_config_f(...) for PerSAM-F
    logits = apply({}, {"sam": sam_params}, batch, config=config)    # (B, H, W), fg where > 0
    out = predict(sam_params, batch, config)              # logits, points, (PerSAM-F) weights

PerSAM (`persam.py`), per query image:
1. Reference: the mask goes through SAM's preprocessing like an image (normalised with the
   pixel mean / std), is resized bilinearly to the embedding grid, and channel 0 > 0 marks the
   reference cells; the target embedding t is the mean of the reference features there.
2. Location confidence: cosine similarity of t with every query embedding cell, upsampled x4
   (bilinear) and post-processed like mask logits to the original size; one positive point at
   its maximum, one negative point at its minimum.
3. Pass 1: the two points, target-guided attention (`attn_sim` = sigmoid of the standardised
   similarity resized to the embedding grid) and target-semantic prompting (t added to the
   tokens), a single output mask (`multimask_output=False`).
4. Cascaded refinement: pass 2 with pass 1's low-res logits as mask input, pass 3 with the
   tight box of pass 2's best mask and its logits; each keeps the multimask output with the
   highest predicted IoU. Passes 2 and 3 use neither attn_sim nor t.

PerSAM-F (`persam_f.py`): t = (max + mean) / 2 of the reference features, a positive point
only, and 2 learnable weights over the 3 multimask logits, w = [1 - (w1 + w2), w1, w2]
(w1 = w2 = 1/3 at the start), fitted on the reference image itself (its own location prior
point, its own mask at full resolution) with Dice + sigmoid focal loss, AdamW (lr 1e-3, eps
1e-4, weight decay 0.01) and a cosine schedule over 1000 steps. The official decoder runs
under `no_grad`, so its logits are constants of the fit: the decoder runs once and the steps
are one `lax.scan`. Then: refinement 1 with the box of the weighted mask and the weighted
low-res logits as mask input, refinement 2 with the box and logits of the best mask.
`max_objects` > 1 adds `persam_f_multi_obj.py`'s loop: found objects are blacked out and the
query re-encoded until a mask repeats an earlier one (IoU >= 0.8); the output is the union.

Mapping onto the batch (the official code works per image at its original size):
- The batch images (B, H, W) are the "original" images. SAM sees them as every jaxvrp
  learner feeds it (`jaxvrp.learners.frozen_sam`): resized bilinearly (align_corners=True) to SAM's
  square input; the ImageNet normalisation of the batch equals SAM's pixel normalisation.
  So SAM's "input size" is the full (S, S) input (no padding) and point / box coordinates
  scale by S / W and S / H (the official `apply_coords`). Mask logits are post-processed as
  officially (`postprocess_masks`: bilinear to S, crop, bilinear to (H, W)).
- The reference annotation (B, K, H, W) binary becomes the red channel of a PerSeg
  annotation PNG (foreground 128, `mask_value`), resized like the image (bilinear,
  align_corners=True) instead of PIL's bilinear on uint8. With 128 the preprocessed value is
  (128 - 123.675) / 58.395 > 0 only where almost all of a cell is foreground.
- K shots (the official code is 1-shot): t is the mean of the K per-shot target embeddings
  (shots with an empty mask left out); PerSAM-F fits its weights on the mean loss over the K
  references, each with its own location-prior point from the merged t.
- Degenerate inputs (the official code would produce NaNs or crash on `x.min()` of an empty
  array): an image whose reference masks are all empty at the embedding grid returns
  `EMPTY_LOGIT` everywhere (an empty mask); when the mask whose box a refinement needs is
  empty, the refinements stop there and that mask's logits (all <= 0, an empty mask) are
  returned.
"""

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxvrp.image import resize_bilinear
from jaxvrp.learners import frozen_sam, registry
from jaxvrp.learners.protocol import FrozenSpec, Learner, no_params
from jaxvrp.masks import tight_boxes
from jaxvrp.sam import config as sam_config
from jaxvrp.sam import model as sam_model
from jaxvrp.sam.transforms import postprocess_masks

Params = dict[str, Any]

METHODS = ("persam", "persam_f")
EMPTY_LOGIT = -1e4  # the logits returned for an image without a usable reference mask


@dataclasses.dataclass(frozen=True)
class PerSAMConfig:
    sam: sam_config.SamConfig
    method: str = "persam"  # "persam" (persam.py) or "persam_f" (persam_f.py)
    # Foreground value of the reference mask image: PerSeg's annotation PNGs have red = 128.
    mask_value: float = 128.0
    # Cascaded post-refinement passes after the first prediction (both official scripts: 2).
    refinement: int = 2
    # PerSAM only (persam.py), switches for ablations:
    target_guided_attention: bool = True
    target_semantic_prompting: bool = True
    negative_point: bool = True
    # PerSAM-F only (persam_f.py): the fit of the mask weights.
    train_steps: int = 1000  # --train_epoch 1000, CosineAnnealingLR(T_max=train_epoch)
    lr: float = 1e-3  # --lr 1e-3
    adam_eps: float = 1e-4  # AdamW(..., eps=1e-4)
    weight_decay: float = 0.01  # torch AdamW's default
    focal_alpha: float = 0.25  # calculate_sigmoid_focal_loss defaults
    focal_gamma: float = 2.0
    # PerSAM-F multi-object loop (persam_f_multi_obj.py): 1 = off (persam_f.py).
    max_objects: int = 1  # persam_f_multi_obj.py --max_objects 10
    iou_threshold: float = 0.8  # persam_f_multi_obj.py --iou_threshold 0.8

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.refinement not in (0, 1, 2):
            raise ValueError(f"refinement must be 0, 1 or 2, got {self.refinement}")
        if self.train_steps < 0:
            raise ValueError(f"train_steps must be >= 0, got {self.train_steps}")
        if self.mask_value <= self.sam.pixel_mean[0]:
            raise ValueError(
                f"mask_value {self.mask_value} must exceed SAM's red pixel mean "
                f"{self.sam.pixel_mean[0]}, else every reference mask is empty"
            )
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")
        if self.method == "persam" and self.max_objects != 1:
            raise ValueError("max_objects is a PerSAM-F option (persam_f_multi_obj.py)")
        if self.method == "persam_f":
            persam_only = ("target_guided_attention", "target_semantic_prompting", "negative_point")
            changed = [n for n in persam_only if not getattr(self, n)]
            if changed:
                raise ValueError(f"{changed} are PerSAM options; PerSAM-F does not use them")


def make_config(sam: str = "vit_h", sam_dtype: str = "float32", **options: Any) -> PerSAMConfig:
    """PerSAM's config from a SAM variant name (official: ViT-H) and options."""
    options.setdefault("method", "persam")
    return PerSAMConfig(sam_config.get_config(sam, dtype=sam_dtype), **options)


def make_config_f(sam: str = "vit_h", sam_dtype: str = "float32", **options: Any) -> PerSAMConfig:
    """PerSAM-F's config (`make_config` with method="persam_f")."""
    if options.setdefault("method", "persam_f") != "persam_f":
        raise ValueError("make_config_f makes PerSAM-F configs (method='persam_f')")
    return make_config(sam, sam_dtype, **options)


# ----------------------------------------------------------------------------- reference


def reference_mask(annotations: jax.Array, config: PerSAMConfig) -> jax.Array:
    """Binary annotations (N, H, W) -> reference cells (N, g, g) bool on SAM's embedding grid.

    As `predictor.set_image(image, mask)` + `F.interpolate(..., bilinear)` + `[0] > 0`: the
    mask image's red channel, resized like the image, normalised with SAM's pixel mean / std
    (`Sam.preprocess`; no padding, the input is square), then bilinear (align_corners=False).
    """
    s, g = config.sam.image_size, config.sam.embedding_size
    red = annotations.astype(jnp.float32) * config.mask_value
    red = resize_bilinear(red, (s, s), align_corners=True, channels_last=False)
    red = (red - config.sam.pixel_mean[0]) / config.sam.pixel_std[0]
    return resize_bilinear(red, (g, g), channels_last=False) > 0


def target_embedding(
    features: jax.Array, mask: jax.Array, method: str
) -> tuple[jax.Array, jax.Array]:
    """Masked reference features (N, g, g, C), cells (N, g, g) -> t (N, C) and valid (N,).

    PerSAM: the mean; PerSAM-F: max / 2 + mean / 2 (official order). An empty mask gives
    t = 0 and valid = False.
    """
    w = mask.astype(features.dtype)[..., None]
    n = w.sum(axis=(1, 2))  # (N, 1)
    mean = (features * w).sum(axis=(1, 2)) / jnp.maximum(n, 1.0)
    t = mean
    if method == "persam_f":
        mx = jnp.where(mask[..., None], features, -jnp.inf).max(axis=(1, 2))
        t = mx / 2 + mean / 2
    valid = n[:, 0] > 0
    return jnp.where(valid[:, None], t, 0.0), valid


def merge_shots(t: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-shot embeddings (B, K, C), valid (B, K) -> their mean over valid shots (B, C), and
    whether any shot was valid (B,)."""
    w = valid.astype(t.dtype)[..., None]
    n = w.sum(axis=1)
    return (t * w).sum(axis=1) / jnp.maximum(n, 1.0), n[:, 0] > 0


def location_confidence(
    features: jax.Array, t: jax.Array, out_size: tuple[int, int], config: PerSAMConfig
) -> jax.Array:
    """Cosine similarity of t (N, C) with each cell of features (N, g, g, C), upsampled x4
    (bilinear) and post-processed like mask logits: (N, H, W)."""
    s, m = config.sam.image_size, config.sam.low_res_mask_size
    tn = t / jnp.maximum(jnp.linalg.norm(t, axis=-1, keepdims=True), 1e-30)  # t = 0: invalid
    fn = features / jnp.linalg.norm(features, axis=-1, keepdims=True)
    sim = jnp.einsum("nc,nyxc->nyx", tn, fn, precision=jax.lax.Precision.HIGHEST)
    sim = resize_bilinear(sim, (m, m), channels_last=False)  # F.interpolate(scale_factor=4)
    return postprocess_masks(sim[:, None], (s, s), out_size, s)[:, 0]


def select_points(sim: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(N, H, W) -> positive point at the maximum, negative at the minimum, each (N, 2) as
    (x, y) = (column, row) pixel coordinates (official `point_selection`, topk=1)."""
    _, _, w = sim.shape
    flat = sim.reshape(sim.shape[0], -1)

    def xy(i):
        return jnp.stack([i % w, i // w], axis=-1).astype(jnp.float32)

    return xy(jnp.argmax(flat, axis=1)), xy(jnp.argmin(flat, axis=1))


def guided_attention(sim: jax.Array, config: PerSAMConfig) -> jax.Array:
    """Target-guided attention from the confidence map (N, H, W): standardised (unbiased
    std, as `torch.std`), resized bilinearly to the embedding grid, sigmoid: (N, g, g)."""
    g = config.sam.embedding_size
    mean = sim.mean(axis=(1, 2), keepdims=True)
    std = sim.std(axis=(1, 2), keepdims=True, ddof=1)
    return jax.nn.sigmoid(resize_bilinear((sim - mean) / std, (g, g), channels_last=False))


# ----------------------------------------------------------------------------- SAM passes


def _decode(
    sam_params: Params,
    embeddings: jax.Array,
    points: jax.Array,
    labels: jax.Array,
    out_size: tuple[int, int],
    config: PerSAMConfig,
    *,
    multimask: bool,
    boxes: jax.Array | None = None,
    mask_input: jax.Array | None = None,
    attn_sim: jax.Array | None = None,
    target: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`SamPredictor.predict` with prompts in original-image pixels.

    points (N, P, 2), labels (N, P), boxes (N, 4) inclusive (x0, y0, x1, y1), mask_input
    (N, m, m) low-res logits -> low-res logits (N, M, m, m), IoU (N, M), logits (N, M, H, W).
    """
    s = config.sam.image_size
    h, w = out_size
    scale = jnp.array([s / w, s / h], jnp.float32)  # apply_coords: (S, S) from (H, W)
    low, iou = sam_model.predict_masks(
        sam_params,
        embeddings,
        config=config.sam,
        points=points * scale,
        point_labels=labels,
        boxes=None if boxes is None else boxes * jnp.tile(scale, 2),
        masks=None if mask_input is None else mask_input[..., None],
        multimask_output=multimask,
        attn_sim=attn_sim,
        target_embedding=target,
    )
    return low, iou, postprocess_masks(low, (s, s), out_size, s)


def _best(low: jax.Array, iou: jax.Array, high: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The output with the highest predicted IoU (first on ties, as `np.argmax`):
    low-res (N, m, m) and full-size (N, H, W) logits."""
    i = jnp.argmax(iou, axis=1)
    pick = lambda x: jnp.take_along_axis(x, i[:, None, None, None], axis=1)[:, 0]
    return pick(low), pick(high)


def _box(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Logits (N, H, W) -> the mask's tight box (N, 4) with inclusive ends, as the official
    `x.min(), y.min(), x.max(), y.max()` of `np.nonzero(mask)`; and empty (N,)."""
    box, empty = tight_boxes(logits > 0)
    return box - jnp.array([0.0, 0.0, 1.0, 1.0]), empty


def _refine(
    sam_params, embeddings, points, labels, low, high, out_size, config, *, passes, box_first
):
    """Cascaded post-refinement: `passes` multimask passes with the previous low-res logits
    as mask input (with the previous mask's box when `box_first` or after the first pass),
    each keeping the best-IoU output. Stops (keeps the previous logits) where a needed box
    would come from an empty mask. Returns full-size logits (N, H, W)."""
    for i in range(passes):
        use_box = box_first or i > 0
        boxes, empty = _box(high) if use_box else (None, None)
        low_n, iou_n, high_n = _decode(
            sam_params,
            embeddings,
            points,
            labels,
            out_size,
            config,
            multimask=True,
            boxes=boxes,
            mask_input=low,
        )
        low_n, high_n = _best(low_n, iou_n, high_n)
        if use_box:
            keep = empty[:, None, None]
            low_n, high_n = jnp.where(keep, low, low_n), jnp.where(keep, high, high_n)
        low, high = low_n, high_n
    return high


# ----------------------------------------------------------------------------- PerSAM-F fit


def dice_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
    """Official `calculate_dice_loss` per mask: (N, H, W) -> (N,), smoothed by 1."""
    p = jax.nn.sigmoid(logits)
    num = 2 * (p * target).sum(axis=(1, 2))
    den = p.sum(axis=(1, 2)) + target.sum(axis=(1, 2))
    return 1 - (num + 1) / (den + 1)


def focal_loss(logits: jax.Array, target: jax.Array, alpha: float, gamma: float) -> jax.Array:
    """Official `calculate_sigmoid_focal_loss` per mask (mean over pixels): (N,)."""
    p = jax.nn.sigmoid(logits)
    ce = optax.sigmoid_binary_cross_entropy(logits, target)
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean(axis=(1, 2))


def full_weights(w: jax.Array) -> jax.Array:
    """Learned (B, 2) -> the three mask weights (B, 3) = [1 - (w1 + w2), w1, w2]."""
    return jnp.concatenate([1 - w.sum(axis=-1, keepdims=True), w], axis=-1)


def fit_mask_weights(
    logits: jax.Array, target: jax.Array, valid: jax.Array, config: PerSAMConfig
) -> tuple[jax.Array, jax.Array]:
    """PerSAM-F's fit of the mask weights on fixed reference logits.

    logits (B, K, 3, H, W) the references' multimask logits, target (B, K, H, W) their
    masks, valid (B, K) the shots that count. Returns the weights (B, 3) and the loss of
    every step (steps, B). Each image's weights are fitted independently (AdamW is
    elementwise, so one optimiser over (B, 2) is B independent fits).
    """
    b, k = target.shape[:2]
    flat_logits = logits.reshape(b * k, *logits.shape[2:])
    flat_target = target.reshape(b * k, *target.shape[2:]).astype(jnp.float32)
    shot_w = valid.astype(jnp.float32) / jnp.maximum(valid.sum(axis=1, keepdims=True), 1)

    def losses(w):  # (B, 2) -> (B,)
        ww = jnp.repeat(full_weights(w), k, axis=0)  # (B * K, 3)
        x = jnp.einsum("nm,nmyx->nyx", ww, flat_logits, precision=jax.lax.Precision.HIGHEST)
        per = dice_loss(x, flat_target) + focal_loss(
            x, flat_target, config.focal_alpha, config.focal_gamma
        )
        return (per.reshape(b, k) * shot_w).sum(axis=1)

    steps = config.train_steps
    schedule = optax.cosine_decay_schedule(config.lr, max(steps, 1))  # CosineAnnealingLR
    opt = optax.adamw(
        schedule, b1=0.9, b2=0.999, eps=config.adam_eps, weight_decay=config.weight_decay
    )
    w0 = jnp.full((b, 2), 1.0 / 3.0, jnp.float32)  # Mask_Weights: ones(2, 1) / 3

    def total(v):
        per = losses(v)
        return per.sum(), per

    def step(carry, _):
        w, state = carry
        (_, per), grad = jax.value_and_grad(total, has_aux=True)(w)
        updates, state = opt.update(grad, state, w)
        return (optax.apply_updates(w, updates), state), per

    (w, _), history = jax.lax.scan(step, (w0, opt.init(w0)), None, length=steps)
    return full_weights(w), history


# ----------------------------------------------------------------------------- predict


def _persam_f_query(sam_params, embeddings, out_size, *, t, weights, config):
    """PerSAM-F on query embeddings (B, g, g, C) with fitted weights (B, 3): logits (B, H, W)
    and the positive point (B, 1, 2)."""
    b = embeddings.shape[0]
    pos, _ = select_points(location_confidence(embeddings, t, out_size, config))
    points, labels = pos[:, None], jnp.ones((b, 1), jnp.int32)
    low, _, high = _decode(sam_params, embeddings, points, labels, out_size, config, multimask=True)
    hp = jax.lax.Precision.HIGHEST
    high = jnp.einsum("bm,bmyx->byx", weights, high, precision=hp)
    low = jnp.einsum("bm,bmyx->byx", weights, low, precision=hp)
    logits = _refine(
        sam_params,
        embeddings,
        points,
        labels,
        low,
        high,
        out_size,
        config,
        passes=config.refinement,
        box_first=True,
    )
    return logits, points


def _multi_object(sam_params, image, first, run, config):
    """persam_f_multi_obj.py's test loop: after each object its pixels are set to black and
    the image is re-encoded, up to `max_objects` objects; the loop stops at the first mask
    whose IoU with an earlier one is >= `iou_threshold` (that mask is dropped).

    image (B, H, W, 3) SAM-normalised, first (B, H, W) the first object's logits ->
    logits of the union of the kept objects (their maximum) (B, H, W), and how many (B,).
    The official script draws every kept object but writes only the last mask computed
    (even a dropped duplicate) to its PNG; the union is what it shows.
    """
    b, h, w, _ = image.shape
    n = config.max_objects
    mean, std = jnp.asarray(config.sam.pixel_mean), jnp.asarray(config.sam.pixel_std)
    black = -mean / std  # uint8 0 after SAM's normalisation
    mask = first > 0
    history = jnp.zeros((n, b, h, w), bool).at[0].set(mask)
    image = jnp.where(mask[..., None], black, image)
    state = (jnp.int32(1), image, first, history, jnp.zeros((b,), bool), jnp.ones((b,), jnp.int32))

    def cond(state):
        i, *_, done, _ = state
        return (i < n) & ~done.all()

    def body(state):
        i, image, union, history, done, count = state
        emb = frozen_sam.image_embeddings(sam_params, image, config.sam)
        logits, _ = run(emb, (h, w))
        mask = logits > 0
        inter = (history & mask).sum(axis=(2, 3))
        uni = (history | mask).sum(axis=(2, 3))  # (n, B)
        iou = jnp.where(uni > 0, inter / jnp.maximum(uni, 1), 0.0)  # official: 0 / 0 = NaN
        dup = ((iou >= config.iou_threshold) & (jnp.arange(n) < i)[:, None]).any(axis=0)
        keep = ~done & ~dup
        history = history.at[i].set(mask & keep[:, None, None])
        union = jnp.where(keep[:, None, None], jnp.maximum(union, logits), union)
        image = jnp.where(mask[..., None], black, image)
        return i + 1, image, union, history, done | dup, count + keep

    _, _, union, _, _, count = jax.lax.while_loop(cond, body, state)
    return union, count


def _embeddings(sam_params: Params, batch: dict, config: PerSAMConfig):
    support = batch["support_images"]
    b, k = support.shape[:2]
    q_emb = frozen_sam.query_embeddings({"sam": sam_params}, batch, config.sam)
    s_emb = frozen_sam.image_embeddings(
        sam_params, support.reshape(b * k, *support.shape[2:]), config.sam
    )
    return q_emb, s_emb


def predict(sam_params: Params, batch: dict, config: PerSAMConfig) -> dict[str, jax.Array]:
    """PerSAM / PerSAM-F on a batch, with what they chose.

    Returns "logits" (B, H, W) at the query size, "points" (B, P, 2) (x, y) query pixels
    with "point_labels" (B, P), "valid" (B,) (a usable reference mask), and for PerSAM-F
    "mask_weights" (B, 3) and "fit_losses" (steps, B), with `max_objects` > 1 also
    "num_objects" (B,) (the logits are then those of the union of the objects found).
    """
    query, support = batch["query_image"], batch["support_images"]
    ann = batch["support_annotations"]
    if support.ndim != 5 or ann.shape != support.shape[:4]:
        raise ValueError(
            f"support_images (B, K, H, W, 3) and support_annotations (B, K, H, W) disagree: "
            f"{support.shape} and {ann.shape}"
        )
    b, k, h, w = ann.shape
    out_size = (int(query.shape[1]), int(query.shape[2]))
    if (h, w) != out_size:
        raise ValueError(f"support size {(h, w)} differs from the query size {out_size}")
    q_emb, s_emb = _embeddings(sam_params, batch, config)
    cells = reference_mask(ann.reshape(b * k, h, w), config)
    t_shot, valid_shot = target_embedding(s_emb, cells, config.method)
    t, valid = merge_shots(t_shot.reshape(b, k, -1), valid_shot.reshape(b, k))

    sim = location_confidence(q_emb, t, out_size, config)
    pos, neg = select_points(sim)
    out = {"valid": valid}
    if config.method == "persam":
        if config.negative_point:
            points, labels = jnp.stack([pos, neg], axis=1), jnp.array([[1, 0]] * b, jnp.int32)
        else:
            points, labels = pos[:, None], jnp.ones((b, 1), jnp.int32)
        low, iou, high = _decode(
            sam_params,
            q_emb,
            points,
            labels,
            out_size,
            config,
            multimask=False,
            attn_sim=guided_attention(sim, config) if config.target_guided_attention else None,
            target=t if config.target_semantic_prompting else None,
        )
        logits = _refine(
            sam_params,
            q_emb,
            points,
            labels,
            low[:, 0],
            high[:, 0],
            out_size,
            config,
            passes=config.refinement,
            box_first=False,
        )
    else:
        # the fit on the references: each with its own location prior (from the merged t)
        t_ref = jnp.repeat(t, k, axis=0)
        ref_pos, _ = select_points(location_confidence(s_emb, t_ref, (h, w), config))
        ones = jnp.ones((b * k, 1), jnp.int32)
        _, _, ref_high = _decode(
            sam_params, s_emb, ref_pos[:, None], ones, (h, w), config, multimask=True
        )
        ref_high = jax.lax.stop_gradient(ref_high)  # official: predict_torch under no_grad
        weights, history = fit_mask_weights(
            ref_high.reshape(b, k, *ref_high.shape[1:]), ann > 0, valid_shot.reshape(b, k), config
        )
        run = partial(_persam_f_query, sam_params, t=t, weights=weights, config=config)
        logits, points = run(q_emb, out_size)
        labels = jnp.ones((b, 1), jnp.int32)
        if config.max_objects > 1:
            logits, out["num_objects"] = _multi_object(sam_params, query, logits, run, config)
        out["mask_weights"], out["fit_losses"] = weights, history
    out["logits"] = jnp.where(valid[:, None, None], logits, EMPTY_LOGIT)
    out["points"], out["point_labels"] = points, labels
    return out


def apply(
    params: Params,
    frozen: Params,
    batch: dict,
    *,
    config: PerSAMConfig,
    rng: jax.Array | None = None,
    train: bool = False,
) -> jax.Array:
    """Foreground logits (B, H, W) at the query size; nothing is learned (`params` = {})."""
    del params, rng, train
    return predict(frozen["sam"], batch, config)["logits"]


def frozen_spec(config: PerSAMConfig) -> FrozenSpec:
    """PerSAM prompts SAM from SAM's own image embeddings: no other backbone."""
    return FrozenSpec(sam=config.sam, backbone=None)


LEARNER = registry.register(
    Learner(
        name="persam",
        title="PerSAM",
        make_config=make_config,
        init=no_params,
        apply=apply,
        loss_fn=None,
        frozen=frozen_spec,
        module=__name__,
    )
)

LEARNER_F = registry.register(
    Learner(
        name="persam_f",
        title="PerSAM-F",
        make_config=make_config_f,
        init=no_params,
        apply=apply,
        loss_fn=None,
        frozen=frozen_spec,
        module=__name__,
    )
)
