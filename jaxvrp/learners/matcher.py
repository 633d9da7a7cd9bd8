"""Matcher: one-shot segmentation by matching reference and target features, prompting SAM.

Ported from the official code (aim-uofa/Matcher: `matcher/Matcher.py`, its modified
`segment_anything/automatic_mask_generator.py`, `matcher/k_means.py`, the defaults of
`main_oss.py` and the per-dataset flags of `scripts/*.sh`). A learner with empty params,
`name="matcher"`; `docs/matcher.md` lists every mapping choice.

    config = make_config(sam="vit_h", encoder="dinov2", preset="coco")
    logits = apply({}, {"sam": sam_params, "backbone": dinov2_params}, batch, config=config,
                   rng=jax.random.key(0))                 # (B, H, W), fg where > 0

Per query image (official `Matcher.predict`):
1. Features (`extract_img_feats`): the reference and target images through the matching
   encoder, patch tokens L2-normalised. `encoder="dinov2"` (the paper's): our DINOv2 port at
   `input_size` (518, 37 x 37 patches), tokens before the final norm (`layer4` = official
   `x_prenorm`); `encoder="sam"`: SAM's own image embedding (64 x 64 cells of 16 pixels).
   Reference masks: nearest-resized to the encoder input, an all-empty set of references
   gets a 14 x 14 centre square (`reference_masks_verification`), average-pooled per patch,
   > 0 (SAM's `mask_threshold`).
2. Matching (`patch_level_matching`, host side with scipy as officially): S = ref @ tar^T,
   forward Hungarian assignment of the masked reference patches to target patches
   (maximising S), reverse assignment of the matched target patches to all reference
   patches; forward matches whose reverse partner lies outside the reference mask are
   dropped (unless that drops all); the best half by similarity is kept when more than 40
   remain; their unique target patches, as patch-centre pixels, are the points.
3. Prompts (`RobustPromptSampler.sample_points`): for each subset size i in `sample_range`
   (clipped to the number of points n), `max_sample_iterations` random i-subsets when
   n > 8, else every i-combination (the official recursive order); with
   `use_points_or_centers=False` the points are first replaced by `num_centers` k-means++
   centres (`clustering`). Optional box of the points (`use_box`).
4. SAM (`SamAutomaticMaskGenerator.generate`): all prompt subsets, and with `use_dense_mask`
   the `points_per_side`^2 grid of single points, decoded on the query's one embedding in
   one jitted call (`lax.map` in chunks of `points_per_batch`); masks post-processed to the
   query size; per-batch filters of the generator: predicted IoU > threshold, stability
   score >= threshold (offset 1), then box NMS over all masks (`box_nms_thresh`, scores =
   predicted IoU), on the host.
5. Scoring (`get_mask_scores`, host side): EMD between the reference-mask features and the
   mask's features (INTER_AREA-resized to the patch grid) with cost (1 - S) / 2 and uniform
   weights (POT's exact `ot.emd2`), score 1 - EMD; purity = points in mask / mask patches,
   coverage = points in mask / all points. score = alpha * emd + beta * purity *
   coverage^exp; coverage / emd / purity filters; then either the "score filter"
   (distances 1 - score, sorted, < `deep_score_filter` (the best always), normalised
   < `deep_score_norm_filter`, at most `num_merging_mask`) or the top-`num_merging_mask`
   with normalised score > `topk_scores_threshold`; the union of the chosen masks.

Official hyper-parameters (`PRESETS`): "coco" = `scripts/coco.sh` (also `lvis.sh`, the same
flags) over `main_oss.py`'s defaults; "fss" = `scripts/fss.sh`. `main_oss.py` defaults:
points_per_side 64, pred_iou_thresh 0.88, stability_score_thresh 0.95, sel_stability 0.0,
iou_filter 0.0, box_nms_thresh 1.0, output_layer 3, dense_multimask_output 0,
use_dense_mask 0, multimask_output 0, num_centers 8, use_box off, use_points_or_centers
off, sample_range (4, 6), max_sample_iterations 30, alpha 1, beta 0, exp 0, emd / purity /
coverage filters 0, use_score_filter off, deep_score_norm_filter 0.1, deep_score_filter
0.33, topk_scores_threshold 0.7, num_merging_mask 10; `build_matcher_oss`:
points_per_batch 64, stability_score_offset 1.0. coco.sh / lvis.sh: max_sample_iterations 64,
box_nms_thresh 0.65, sample_range (1, 6), topk_scores_threshold 0.0, use_dense_mask 1,
use_points_or_centers, purity_filter 0.02, iou_filter 0.85, multimask_output 1,
sel_stability_score_thresh 0.90, use_score_filter, alpha 1 beta 0 exp 0,
num_merging_mask 9. fss.sh: max_sample_iterations 30, sample_range (4, 6),
multimask_output 0, alpha 0.8 beta 0.2 exp 1, num_merging_mask 10.

Mapping onto the batch (the official code runs at 518 x 518 for everything):
- The batch images (B, H, W) are the query frame; SAM sees them as every jaxvrp learner
  feeds it (`frozen_sam`), DINOv2 resized (bilinear, align_corners=True) to `input_size`.
  Points are patch centres in the encoder's input frame, scaled by W / input_size and
  H / input_size to the query frame (identity at the official H = W = 518). With the SAM
  encoder the input frame is SAM's input (S, cells of S / grid pixels).
- Randomness: the official code seeds Python's global `random` once per run
  (`fix_randseed(0)`) and draws on across episodes; here each example's subsets come from a
  `random.Random` seeded by its own key (`rng`, per episode), so an episode gets the same
  prompts whatever its position; k-means++ uses a numpy generator instead of torch's.
- The generator's crop-edge filter is a no-op for the single full-image crop Matcher uses
  and is left out. Where the official code fails (no mask survives the generator's filters:
  `torch.cat` of an empty list; nothing passes the merge), the result is an empty mask.
- Output: the merged binary mask as logits +1 / -1 (the official output is binary).
- K shots: reference patches of all shots are pooled (the official `ns * N` rows).
"""

import dataclasses
import math
import random
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvrp import backbones
from jaxvrp.backbones.dinov2 import Dinov2Config
from jaxvrp.image import resize_bilinear
from jaxvrp.learners import frozen_sam, registry
from jaxvrp.learners.protocol import FrozenSpec, Learner, no_params, per_example
from jaxvrp.sam import config as sam_config
from jaxvrp.sam import model as sam_model
from jaxvrp.sam.transforms import postprocess_masks

Params = dict[str, Any]

ENCODERS = ("dinov2", "sam")
_MAIN_OSS = dict(  # main_oss.py's argparse defaults (and build_matcher_oss's constants)
    points_per_side=64,
    points_per_batch=64,
    pred_iou_thresh=0.88,
    stability_score_thresh=0.95,
    stability_score_offset=1.0,
    sel_stability_score_thresh=0.0,
    iou_filter=0.0,
    box_nms_thresh=1.0,
    output_layer=3,
    dense_multimask_output=0,
    use_dense_mask=False,
    multimask_output=False,
    num_centers=8,
    use_box=False,
    use_points_or_centers=False,
    sample_range=(4, 6),
    max_sample_iterations=30,
    alpha=1.0,
    beta=0.0,
    exp=0.0,
    emd_filter=0.0,
    purity_filter=0.0,
    coverage_filter=0.0,
    use_score_filter=False,
    deep_score_norm_filter=0.1,
    deep_score_filter=0.33,
    topk_scores_threshold=0.7,
    num_merging_mask=10,
)
_COCO = dict(  # scripts/coco.sh (scripts/lvis.sh passes the same flags)
    max_sample_iterations=64,
    box_nms_thresh=0.65,
    sample_range=(1, 6),
    topk_scores_threshold=0.0,
    use_dense_mask=True,
    use_points_or_centers=True,
    purity_filter=0.02,
    iou_filter=0.85,
    multimask_output=True,
    sel_stability_score_thresh=0.90,
    use_score_filter=True,
    alpha=1.0,
    beta=0.0,
    exp=0.0,
    num_merging_mask=9,
)
_FSS = dict(  # scripts/fss.sh
    max_sample_iterations=30,
    sample_range=(4, 6),
    multimask_output=False,
    alpha=0.8,
    beta=0.2,
    exp=1.0,
    num_merging_mask=10,
)
PRESETS = {
    "main_oss": _MAIN_OSS,
    "coco": {**_MAIN_OSS, **_COCO},
    "lvis": {**_MAIN_OSS, **_COCO},
    "fss": {**_MAIN_OSS, **_FSS},
}
_SEL_LAYERS = (-1, 0, 1, 2, 3, 4, 5)  # output_layer: 0-2 one mask, 3-5 masks[l-3:], else all


@dataclasses.dataclass(frozen=True)
class MatcherConfig:
    sam: sam_config.SamConfig
    encoder: str = "dinov2"  # "dinov2" (the paper's) or "sam" (SAM's own image embedding)
    dinov2: Dinov2Config | None = None  # the DINOv2 when encoder == "dinov2"
    input_size: int = 518  # --img-size 518 (DINOv2 input side; the SAM encoder: its own)
    seed: int = 0  # the prompts' seed when apply gets no rng
    # SamAutomaticMaskGenerator (build_matcher_oss)
    points_per_side: int = 64
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    sel_stability_score_thresh: float = 0.0
    iou_filter: float = 0.0  # sel_pred_iou_thresh
    box_nms_thresh: float = 1.0
    output_layer: int = 3  # sel_output_layer
    dense_multimask_output: int = 0  # the dense grid's multimask flag and output_layer
    use_dense_mask: bool = False
    multimask_output: bool = False  # sel_multimask_output
    # Matcher
    num_centers: int = 8
    use_box: bool = False
    use_points_or_centers: bool = False  # True: the matched points; False: k-means++ centres
    sample_range: tuple[int, int] = (4, 6)
    max_sample_iterations: int = 30
    alpha: float = 1.0
    beta: float = 0.0
    exp: float = 0.0
    emd_filter: float = 0.0
    purity_filter: float = 0.0
    coverage_filter: float = 0.0
    use_score_filter: bool = False
    deep_score_norm_filter: float = 0.1
    deep_score_filter: float = 0.33
    topk_scores_threshold: float = 0.7
    num_merging_mask: int = 10

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.encoder == "dinov2":
            if not isinstance(self.dinov2, Dinov2Config):
                raise ValueError(f"encoder='dinov2' needs a DINOv2 config, got {self.dinov2!r}")
            if self.input_size % self.dinov2.patch_size:
                raise ValueError(
                    f"input_size {self.input_size} is not a multiple of the DINOv2 patch "
                    f"size {self.dinov2.patch_size}"
                )
        elif self.dinov2 is not None:
            raise ValueError("dinov2 is the encoder='dinov2' option; encoder='sam' reads none")
        lo, hi = self.sample_range
        if not 1 <= lo <= hi:
            raise ValueError(f"sample_range must be (lo, hi) with 1 <= lo <= hi, got {lo, hi}")
        for name in ("points_per_side", "points_per_batch", "max_sample_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_centers < 1 or self.num_merging_mask < 1:
            raise ValueError("num_centers and num_merging_mask must be >= 1")
        if self.output_layer not in _SEL_LAYERS or self.dense_multimask_output not in _SEL_LAYERS:
            raise ValueError(
                f"output_layer / dense_multimask_output must be one of {_SEL_LAYERS}, got "
                f"{self.output_layer} / {self.dense_multimask_output}"
            )

    @property
    def patch(self) -> int:
        """Pixels per matching patch in the encoder's input frame."""
        if self.encoder == "dinov2":
            return self.dinov2.patch_size
        return self.sam.image_size // self.sam.embedding_size

    @property
    def frame(self) -> int:
        """The encoder's input side (the frame of the matched points)."""
        return self.input_size if self.encoder == "dinov2" else self.sam.image_size

    @property
    def grid(self) -> int:
        """Patches per side of the matching grid."""
        return self.frame // self.patch


def make_config(
    sam: str = "vit_h",
    sam_dtype: str = "float32",
    encoder: str | None = None,
    dinov2: str = "dinov2_vitl14",
    preset: str = "coco",
    backbone: str | None = None,
    **options: Any,
) -> MatcherConfig:
    """Matcher's config: SAM variant (official ViT-H), matching encoder (default "dinov2",
    the paper's), a preset of the official hyper-parameters ("coco" = coco.sh, "lvis" =
    lvis.sh, "fss" = fss.sh, "main_oss" = main_oss.py's bare defaults) and overrides.

    `backbone` (what `jaxvrp segment` fills in, `docs/segment.md`) names the encoder as a
    backbone arch instead: "sam_<variant>" (the SAM's own encoder) is encoder="sam", a
    DINOv2 arch is encoder="dinov2" with that DINOv2; so `jaxvrp segment --method matcher`
    matches with the SAM alone unless `--backbone DIR` gives a DINOv2.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(MatcherConfig)}
    unknown = sorted(set(options) - fields)
    if unknown or {"sam", "dinov2", "encoder"} & set(options):
        raise TypeError(f"unknown Matcher options {unknown}; known: {sorted(fields)}")
    if encoder is not None and encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
    if backbone is not None:
        named = "sam" if backbone.startswith("sam_") else "dinov2"
        if encoder is not None and encoder != named:
            raise ValueError(
                f"encoder={encoder!r} conflicts with backbone={backbone!r} (encoder='dinov2' "
                "needs a DINOv2 backbone: jaxvrp segment --backbone DIR)"
            )
        if named == "sam" and backbone != f"sam_{sam}":
            raise ValueError(f"backbone={backbone!r} is not the SAM's encoder (sam_{sam})")
        encoder, dinov2 = named, dinov2 if named == "sam" else backbone
    encoder = "dinov2" if encoder is None else encoder
    values = {**PRESETS[preset], **options}
    values["sample_range"] = tuple(int(v) for v in values["sample_range"])
    dcfg = None
    if encoder == "dinov2":
        dcfg = backbones.get_config(dinov2)
        if not isinstance(dcfg, Dinov2Config):
            raise ValueError(f"dinov2={dinov2!r} is not a DINOv2 backbone")
        values.setdefault("input_size", dcfg.img_size)
    return MatcherConfig(
        sam_config.get_config(sam, dtype=sam_dtype), encoder=encoder, dinov2=dcfg, **values
    )


# ----------------------------------------------------------------------------- host: matching


def _combinations(n: int, k: int) -> list[list[int]]:
    """Official `RobustPromptSampler.combinations` (its recursive order)."""
    if k > n:
        return []
    if k == 0:
        return [[]]
    if k == n:
        return [list(range(n))]
    return [c + [i] for i in range(n) for c in _combinations(i, k - 1)]


def sample_points(points: np.ndarray, config: MatcherConfig, rnd: random.Random) -> dict:
    """Official `sample_points`: points (n, 2) -> {i: subsets (G_i, i, 2)} for each subset
    size i (Python `random.sample` draws when n > 8, else every combination)."""
    n = len(points)
    lo, hi = config.sample_range
    out = {}
    for i in range(min(lo, n), min(hi, n) + 1):
        if n > 8:
            index = [rnd.sample(range(n), i) for _ in range(config.max_sample_iterations)]
        else:
            index = _combinations(n, i)
        out[i] = np.take(points, np.asarray(index, np.int64).reshape(len(index), i), axis=0)
    return out


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator, max_iters: int = 100):
    """Official `k_means.kmeans_pp` in numpy (float32): centres (k, 2), assignment (n,).
    The draws (first centre, then D^2 sampling) come from `rng` instead of torch's."""
    x = np.asarray(x, np.float32)
    dist = lambda c: np.sqrt(((x[:, None, :] - c[None, :, :]) ** 2).sum(-1))  # torch.cdist
    centers = x[rng.integers(len(x), size=1)]
    for _ in range(k - 1):
        d = dist(centers).min(axis=1) + 1e-6
        p = d**2 / np.sum(d**2)
        centers = np.concatenate([centers, x[rng.choice(len(x), 1, p=p / p.sum())]])
    assign = np.zeros(len(x), np.int64)
    for _ in range(max_iters):
        assign = np.argmin(dist(centers), axis=1)
        new = np.stack(
            [x[assign == j].mean(axis=0) if (assign == j).any() else centers[j] for j in range(k)]
        ).astype(np.float32)
        if np.array_equal(new, centers):
            break
        centers = new
    return centers, assign


def clustering(points: np.ndarray, config: MatcherConfig, rng: np.random.Generator):
    """Official `clustering`: k-means++ until every one of min(num_centers, n) clusters is
    used; the centres as int64 pixels (truncated)."""
    k = min(config.num_centers, len(points))
    while True:
        centers, assign = kmeans_pp(points, k, rng)
        if len(np.unique(assign)) == k:
            return np.asarray(centers).astype(np.int64)


def patch_matching(s: np.ndarray, pool: np.ndarray, config: MatcherConfig):
    """Official `patch_level_matching` on the similarity S (K*N, N) float32 and the
    reference patches pool (K*N,) bool: the matched points (n, 2) int (x, y) in the
    encoder's input frame, and the box of the points (4,)."""
    from scipy.optimize import linear_sum_assignment

    g, p, frame = config.grid, config.patch, config.frame
    s_fwd = s[pool]
    rows, cols = linear_sum_assignment(s_fwd, maximize=True)
    sim = s_fwd[rows, cols]
    mask_idx = np.nonzero(pool)[0]
    _, cols_rev = linear_sum_assignment(s.T[cols], maximize=True)
    retain = np.isin(cols_rev, mask_idx)
    if retain.any():
        cols, sim = cols[retain], sim[retain]
    reduced = len(sim) // 2 if len(sim) > 40 else len(sim)
    order = np.argsort(-sim, kind="stable")[:reduced]
    inds = list(set(cols[order].tolist()))  # the official set() (its iteration order)
    xs = [(i % g) * p + p // 2 for i in inds]
    ys = [(i // g) * p + p // 2 for i in inds]
    points = np.array(
        [[x, y] for x, y in zip(xs, ys, strict=True) if x < frame and y < frame], np.int64
    )
    box = np.array(
        [
            max(points[:, 0].min(), 0),
            max(points[:, 1].min(), 0),
            min(points[:, 0].max(), frame - 1),
            min(points[:, 1].max(), frame - 1),
        ],
        np.float32,
    )
    return points, box


def group_slots(config: MatcherConfig) -> dict[int, int]:
    """The fixed number of prompt slots for each subset size (the most `sample_points` can
    give: `max_sample_iterations` draws or C(8, i) combinations)."""
    lo, hi = config.sample_range
    m = config.max_sample_iterations
    return {i: max(m, math.comb(8, i)) for i in range(1, hi + 1)}


def _host_prompts(s, pool, seeds, config: MatcherConfig):
    """pure_callback body: S (B, K*N, N), pool (B, K*N), seeds (B,) -> all points
    (B, N, 2) float32 with their count (B,), box (B, 4), and per subset size i prompts
    (B, slots_i, i, 2) with valid (B, slots_i)."""
    s, pool, seeds = np.asarray(s), np.asarray(pool), np.asarray(seeds)
    b, n_max = s.shape[0], s.shape[2]
    slots = group_slots(config)
    all_pts = np.zeros((b, n_max, 2), np.float32)
    count = np.zeros((b,), np.int32)
    boxes = np.zeros((b, 4), np.float32)
    prompts = {i: np.zeros((b, c, i, 2), np.float32) for i, c in slots.items()}
    valid = {i: np.zeros((b, c), bool) for i, c in slots.items()}
    for j in range(b):
        points, boxes[j] = patch_matching(s[j], pool[j], config)
        all_pts[j, : len(points)], count[j] = points, len(points)
        seed = int(seeds[j])
        if not config.use_points_or_centers:
            points = clustering(points, config, np.random.default_rng(seed))
        for i, sub in sample_points(points, config, random.Random(seed)).items():
            prompts[i][j, : len(sub)], valid[i][j, : len(sub)] = sub, True
    return all_pts, count, boxes, prompts, valid


# ----------------------------------------------------------------------------- host: scoring


def box_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
    """torchvision `batched_nms` with one category: indices kept, by decreasing score; a box
    is dropped when its IoU with a kept higher-scoring box is > thresh."""
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    suppressed = np.zeros(len(boxes), bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        lt = np.maximum(boxes[i, :2], boxes[:, :2])
        rb = np.minimum(boxes[i, 2:], boxes[:, 2:])
        inter = np.clip(rb - lt, 0, None).prod(axis=1)
        # two empty boxes give 0/0 = NaN, never > thresh: not suppressed, as in torchvision's
        # kernel (empty masks reach here when the quality filters are off)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (area[i] + area - inter)
        suppressed |= iou > thresh
    return np.asarray(keep, np.int64)


def emd_score(cost: np.ndarray, pool: np.ndarray, cells: np.ndarray) -> float:
    """1 - EMD (POT's exact `ot.emd2`, uniform weights) from the reference patches `pool`
    to the mask's patches `cells` under cost (K*N, N) = (1 - S) / 2."""
    import ot

    m = cost[pool][:, cells]
    a = [1.0 / m.shape[0]] * m.shape[0]
    b = [1.0 / m.shape[1]] * m.shape[1]
    return 1.0 - float(ot.emd2(a=a, b=b, M=m))


def mask_scores(cells: np.ndarray, n_in: int, n_points: int, cost, pool):
    """Official `get_mask_scores` for one mask: its area-resized patch grid `cells` (N,)
    float (an empty mask keeps every patch: the official threshold max - 1e-6), the number
    of matched points inside it -> purity, coverage, emd (float32 as the official tensors)."""
    cells = cells > (cells.max() - 1e-6 if cells.max() <= 0 else 0)
    emd = emd_score(cost, pool, cells)
    purity = n_in / max(float(cells.sum()), 1.0)
    coverage = n_in / n_points
    return np.float32(np.float32(purity) + 1e-6), np.float32(np.float32(coverage) + 1e-6), emd


def select_masks(
    cells: np.ndarray, n_in: np.ndarray, n_points: int, cost, pool, config: MatcherConfig
) -> np.ndarray:
    """Official `mask_generation` after the generator: masks (their patch grids (M, N) and
    points inside (M,)) in the generator's order -> indices of the masks to merge."""
    m = len(cells)
    if m == 0:
        return np.zeros((0,), np.int64)
    purity, coverage, emd = (np.zeros(m, np.float32) for _ in range(3))
    for i in range(m):
        purity[i], coverage[i], emd[i] = mask_scores(cells[i], n_in[i], n_points, cost, pool)
    f32 = np.float32
    scores = f32(config.alpha) * emd + f32(config.beta) * purity * coverage ** f32(config.exp)
    metrics = {"coverage": coverage, "emd": emd, "purity": purity}
    idx = np.arange(m)
    for name in ("coverage", "emd", "purity"):
        thresh = getattr(config, f"{name}_filter")
        if thresh > 0:
            keep = np.nonzero(metrics[name] >= min(f32(thresh), metrics[name].max()))[0]
            scores, idx = scores[keep], idx[keep]
            metrics = {k: v[keep] for k, v in metrics.items()}
    if config.use_score_filter:
        dist = f32(1) - scores
        rank = np.argsort(dist, kind="stable")
        dist = dist[rank]
        norm = (dist - dist.min()) / (dist.max() + f32(1e-6))
        ok = dist < f32(config.deep_score_filter)
        ok[0] = True
        ok &= norm < f32(config.deep_score_norm_filter)
        return idx[rank[ok][: config.num_merging_mask]]
    k = min(config.num_merging_mask, len(scores))
    top = np.argsort(-scores, kind="stable")[:k]
    top_scores = scores[top]
    if config.topk_scores_threshold > 0:
        top_scores = top_scores / top_scores.max()
    return idx[top[top_scores > config.topk_scores_threshold]]


def _host_select(iou, stab, valid, dense, boxes, cells, n_in, count, s, pool, config):
    """pure_callback body: the generator's filters and NMS, then the scoring and merge, per
    image -> chosen (B, M) bool."""
    iou, stab, valid, boxes, cells, n_in = map(np.asarray, (iou, stab, valid, boxes, cells, n_in))
    dense, count, s, pool = np.asarray(dense), np.asarray(count), np.asarray(s), np.asarray(pool)
    chosen = np.zeros(valid.shape, bool)
    for j in range(valid.shape[0]):
        keep = valid[j].copy()
        thr_iou = np.where(dense, config.pred_iou_thresh, config.iou_filter)
        thr_stab = np.where(dense, config.stability_score_thresh, config.sel_stability_score_thresh)
        keep &= np.where(thr_iou > 0, iou[j] > thr_iou, True)
        with np.errstate(invalid="ignore"):
            keep &= np.where(thr_stab > 0, stab[j] >= thr_stab, True)
        ids = np.nonzero(keep)[0]
        ids = ids[box_nms(boxes[j, ids], iou[j, ids], config.box_nms_thresh)]
        cost = (1 - s[j]) / 2
        pick = select_masks(
            cells[j, ids].reshape(len(ids), -1 if len(ids) else 0),
            n_in[j, ids],
            int(count[j]),
            cost,
            pool[j],
            config,
        )
        chosen[j, ids[pick]] = True
    return chosen


# ----------------------------------------------------------------------------- device side


def area_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of OpenCV's INTER_AREA downscaling (each output cell the
    area-weighted mean of the input pixels it covers; overlaps under 1e-3 pixel are
    dropped, as OpenCV's table)."""
    scale = src / dst
    w = np.zeros((dst, src), np.float64)
    for d in range(dst):
        a, b = d * scale, (d + 1) * scale
        for sidx in range(int(math.floor(a)), min(int(math.ceil(b)), src)):
            ov = min(b, sidx + 1) - max(a, sidx)
            if ov > 1e-3:
                w[d, sidx] = ov / scale
    return w


def reference_pool(annotations: jax.Array, config: MatcherConfig) -> jax.Array:
    """Binary references (B, K, H, W) -> the reference patches (B, K * g * g) bool: nearest
    resize to the encoder frame, the official centre square when all K are empty, average
    pool per patch > 0."""
    b, k, h, w = annotations.shape
    f, g, p = config.frame, config.grid, config.patch
    ys = jnp.floor(jnp.arange(f) * (h / f)).astype(jnp.int32)  # torch "nearest"
    xs = jnp.floor(jnp.arange(f) * (w / f)).astype(jnp.int32)
    m = (annotations > 0)[:, :, ys][:, :, :, xs]
    square = jnp.zeros((f, f), bool).at[f // 2 - 7 : f // 2 + 7, f // 2 - 7 : f // 2 + 7].set(True)
    empty = ~m.any(axis=(1, 2, 3))
    m = jnp.where(empty[:, None, None, None], square, m)
    pooled = m[:, :, : g * p, : g * p].reshape(b, k, g, p, g, p).any(axis=(3, 5))
    return pooled.reshape(b, k * g * g)


def features(frozen: Params, images: jax.Array, config: MatcherConfig, emb=None) -> jax.Array:
    """ImageNet-normalised images (N, H, W, 3) -> L2-normalised matching features (N, g*g, C)
    (`emb`: the images' SAM embeddings when already computed)."""
    if config.encoder == "dinov2":
        s = config.input_size
        x = resize_bilinear(images, (s, s), align_corners=True)
        f = backbones.apply(frozen["backbone"], x, config=config.dinov2, stop="layer4")["layer4"]
    else:
        f = frozen_sam.image_embeddings(frozen["sam"], images, config.sam) if emb is None else emb
    f = f.reshape(f.shape[0], -1, f.shape[-1])
    return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)  # F.normalize


def _layers(masks, iou, multimask_flag: bool, layer: int):
    """The generator's output-layer choice (applied only when `sel_multimask_output`, also
    for the dense grid: an official quirk)."""
    if multimask_flag and layer in (0, 1, 2):
        return masks[:, layer : layer + 1], iou[:, layer : layer + 1]
    if multimask_flag and layer in (3, 4, 5):
        return masks[:, layer - 3 :], iou[:, layer - 3 :]
    return masks, iou


def _mask_stats(logits, points, count, out_size, config: MatcherConfig):
    """Full-size logits (L, H, W) -> binary masks, stability (L,), inclusive boxes (L, 4)
    (`batched_mask_to_box`), INTER_AREA patch grids (L, g, g) and points inside (L,)."""
    h, w = out_size
    thr, off = 0.0, config.stability_score_offset  # Sam.mask_threshold = 0
    inter = (logits > thr + off).sum(axis=(1, 2)).astype(jnp.float32)
    union = (logits > thr - off).sum(axis=(1, 2)).astype(jnp.float32)
    stab = inter / union
    masks = logits > thr
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    xs, ys = jnp.arange(w, dtype=jnp.float32), jnp.arange(h, dtype=jnp.float32)
    box = jnp.stack(
        [
            jnp.where(cols, xs, w).min(1),
            jnp.where(rows, ys, h).min(1),
            jnp.where(cols, xs, -1).max(1),
            jnp.where(rows, ys, -1).max(1),
        ],
        axis=1,
    )
    box = jnp.where(cols.any(1)[:, None], box, 0.0)
    g = config.grid
    wy, wx = (
        jnp.asarray(area_weights(h, g), jnp.float32),
        jnp.asarray(area_weights(w, g), jnp.float32),
    )
    hp = jax.lax.Precision.HIGHEST
    cells = jnp.einsum("gy,lyx,kx->lgk", wy, masks.astype(jnp.float32), wx, precision=hp)
    # is_in_mask: points in the query frame, truncated to int, clipped
    qx = jnp.clip((points[:, 0] * (w / config.frame)).astype(jnp.int32), 0, w - 1)
    qy = jnp.clip((points[:, 1] * (h / config.frame)).astype(jnp.int32), 0, h - 1)
    inside = masks[:, qy, qx] & (jnp.arange(points.shape[0]) < count)
    return masks, stab, box, cells, inside.sum(axis=1)


def skipping_map(fn, xs: jax.Array, ok: jax.Array, chunk: int):
    """`fn` (vmapped: (c, ...) -> pytree of (c, ...)) over `xs` (n, ...) in chunks of `chunk`,
    skipping (`lax.cond`, zeros out) every chunk with no `ok` (n,) entry. The prompt slots of a
    subset size are filled from the front and are mostly empty when the host draws fewer
    subsets than the slots hold (`group_slots`: C(8, i) for a few matched points, or a small
    `max_sample_iterations`), so only the chunks holding a drawn subset are decoded. Outputs
    of skipped chunks are zeros, and `ok` False there excludes them downstream."""
    n = xs.shape[0]
    c = max(1, min(chunk, n))
    pad = (-n) % c
    if pad:
        xs = jnp.concatenate([xs, jnp.zeros((pad, *xs.shape[1:]), xs.dtype)])
        ok = jnp.concatenate([ok, jnp.zeros((pad,), bool)])
    xs = xs.reshape(-1, c, *xs.shape[1:])
    ok = ok.reshape(-1, c)
    shapes = jax.eval_shape(fn, xs[0])

    def step(x):
        x, v = x
        skip = lambda _: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return jax.lax.cond(v.any(), fn, skip, x)

    out = jax.lax.map(step, (xs, ok))  # (chunks, c, ...)
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n], out)


def _decode_image(sam_params, emb, prompts, box, points, count, out_size, config):
    """One query: every prompt group decoded on its embedding emb (1, h, w, C); masks and
    statistics concatenated in the generator's order (dense grid, then sizes ascending,
    prompt-major, output-minor), with `dense` flags."""
    s = config.sam.image_size
    scale = s / config.frame
    outs = []

    def run(pts, ok, multimask, layer, with_box):
        def one(x):
            p = x[None]
            labels = jnp.ones(p.shape[:2], jnp.int32)
            bx = box[None] * scale if with_box else None
            low, iou = sam_model.predict_masks(
                sam_params,
                emb,
                config=config.sam,
                points=p * scale,
                point_labels=labels,
                boxes=bx,
                multimask_output=multimask,
            )
            low, iou = _layers(low, iou, config.multimask_output, layer)
            high = postprocess_masks(low, (s, s), out_size, s)[0]
            return (*_mask_stats(high, points, count, out_size, config), iou[0])

        r = skipping_map(jax.vmap(one), pts, ok, config.points_per_batch)
        return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), r)

    if config.use_dense_mask:
        n = config.points_per_side
        side = np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n)  # build_point_grid
        grid = np.stack([np.tile(side[None], (n, 1)), np.tile(side[:, None], (1, n))], -1)
        grid = jnp.asarray(grid.reshape(-1, 1, 2) * s, jnp.float32)  # already SAM's frame
        every = jnp.ones(grid.shape[0], bool)
        r = run(
            grid / scale,
            every,
            config.dense_multimask_output > 0,
            config.dense_multimask_output,
            False,
        )
        outs.append((r, jnp.ones(r[0].shape[0], bool), jnp.ones(r[0].shape[0], bool)))
    for i in sorted(prompts):
        pts, ok = prompts[i]
        r = run(pts, ok, config.multimask_output, config.output_layer, config.use_box)
        per = r[0].shape[0] // pts.shape[0]
        outs.append((r, jnp.repeat(ok, per), jnp.zeros(r[0].shape[0], bool)))
    cat = lambda k: jnp.concatenate([o[0][k] for o in outs])
    masks, stab, boxes, cells, n_in, iou = (cat(k) for k in range(6))
    valid = jnp.concatenate([o[1] for o in outs])
    dense = jnp.concatenate([o[2] for o in outs])
    return masks, stab, boxes, cells, n_in, iou, valid, dense


def _seeds(rng, b: int, config: MatcherConfig) -> jax.Array:
    """(B,) uint32 seeds of the host draws: from per-example keys, one key, or config.seed."""
    if rng is None:
        rng = jax.random.key(config.seed)
    if not per_example(rng):
        rng = jax.random.split(rng, b)
    return jax.vmap(lambda k: jax.random.bits(k, dtype=jnp.uint32))(rng)


def predict(frozen: Params, batch: dict, config: MatcherConfig, rng=None) -> dict:
    """Matcher on a batch: "logits" (B, H, W) (+1 in the merged mask, -1 outside),
    "points" (B, N, 2) the matched points in the encoder frame with "num_points" (B,),
    "chosen" (B, M) which of the M candidate masks were merged.

    With several devices and B a multiple of their number, the work runs as a `shard_map`
    over the batch on the tools' 1-D "data" mesh (`jaxvrp.loop`): each device's examples
    go through the host steps on their own host, with no cross-device traffic (a host
    callback on the gathered batch would serialise the whole batch on device 0). A batch
    sharded over several CPU devices is refused (their callbacks stall in XLA's CPU client).
    """
    support = batch["support_images"]
    ann = batch["support_annotations"]
    if support.ndim != 5 or ann.shape != support.shape[:4]:
        raise ValueError(
            f"support_images (B, K, H, W, 3) and support_annotations (B, K, H, W) disagree: "
            f"{support.shape} and {ann.shape}"
        )
    b = ann.shape[0]
    keys = ("query_image", "support_images", "support_annotations", "query_embedding")
    inputs = {k: batch[k] for k in keys if k in batch}
    seeds = _seeds(rng, b, config)
    n_dev = jax.device_count()
    if n_dev == 1 or b % n_dev:
        return _predict(frozen, inputs, seeds, config)
    if jax.default_backend() == "cpu":
        # XLA's CPU client runs a callback's device_put on the devices' own threads: with
        # the batch sharded over several CPU devices the callbacks stall (measured)
        raise ValueError(
            f"Matcher's host steps cannot run with the batch ({b}) sharded over "
            f"{n_dev} CPU devices; run on one CPU device, or on GPU / TPU"
        )
    from jax.sharding import AxisType, PartitionSpec

    mesh = jax.make_mesh((n_dev,), ("data",), axis_types=(AxisType.Auto,))
    data, rep = PartitionSpec("data"), PartitionSpec()
    return jax.shard_map(
        partial(_predict, config=config),
        mesh=mesh,
        in_specs=(rep, data, data),
        out_specs=data,
        check_vma=False,
    )(frozen, inputs, seeds)


def _predict(frozen: Params, batch: dict, seeds: jax.Array, config: MatcherConfig) -> dict:
    """`predict` on (a device's share of) the batch, with the examples' seeds (B,)."""
    query, support = batch["query_image"], batch["support_images"]
    ann = batch["support_annotations"]
    b, k = ann.shape[:2]
    out_size = (int(query.shape[1]), int(query.shape[2]))
    q_emb = frozen_sam.query_embeddings(frozen, batch, config.sam)
    flat = support.reshape(b * k, *support.shape[2:])
    if config.encoder == "sam":
        tar = features(frozen, query, config, q_emb)
    else:
        tar = features(frozen, query, config)
    ref = features(frozen, flat, config).reshape(b, -1, tar.shape[-1])  # (B, K*N, C)
    s = jnp.einsum("brc,bnc->brn", ref, tar, precision=jax.lax.Precision.HIGHEST)
    pool = reference_pool(ann, config)
    n = tar.shape[1]
    slots = group_slots(config)
    shapes = (
        jax.ShapeDtypeStruct((b, n, 2), jnp.float32),
        jax.ShapeDtypeStruct((b,), jnp.int32),
        jax.ShapeDtypeStruct((b, 4), jnp.float32),
        {i: jax.ShapeDtypeStruct((b, c, i, 2), jnp.float32) for i, c in slots.items()},
        {i: jax.ShapeDtypeStruct((b, c), jnp.bool_) for i, c in slots.items()},
    )
    all_pts, count, box, prompts, valid = jax.pure_callback(
        partial(_host_prompts, config=config), shapes, s, pool, seeds
    )

    def image(x):
        emb, pr, bx, pts, c = x
        return _decode_image(frozen["sam"], emb[None], pr, bx, pts, c, out_size, config)

    groups = {i: (prompts[i], valid[i]) for i in slots}
    per = jax.lax.map(image, (q_emb, groups, box, all_pts, count))
    masks, stab, boxes, cells, n_in, iou, ok, dense = per
    chosen = jax.pure_callback(
        partial(_host_select, config=config),
        jax.ShapeDtypeStruct(ok.shape, jnp.bool_),
        iou,
        stab,
        ok,
        dense[0],
        boxes,
        cells,
        n_in,
        count,
        s,
        pool,
    )
    merged = (masks & chosen[:, :, None, None]).any(axis=1)
    return {
        "logits": jnp.where(merged, 1.0, -1.0),
        "points": all_pts,
        "num_points": count,
        "chosen": chosen,
    }


def apply(
    params: Params,
    frozen: Params,
    batch: dict,
    *,
    config: MatcherConfig,
    rng: jax.Array | None = None,
    train: bool = False,
) -> jax.Array:
    """Foreground logits (B, H, W) at the query size; nothing is learned (`params` = {})."""
    del params, train
    return predict(frozen, batch, config, rng)["logits"]


def frozen_spec(config: MatcherConfig) -> FrozenSpec:
    """SAM, and the DINOv2 for encoder="dinov2" (the SAM encoder needs no other backbone)."""
    return FrozenSpec(sam=config.sam, backbone=config.dinov2)


LEARNER = registry.register(
    Learner(
        name="matcher",
        title="Matcher",
        make_config=make_config,
        init=no_params,
        apply=apply,
        loss_fn=None,
        frozen=frozen_spec,
        module=__name__,
    )
)
