"""A torch / numpy transcription of official Matcher's matching and mask-selection steps
(aim-uofa/Matcher: `matcher/Matcher.py` `Matcher.set_reference`, `patch_level_matching`,
`mask_generation`, `RobustPromptSampler`; the generator's per-batch filters and NMS of its
`segment_anything/automatic_mask_generator.py` and `utils/amg.py`), written from reading
that code for the parity tests of `jaxvrp.learners.matcher`; it shares no code with it.

One substitution: the official `cv2.resize(..., INTER_AREA)` of a mask to the patch grid is
written as exact area averaging (each pixel split into an lcm-sized grid of sub-pixels, then
block means), which equals OpenCV's result wherever no pixel overlaps a cell by under 1e-3
of a pixel (OpenCV drops such slivers); the tests use sizes without them.
"""

import math
import random

import numpy as np
import ot
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops.boxes import batched_nms


def reference_masks_pool(masks: torch.Tensor, patch: int) -> torch.Tensor:
    """`set_reference`: masks (1, ns, h, w) float -> pooled reference patches (ns*N,)."""
    masks = masks.clone()
    if masks.sum() == 0:  # reference_masks_verification
        _, _, sh, sw = masks.shape
        masks[..., (sh // 2 - 7) : (sh // 2 + 7), (sw // 2 - 7) : (sw // 2 + 7)] = 1
    masks = masks.permute(1, 0, 2, 3)
    pooled = F.avg_pool2d(masks, (patch, patch))
    return (pooled > 0.0).float().reshape(-1)  # mask_threshold = 0


def patch_level_matching(S: torch.Tensor, pool: torch.Tensor, feat: int, patch: int, size: int):
    """`patch_level_matching` from S (ns*N, N): points (n, 2) int and the box of them."""
    S_forward = S[pool.flatten().bool()]
    fwd = linear_sum_assignment(S_forward.cpu(), maximize=True)
    fwd = [torch.as_tensor(x, dtype=torch.int64) for x in fwd]
    sim_scores_f = S_forward[fwd[0], fwd[1]]
    indices_mask = pool.flatten().nonzero()[:, 0]
    S_reverse = S.t()[fwd[1]]
    rev = linear_sum_assignment(S_reverse.cpu(), maximize=True)
    rev = [torch.as_tensor(x, dtype=torch.int64) for x in rev]
    retain_ind = torch.isin(rev[1], indices_mask)
    if not (retain_ind == False).all().item():  # noqa: E712  (as officially)
        fwd = [fwd[0][retain_ind], fwd[1][retain_ind]]
        sim_scores_f = sim_scores_f[retain_ind]
    reduced = len(sim_scores_f) // 2 if len(sim_scores_f) > 40 else len(sim_scores_f)
    _, order = torch.sort(sim_scores_f, descending=True, stable=True)
    matched = fwd[1][order[:reduced]]
    uniq = torch.tensor(list(set(matched.cpu().tolist())))
    xs = (uniq % feat * patch + patch // 2).tolist()
    ys = (uniq // feat * patch + patch // 2).tolist()
    pts = np.array(
        [[int(x), int(y)] for x, y in zip(xs, ys, strict=True) if int(x) < size and int(y) < size]
    )
    box = np.array(
        [
            max(pts[:, 0].min(), 0),
            max(pts[:, 1].min(), 0),
            min(pts[:, 0].max(), size - 1),
            min(pts[:, 1].max(), size - 1),
        ]
    )
    return pts, box


def combinations(n, k):
    if k > n:
        return []
    if k == 0:
        return [[]]
    if k == n:
        return [[i for i in range(n)]]
    res = []
    for i in range(n):
        for j in combinations(i, k - 1):
            res.append(j + [i])
    return res


def sample_points(points, sample_range, max_iterations):
    """`RobustPromptSampler.sample_points` with Python's global `random` (seed it first)."""
    samples = []
    for i in range(min(sample_range[0], len(points)), min(sample_range[1], len(points)) + 1):
        if len(points) > 8:
            index = [random.sample(range(len(points)), i) for _ in range(max_iterations)]
        else:
            index = combinations(len(points), i)
        samples.append(np.take(points, index, axis=0))
    return samples


def area_resize(mask: np.ndarray, size: int) -> np.ndarray:
    """Exact area averaging of (h, w) to (size, size) (OpenCV's INTER_AREA downscale)."""
    h, w = mask.shape
    ly, lx = math.lcm(h, size), math.lcm(w, size)
    up = np.repeat(np.repeat(mask.astype(np.float64), ly // h, 0), lx // w, 1)
    return up.reshape(size, ly // size, size, lx // size).mean(axis=(1, 3))


def get_mask_scores(masks, all_points, emd_cost, pool, feat):
    """`get_mask_scores`: masks (1, h, w) bool -> purity, coverage (tensors), emd score."""

    def is_in_mask(point, mask):
        h, w = mask.shape
        point = point.astype(np.int64)[:, ::-1]
        point = np.clip(point, 0, [h - 1, w - 1])
        return mask[point[:, 0], point[:, 1]]

    ori = masks
    m = area_resize(masks[0], feat)
    thres = m.max() - 1e-6 if m.max() <= 0 else 0
    m = m > thres
    cost = emd_cost[pool.flatten().bool(), :][:, torch.as_tensor(m.flatten())]
    emd = ot.emd2(
        a=[1.0 / cost.shape[0] for _ in range(cost.shape[0])],
        b=[1.0 / cost.shape[1] for _ in range(cost.shape[1])],
        M=cost.cpu().numpy(),
    )
    inside = all_points[is_in_mask(all_points, ori[0])]
    area = max(float(m.sum()), 1.0)
    purity = torch.tensor([inside.shape[0] / area]) + 1e-6
    coverage = torch.tensor([inside.shape[0] / all_points.shape[0]]) + 1e-6
    return purity, coverage, 1 - emd


def generator_filter(logits, iou, dense, cfg):
    """The generator's `_process_batch` / `_process_sel_batch` filters (IoU, stability with
    offset 1, threshold at 0, boxes) then `_process_crop`'s NMS: masks (m, h, w) bool in
    the kept (NMS) order."""
    logits, iou = torch.as_tensor(logits), torch.as_tensor(iou)
    keep = torch.ones(len(iou), dtype=torch.bool)
    for flag, t_iou, t_st in (
        (True, cfg["pred_iou_thresh"], cfg["stability_score_thresh"]),
        (False, cfg["iou_filter"], cfg["sel_stability_score_thresh"]),
    ):
        rows = torch.as_tensor(dense) == flag
        k = torch.ones(len(iou), dtype=torch.bool)
        if t_iou > 0:
            k &= iou > t_iou
        inter = (logits > 1.0).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
        union = (logits > -1.0).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
        stab = inter / union
        if t_st > 0:
            k &= stab >= t_st
        keep &= ~rows | k
    masks, scores = logits[keep] > 0, iou[keep]
    boxes = batched_mask_box(masks)
    nms = batched_nms(boxes.float(), scores, torch.zeros(len(boxes)), iou_threshold=cfg["nms"])
    return masks[nms].numpy()


def batched_mask_box(masks: torch.Tensor) -> torch.Tensor:
    """amg.batched_mask_to_box: inclusive (x0, y0, x1, y1), zeros for an empty mask."""
    h, w = masks.shape[-2:]
    rows = masks.any(-1)
    ycoords = rows * torch.arange(h)[None]
    bottom = ycoords.max(-1).values
    top = (ycoords + h * (~rows)).min(-1).values
    cols = masks.any(-2)
    xcoords = cols * torch.arange(w)[None]
    right = xcoords.max(-1).values
    left = (xcoords + w * (~cols)).min(-1).values
    empty = (right < left) | (bottom < top)
    return torch.stack([left, top, right, bottom], -1) * (~empty).unsqueeze(-1)


def mask_selection(tar_masks, all_points, C, pool, feat, cfg):
    """`mask_generation` after the generator: masks (m, h, w) bool -> merged (h, w) bool,
    and the (purity, coverage, emd) of every mask."""
    n = len(tar_masks)
    purity, coverage, emd = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    for i in range(n):
        purity[i], coverage[i], emd[i] = get_mask_scores(
            tar_masks[i][None], all_points, C, pool, feat
        )
    metrics = {"purity": purity.clone(), "coverage": coverage.clone(), "emd": emd.clone()}
    pred = tar_masks
    scores = cfg["alpha"] * emd + cfg["beta"] * purity * coverage ** cfg["exp"]
    for metric in ("coverage", "emd", "purity"):
        if cfg[metric] > 0:
            thres = min(cfg[metric], metrics[metric].max())
            idx = torch.where(metrics[metric] >= thres)[0]
            scores, pred = scores[idx], pred[idx.numpy()]
            metrics = {k: v[idx] for k, v in metrics.items()}
    if cfg["score_filter"]:
        distances = 1 - scores
        distances, rank = torch.sort(distances, descending=False, stable=True)
        norm = (distances - distances.min()) / (distances.max() + 1e-6)
        ok = distances < cfg["score"]
        ok[..., 0] = True
        ok = ok * (norm < cfg["score_norm"])
        chosen = pred[rank[ok][: cfg["num_merging_mask"]].numpy()]
    else:
        topk = min(cfg["num_merging_mask"], scores.size(0))
        idx = scores.topk(topk)[1]
        top_scores = scores[idx].numpy()
        if cfg["topk_scores_threshold"] > 0:
            top_scores = top_scores / top_scores.max()
        chosen = pred[idx.numpy()][top_scores > cfg["topk_scores_threshold"]]
    merged = chosen.reshape(-1, *tar_masks.shape[1:]).sum(0) > 0
    return merged, (purity.numpy(), coverage.numpy(), emd.numpy())


def kmeans_pp(X, K, max_iters=100):
    """`k_means.kmeans_pp` (torch's generator): D^2-seeded centres, then Lloyd iterations
    keeping an empty cluster's centre, until the centres stop changing."""
    X = torch.from_numpy(X).float() if isinstance(X, np.ndarray) else X
    centers = X[torch.randint(X.size(0), (1,))]
    for _ in range(K - 1):
        d = torch.cdist(X, centers).min(dim=1).values + 1e-6
        idx = torch.multinomial(d**2 / torch.sum(d**2), num_samples=1)
        centers = torch.cat([centers, X[idx]], dim=0)
    for _ in range(max_iters):
        assign = torch.argmin(torch.cdist(X, centers), dim=1)
        new = [X[assign == k].mean(dim=0) if (assign == k).any() else centers[k] for k in range(K)]
        new = torch.stack(new)
        if torch.all(torch.eq(new, centers)):
            break
        centers = new.clone()
    return centers, assign
