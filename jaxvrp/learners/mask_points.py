"""Point prompts derived from ground-truth masks, on the host (numpy / scipy).

SAMIC learns from point prompts placed with its SAMBOX tool (papers/samic.md §3.1, App. B);
the benchmarks' datasets only have masks, and how the paper obtained points for them is in
its unavailable supplement. Two derivations:

- `interior_points` (default, `method="interior"`): one point per 8-connected component of
  the mask, the pixel farthest from the component's boundary (largest Euclidean distance
  transform; the image border counts as boundary). Deterministic.
- `sam_greedy_points` (`method="sam_greedy"`, SAMBOX-like): start from no points and
  greedily add the candidate that most raises the frozen SAM's IoU with the mask, until the
  gain falls below `min_gain` or `max_points` are placed. Candidates: the interior point of
  each connected component of the current false-negative region (mask minus prediction),
  plus optional random pixels of it (seeded). Only positive points, as SAMIC predicts.
  All points go to SAM in one call (SAMBOX calls SAM once per object and unites the masks,
  which needs instance masks the semantic benchmarks do not have). The result depends only
  on (image, mask, SAM, options), so it can be computed once per image and cached
  (`PointCache`).

`add_points` turns an episode batch's `support_annotations` / `query_mask` into SAMIC's
`support_points`, `support_point_valid`, `query_points`, `query_point_valid`.
Points are (x, y) float32 pixel coordinates of the mask they come from (column, row).
"""

import functools
import hashlib
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
from scipy import ndimage

from jaxvrp import paths

EIGHT = np.ones((3, 3), bool)  # 8-connectivity, as the heat-map components
METHODS = ("interior", "sam_greedy")

# predict(points (n, 2) float32 (x, y), labels (n,) int32) -> bool mask (H, W) of the image
PredictFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _check_mask(mask) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be (H, W), got shape {mask.shape}")
    return mask > 0


def interior_points(mask, *, max_points: int, min_area: int = 1) -> np.ndarray:
    """One point per 8-connected component (largest components first, at most `max_points`;
    components under `min_area` pixels are skipped): the component pixel with the largest
    Euclidean distance to the background, the outside of the image included (first in
    raster order on ties). mask (H, W) -> (n, 2) float32 (x, y), n <= max_points."""
    mask = _check_mask(mask)
    labels, n = ndimage.label(mask, structure=EIGHT)
    if n == 0 or max_points <= 0:
        return np.zeros((0, 2), np.float32)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-areas, kind="stable")  # ties: the lower label (earlier first pixel)
    boxes = ndimage.find_objects(labels)
    out = []
    for c in order:
        if areas[c] < min_area or len(out) == max_points:
            break
        sy, sx = boxes[c]
        comp = np.pad(labels[sy, sx] == c + 1, 1)  # zero border: the image edge is boundary
        dist = ndimage.distance_transform_edt(comp)
        y, x = np.unravel_index(np.argmax(dist), dist.shape)
        out.append((x - 1 + sx.start, y - 1 + sy.start))
    return np.asarray(out, np.float32).reshape(-1, 2)


def iou(pred: np.ndarray, mask: np.ndarray) -> float:
    """IoU of two bool masks; two empty masks have IoU 1."""
    union = np.logical_or(pred, mask).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, mask).sum() / union)


def sam_greedy_points(
    mask,
    predict: PredictFn,
    *,
    max_points: int,
    min_gain: float = 0.01,
    max_candidates: int = 8,
    num_random: int = 0,
    seed: int | Sequence[int] = 0,
) -> tuple[np.ndarray, list[float]]:
    """SAMBOX-like points: greedily add the candidate that most raises SAM's IoU.

    mask (H, W); predict(points, labels) -> bool (H, W) (e.g. `make_sam_predict`). Each step
    tries the interior points (`interior_points`) of the `max_candidates` largest components
    of the false-negative region, plus `num_random` pixels drawn from it
    (`np.random.default_rng(seed)`, seed an int or a sequence of ints), keeps the best if it
    raises the IoU by at least `min_gain` (> 0), else stops. Returns the points (n, 2)
    float32 (x, y) and the IoU after each accepted point (non-decreasing by construction).
    """
    if min_gain <= 0:
        raise ValueError(f"min_gain must be > 0 (it guarantees termination), got {min_gain}")
    mask = _check_mask(mask)
    rng = np.random.default_rng(seed)
    points = np.zeros((0, 2), np.float32)
    pred = np.zeros_like(mask)
    current, history = 0.0, []
    while len(points) < max_points:
        missed = mask & ~pred
        cands = interior_points(missed, max_points=max_candidates)
        if num_random and missed.any():
            ys, xs = np.nonzero(missed)
            pick = rng.choice(len(xs), size=min(num_random, len(xs)), replace=False)
            cands = np.concatenate([cands, np.stack([xs[pick], ys[pick]], 1).astype(np.float32)])
        if len(cands) == 0:
            break
        best, best_iou, best_pred = None, -1.0, None
        for c in cands:
            trial = np.concatenate([points, c[None]])
            p = np.asarray(predict(trial, np.ones(len(trial), np.int32)), bool)
            score = iou(p, mask)
            if score > best_iou:
                best, best_iou, best_pred = trial, score, p
        if best_iou - current < min_gain:
            break
        points, current, pred = best, best_iou, best_pred
        history.append(current)
    return points, history


@functools.cache
def _sam_fns():
    """SAM's encoder and a points-only decoder, jitted once per process."""
    import jax
    import jax.numpy as jnp

    from jaxvrp.image import resize_bilinear
    from jaxvrp.sam import model as sam_model

    encode = jax.jit(sam_model.encode_image, static_argnames="config")

    @partial(jax.jit, static_argnames=("config", "size", "multimask_output"))
    def decode(sam_params, emb, points, labels, *, config, size, multimask_output):
        low, scores = sam_model.predict_masks(
            sam_params,
            emb,
            config=config,
            points=points[None],
            point_labels=labels[None],
            multimask_output=multimask_output,
        )
        low = low[0, jnp.argmax(scores[0])]  # the single mask, or the best of three
        return resize_bilinear(low, size, align_corners=True, channels_last=False) > 0

    def prepare(image, s):
        return resize_bilinear(jnp.asarray(image)[None], (s, s), align_corners=True)

    return encode, decode, prepare


def make_sam_predict(sam_params, image: np.ndarray, *, config, multimask_output: bool = False):
    """A `PredictFn` for one ImageNet-normalised image (H, W, 3) and a frozen SAM: the image
    is resized (bilinear, align_corners=True) to SAM's input and encoded once; points are
    scaled into SAM's frame the same way; the logits are resized back and thresholded at 0.
    With `multimask_output` the mask of highest predicted IoU is taken."""
    encode, decode, prepare = _sam_fns()
    image = np.asarray(image, np.float32)
    h, w = image.shape[:2]
    s = config.image_size
    emb = encode(sam_params, prepare(image, s), config=config)
    scale = np.array([(s - 1) / max(w - 1, 1), (s - 1) / max(h - 1, 1)], np.float32)

    def predict(points, labels):
        pts = np.asarray(points, np.float32).reshape(-1, 2) * scale
        out = decode(
            sam_params,
            emb,
            pts,
            np.asarray(labels, np.int32),
            config=config,
            size=(h, w),
            multimask_output=multimask_output,
        )
        return np.asarray(out)

    return predict


def pad_points(points: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) -> (max_points, 2) float32 zero-padded, valid (max_points,) bool."""
    points = np.asarray(points, np.float32).reshape(-1, 2)[:max_points]
    out = np.zeros((max_points, 2), np.float32)
    out[: len(points)] = points
    return out, np.arange(max_points) < len(points)


class PointCache:
    """Points per image on disk (`directory/<key>.npy`), for `sam_greedy`'s one-off cost.
    `key` should name the image, the method and its options (e.g. the image id and seed).
    The directory may be remote (`gs://...`) and shared by several processes: entries are
    written to per-process temporary names and renamed into place (`jaxvrp.paths`)."""

    def __init__(self, directory: str):
        self.directory = paths.as_path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str):
        return self.directory / (hashlib.sha1(key.encode()).hexdigest() + ".npy")

    def get(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        path = self._path(key)
        if path.exists():
            return paths.load_npy(path)
        points = np.asarray(compute(), np.float32).reshape(-1, 2)
        paths.save_npy(path, points)
        return points


def mask_points(
    mask,
    *,
    max_points: int,
    method: str = "interior",
    image: np.ndarray | None = None,
    sam_predict: Callable[[np.ndarray], PredictFn] | None = None,
    seed: int | Sequence[int] = 0,
    **options,
) -> np.ndarray:
    """Points of one mask by `method`; "sam_greedy" needs `image` and `sam_predict(image)
    -> PredictFn` (e.g. `functools.partial(make_sam_predict, sam_params, config=cfg)`)."""
    if method == "interior":
        return interior_points(mask, max_points=max_points, **options)
    if method == "sam_greedy":
        if sam_predict is None or image is None:
            raise ValueError("method='sam_greedy' needs the image and a sam_predict factory")
        if not _check_mask(mask).any():
            return np.zeros((0, 2), np.float32)
        pts, _ = sam_greedy_points(
            mask, sam_predict(image), max_points=max_points, seed=seed, **options
        )
        return pts
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def add_points(
    batch: dict,
    *,
    max_points: int,
    method: str = "interior",
    seed: int = 0,
    sam_predict: Callable[[np.ndarray], PredictFn] | None = None,
    **options,
) -> dict:
    """A copy of `batch` with SAMIC's point keys derived from its masks (host numpy):

    - `support_points` (B, K, P, 2) float32 and `support_point_valid` (B, K, P) bool from
      `support_annotations` (B, K, H, W) (reference *mask* annotations);
    - `query_points` (B, P, 2) and `query_point_valid` (B, P) from `query_mask` (B, H, W),
      when the batch has one (the training target).

    P = `max_points`; each mask gets its own seed (`seed` + its position in the batch).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    ann = np.asarray(batch["support_annotations"])
    if ann.ndim != 4:
        raise ValueError(f"support_annotations must be (B, K, H, W), got shape {ann.shape}")
    b, k = ann.shape[:2]
    out = dict(batch)
    sp = np.zeros((b, k, max_points, 2), np.float32)
    sv = np.zeros((b, k, max_points), bool)
    images = batch.get("support_images")
    for i in range(b):
        for j in range(k):
            pts = mask_points(
                ann[i, j],
                max_points=max_points,
                method=method,
                image=None if images is None else np.asarray(images[i, j]),
                sam_predict=sam_predict,
                seed=seed + i * k + j,
                **options,
            )
            sp[i, j], sv[i, j] = pad_points(pts, max_points)
    out["support_points"], out["support_point_valid"] = sp, sv
    if "query_mask" in batch:
        qm = np.asarray(batch["query_mask"])
        qp = np.zeros((b, max_points, 2), np.float32)
        qv = np.zeros((b, max_points), bool)
        for i in range(b):
            pts = mask_points(
                qm[i],
                max_points=max_points,
                method=method,
                image=np.asarray(batch["query_image"][i]),
                sam_predict=sam_predict,
                seed=seed + b * k + i,
                **options,
            )
            qp[i], qv[i] = pad_points(pts, max_points)
        out["query_points"], out["query_point_valid"] = qp, qv
    return out
