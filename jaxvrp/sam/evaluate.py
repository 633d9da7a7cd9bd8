"""Quality of a SAM with oracle prompts: one point at the centre of each mask, or its box.

    result = evaluate_oracle_prompts(params, config, images, masks)
    result["point_miou"], result["box_miou"]

`images` are prepared as SAM takes them (`jaxvrp.data.sam_examples.prepare`), `masks` the
binary target of each (one object or class per row). The prompts come from the target:

- point: the mask pixel farthest from the mask's boundary (chessboard distance, the first in
  raster order among ties), with multimask output; "point_miou" keeps the mask with the
  highest *predicted* IoU (what a user gets), "point_best_miou" the best of the three by
  the true IoU (the SAM paper's "oracle" choice).
- box: the mask's tight bounding box, single output.

IoU per target at the input resolution (low-res logits bilinearly upsampled), averaged
over targets.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxvrp.data import procedural
from jaxvrp.data.annotations import tight_box
from jaxvrp.image import resize_bilinear
from jaxvrp.masks import erode
from jaxvrp.sam import model
from jaxvrp.sam.config import SamConfig
from jaxvrp.sam.training import mask_iou


def centre_point(mask: np.ndarray) -> np.ndarray:
    """(x, y) of the pixel of a binary (H, W) mask farthest from its boundary."""
    m = np.asarray(mask, bool)
    if not m.any():
        raise ValueError("centre_point of an empty mask")
    depth = np.zeros(m.shape, np.int32)
    cur = m.copy()
    while cur.any():
        depth += cur
        cur = erode(cur)
    y, x = np.unravel_index(np.argmax(depth), m.shape)
    return np.array([x, y], np.float32)


@partial(jax.jit, static_argnames=("config",))
def _scores(params, images, masks, points, boxes, *, config: SamConfig):
    emb = model.encode_image(params, images, config=config)
    b = images.shape[0]
    size = images.shape[1:3]
    low, iou_pred = model.predict_masks(
        params,
        emb,
        config=config,
        points=points[:, None],
        point_labels=jnp.ones((b, 1), jnp.int32),
        multimask_output=True,
    )
    logits = resize_bilinear(low, size, channels_last=False)
    ious = mask_iou(logits, masks[:, None], jnp.ones_like(masks[:, None]))  # (B, 3)
    chosen = jnp.take_along_axis(ious, jnp.argmax(iou_pred, axis=1)[:, None], axis=1)[:, 0]
    low_b, _ = model.predict_masks(params, emb, config=config, boxes=boxes, multimask_output=False)
    box_iou = mask_iou(resize_bilinear(low_b, size, channels_last=False)[:, 0], masks, 1.0)
    return chosen, ious.max(axis=1), box_iou


def evaluate_oracle_prompts(
    params, config: SamConfig, images: np.ndarray, masks: np.ndarray, *, batch_size: int = 25
) -> dict[str, float]:
    """mIoU over targets with the centre point and with the box (see the module docstring)."""
    n = len(images)
    if n == 0 or len(masks) != n:
        raise ValueError(f"need as many masks as images (>= 1), got {n} and {len(masks)}")
    points = np.stack([centre_point(m) for m in masks])
    boxes = np.stack([tight_box(m) for m in masks]).astype(np.float32)
    out = {"point": [], "point_best": [], "box": []}
    for s in range(0, n, batch_size):
        sl = slice(s, min(n, s + batch_size))
        pad = batch_size - (sl.stop - sl.start)  # fixed shapes: one compilation
        take = lambda a, sl=sl, pad=pad: np.concatenate([a[sl], np.repeat(a[sl][-1:], pad, 0)])
        scores = _scores(
            params,
            take(images),
            take(masks).astype(np.float32),
            take(points),
            take(boxes),
            config=config,
        )
        keep = batch_size - pad
        for name, v in zip(("point", "point_best", "box"), scores, strict=True):
            out[name].append(np.asarray(v)[:keep])
    result = {f"{k}_miou": float(np.concatenate(v).mean()) for k, v in out.items()}
    result["num_targets"] = n
    return result


def procedural_targets(num_images: int, seed: int, image_size: int, config: SamConfig):
    """(images, masks, class ids) of every (image, class) of the first `num_images` images of
    the procedural "test" stream, prepared for SAM."""
    from jaxvrp.data.sam_examples import prepare

    images, masks, classes = [], [], []
    for i in range(num_images):
        s = procedural.generate_image(seed, "test", i, image_size)
        for c in s.classes:
            img, mask, _ = prepare(s.image, s.mask, int(c), config)
            images.append(img)
            masks.append(mask)
            classes.append(int(c))
    return np.stack(images), np.stack(masks), np.array(classes)
