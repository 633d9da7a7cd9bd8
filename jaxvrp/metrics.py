"""Few-shot segmentation metrics, accumulated over episodes (HSNet / VRP-SAM protocol).

mIoU: for each class, (sum of intersections) / (sum of unions) over that class's episodes,
averaged over the classes evaluated. FB-IoU: the foreground and the background IoU, each
from totals over all episodes, averaged. Pixels marked ignore (PASCAL's 255) count nowhere.
Also pixel rates TPR, TNR, FPR, FNR from the summed confusion counts.

`hsnet_metrics` computes mIoU and FB-IoU exactly as HSNet's `AverageMeter` does
(`data.protocol = "hsnet"`), from the same per-class counts; the two differ only in corner
cases (see its docstring).
"""

import dataclasses

import numpy as np


def confusion(pred: np.ndarray, target: np.ndarray, ignore: np.ndarray | None = None):
    """Per-episode (tp, fp, fn, tn) pixel counts: pred, target (B, H, W) -> 4 x (B,)."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    valid = np.ones_like(pred) if ignore is None else ~np.asarray(ignore, bool)
    axes = tuple(range(1, pred.ndim))
    tp = (pred & target & valid).sum(axes)
    fp = (pred & ~target & valid).sum(axes)
    fn = (~pred & target & valid).sum(axes)
    tn = (~pred & ~target & valid).sum(axes)
    return tp, fp, fn, tn


@dataclasses.dataclass
class SegmentationMeter:
    """Sums of confusion counts per class; `update` per batch, `result` at the end."""

    counts: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # class -> 4 sums
    episodes: int = 0

    def update(self, pred, target, class_ids, ignore=None, valid=None) -> None:
        """pred, target, ignore (B, H, W); class_ids (B,); valid (B,) marks real episodes."""
        tp, fp, fn, tn = confusion(pred, target, ignore)
        valid = np.ones(len(tp), bool) if valid is None else np.asarray(valid, bool)
        for i, c in enumerate(np.asarray(class_ids).tolist()):
            if valid[i]:
                row = self.counts.setdefault(int(c), np.zeros(4, np.int64))
                row += np.array([tp[i], fp[i], fn[i], tn[i]], np.int64)
                self.episodes += 1

    def result(self) -> dict:
        if not self.counts:
            raise ValueError("no episodes were evaluated")
        per_class = {}
        for c, (tp, fp, fn, _) in sorted(self.counts.items()):
            union = tp + fp + fn
            per_class[c] = float(tp / union) if union else 1.0
        tp, fp, fn, tn = np.sum(list(self.counts.values()), axis=0).astype(np.float64)
        fg = tp / max(tp + fp + fn, 1)
        bg = tn / max(tn + fn + fp, 1)
        return {
            "miou": float(np.mean(list(per_class.values()))),
            "fb_iou": float((fg + bg) / 2),
            "tpr": float(tp / max(tp + fn, 1)),
            "tnr": float(tn / max(tn + fp, 1)),
            "fpr": float(fp / max(fp + tn, 1)),
            "fnr": float(fn / max(fn + tp, 1)),
            "per_class_iou": per_class,
            "episodes": self.episodes,
        }


def hsnet_metrics(counts: dict[int, np.ndarray], class_ids) -> dict:
    """mIoU, FB-IoU and per-class IoU as HSNet's `AverageMeter.compute_iou`
    (`juhongm999/hsnet` `common/logger.py`, areas from `common/evaluation.py`).

    `counts`: class -> summed (tp, fp, fn, tn) over that class's episodes (ignored pixels
    excluded, as HSNet's `Evaluator` maps them to 255, which `histc` drops); `class_ids`:
    every class of the fold (HSNet's `class_ids_interest`), sampled or not. Per class,
    intersection = (tn, tp) and union = (tn + fp + fn, tp + fp + fn) for (background,
    foreground), summed over episodes; IoU = intersection / max(union, 1), so a class never
    sampled (or with an empty union) has IoU 0; mIoU = the mean foreground IoU over
    `class_ids`. FB-IoU = the mean over background and foreground of
    Σ_c intersection / Σ_c union over `class_ids` (no max(·, 1): NaN if a sum is 0, as
    HSNet's 0 / 0). Fractions, not HSNet's percent. HSNet sums in float32 on the GPU; the
    sums here are exact integers (the difference is below 1e-6 relative).
    """
    class_ids = [int(c) for c in class_ids]
    if not class_ids:
        raise ValueError("class_ids is empty: HSNet averages over the fold's classes")
    zero = np.zeros(4, np.int64)
    tp, fp, fn, tn = np.stack([np.asarray(counts.get(c, zero), np.int64) for c in class_ids]).T
    inter = np.stack([tn, tp])  # (2, C): background, foreground
    union = np.stack([tn + fp + fn, tp + fp + fn])
    iou = inter / np.maximum(union, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fb = inter.sum(1).astype(np.float64) / union.sum(1)
    return {
        "miou": float(iou[1].mean()),
        "fb_iou": float(fb.mean()),
        "per_class_iou": {c: float(v) for c, v in zip(class_ids, iou[1], strict=True)},
    }


def markdown_table(results: dict[str, dict]) -> str:
    """Rows of methods, columns mIoU / FB-IoU / TPR / TNR / FPR / FNR, in percent."""
    cols = ["miou", "fb_iou", "tpr", "tnr", "fpr", "fnr"]
    lines = [
        "| method | mIoU | FB-IoU | TPR | TNR | FPR | FNR |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * r[c]:.1f}" for c in cols) + " |")
    return "\n".join(lines)
