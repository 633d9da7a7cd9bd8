"""COCO-20i: COCO 2014 images with per-image class-index masks from the instance annotations.

Expected layout of the manual directory (the official COCO 2014 files, unchanged)::

    <manual_dir>/
      train2014/COCO_train2014_<id:012d>.jpg     (train2014.zip, 82,783 images)
      val2014/COCO_val2014_<id:012d>.jpg         (val2014.zip, 40,504 images)
      annotations/instances_train2014.json       (annotations_trainval2014.zip)
      annotations/instances_val2014.json

Records: splits "train" (train2014) and "val" (val2014), one record per image of the
annotation file's `images`, in ascending COCO image id; `image_id` is the file name stem
(`COCO_train2014_000000000009`). Class ids 1..80 are the ranks of the categories in ascending
COCO category-id order (person = 1, ..., toothbrush = 80; `jaxvrp.data.folds.COCO_CLASSES`);
the annotation file's 80 categories must have exactly these names.

Masks are rasterised here from the instance annotations, without pycocotools:

- polygons with `polygon_to_mask`, which reproduces pycocotools' `frPyObjects` rasteriser
  exactly (coordinates quantised to 1/5 pixel, boundary traced on the 5× grid, pixel centres
  sampled per column; tested bit-equal to pycocotools on random polygons); an annotation's
  polygons are united, as `annToMask` does;
- RLE (`{"size": [h, w], "counts": [...]}` uncompressed, or COCO's compressed string) with
  `rle_to_mask`.

Overlaps: instances are painted largest first (by decoded pixel area, ties by annotation id),
so a smaller instance lying on a larger one (a cup on a dining table) stays visible. Crowd
annotations (`iscrowd: 1`) are painted with their class like any other instance (they are
regions of that class). HSNet reads masks pre-rendered by earlier work whose overlap rule is
not documented; masks may differ from those where instances of different classes overlap.
Images without annotations (about 1 % of COCO) have empty masks and are dropped (see
`common`); images whose file is missing or unreadable are skipped and counted.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np

from jaxvrp.data import folds
from jaxvrp.data.builders import common

LAYOUT = """
<manual_dir>/train2014/COCO_train2014_<id>.jpg
<manual_dir>/val2014/COCO_val2014_<id>.jpg
<manual_dir>/annotations/instances_train2014.json
<manual_dir>/annotations/instances_val2014.json
"""

_SPLIT_DIRS = {"train": "train2014", "val": "val2014"}
_QUANT = 5  # pycocotools' polygon upsampling factor


def polygon_to_mask(polygon, height: int, width: int) -> np.ndarray:
    """A COCO polygon [x0, y0, x1, y1, ...] (pixel coords) -> (H, W) uint8 0/1 mask.

    The same discretisation as pycocotools' `rleFrPoly`: vertices rounded to a 1/5-pixel
    grid, each edge traced as a digital line on that grid, and at every column where the
    boundary crosses the pixel-centre line (x = i + 0.5) the rows below the crossing are
    toggled (even-odd rule). Edges with identical endpoints are harmless; parts outside the
    image are clipped.
    """
    xy = np.asarray(polygon, np.float64).reshape(-1)
    if xy.size < 2 or xy.size % 2:
        raise ValueError(f"a polygon needs an even number of coordinates, got {xy.size}")
    # (int)(v + .5) in C truncates towards zero.
    x = np.trunc(_QUANT * xy[0::2] + 0.5).astype(np.int64)
    y = np.trunc(_QUANT * xy[1::2] + 0.5).astype(np.int64)
    xs, ys, xe, ye = x, y, np.roll(x, -1), np.roll(y, -1)
    dx, dy = np.abs(xe - xs), np.abs(ye - ys)
    major_x = dx >= dy
    # Each edge is drawn from its lower end along the major axis, points emitted in the
    # edge's own direction.
    flip = (major_x & (xs > xe)) | (~major_x & (ys > ye))
    xs, xe = np.where(flip, xe, xs), np.where(flip, xs, xe)
    ys, ye = np.where(flip, ye, ys), np.where(flip, ys, ye)
    steps = np.where(major_x, dx, dy)
    slope = np.where(major_x, (ye - ys) / np.maximum(dx, 1), (xe - xs) / np.maximum(dy, 1))
    edge = np.repeat(np.arange(x.size), steps + 1)
    first = np.concatenate([[0], np.cumsum(steps + 1)[:-1]])
    d = np.arange(edge.size) - first[edge]
    t = np.where(flip[edge], steps[edge] - d, d)
    u = np.where(
        major_x[edge], t + xs[edge], np.trunc(xs[edge] + slope[edge] * t + 0.5).astype(np.int64)
    )
    v = np.where(
        major_x[edge], np.trunc(ys[edge] + slope[edge] * t + 0.5).astype(np.int64), t + ys[edge]
    )
    u0, u1, v0, v1 = u[:-1], u[1:], v[:-1], v[1:]
    xd = (np.where(u1 < u0, u1, u1 - 1) + 0.5) / _QUANT - 0.5
    keep = (u1 != u0) & (np.floor(xd) == xd) & (xd >= 0) & (xd <= width - 1)
    yd = np.ceil(np.clip((np.minimum(v0, v1) + 0.5) / _QUANT - 0.5, 0, height))
    # Column-major positions: a crossing clipped to row H toggles the next column's start,
    # which ends the run at the bottom of this column, as in the RLE pycocotools builds.
    pos = xd[keep].astype(np.int64) * height + yd[keep].astype(np.int64)
    toggles = np.bincount(pos, minlength=height * width + 1)[: height * width]
    return (np.cumsum(toggles) % 2).astype(np.uint8).reshape(width, height).T


def rle_counts_from_string(counts: str | bytes) -> list[int]:
    """COCO's compressed RLE string -> run lengths (pycocotools `rleFrString`).

    Each count is a little-endian base-32 varint in characters offset by 48 (5 data bits, bit
    0x20 = more follows, bit 0x10 of the last character = negative); from the fourth count
    on, each is stored as the difference to the count two places earlier.
    """
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    out: list[int] = []
    p = 0
    while p < len(counts):
        x = 0
        k = 0
        more = True
        while more:
            if p >= len(counts):
                raise ValueError("compressed RLE string ends inside a count")
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def rle_to_mask(rle: dict, height: int | None = None, width: int | None = None) -> np.ndarray:
    """A COCO RLE {"size": [h, w], "counts": list or compressed str} -> (H, W) uint8 mask.

    Runs alternate background/foreground starting with background, in column-major order.
    If `height`/`width` are given they must equal the RLE's size.
    """
    try:
        h, w = (int(s) for s in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed RLE (needs 'size': [h, w] and 'counts'): {e}") from e
    if (height is not None and h != height) or (width is not None and w != width):
        raise ValueError(f"RLE size {[h, w]} != image size {[height, width]}")
    if isinstance(counts, str | bytes):
        counts = rle_counts_from_string(counts)
    counts = np.asarray(counts, np.int64)
    if (counts < 0).any() or counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {counts.sum()} (negative runs?), need h·w = {h * w}")
    values = np.zeros(counts.size, np.uint8)
    values[1::2] = 1
    return np.repeat(values, counts).reshape(w, h).T


def segmentation_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """An annotation's `segmentation` (polygons or RLE) -> (H, W) uint8 0/1 mask."""
    if isinstance(segmentation, dict):
        return rle_to_mask(segmentation, height, width)
    if isinstance(segmentation, list):
        if any(not isinstance(p, list | tuple) for p in segmentation):
            raise ValueError("a polygon segmentation must be a list of [x0, y0, x1, y1, ...] lists")
        mask = np.zeros((height, width), np.uint8)
        for polygon in segmentation:
            mask |= polygon_to_mask(polygon, height, width)
        return mask
    raise ValueError(f"unknown segmentation type {type(segmentation).__name__}")


def class_mask(
    annotations: list[dict], height: int, width: int, category_to_class: dict[int, int]
) -> np.ndarray:
    """An image's instance annotations -> (H, W) uint8 class-index map (0 background).

    Instances are painted in decreasing pixel area (ties: increasing annotation id), so the
    smaller of two overlapping instances wins the overlap.
    """
    painted = []
    for ann in annotations:
        category = ann.get("category_id")
        if category not in category_to_class:
            raise ValueError(f"annotation {ann.get('id')} has unknown category_id {category}")
        instance = segmentation_to_mask(ann["segmentation"], height, width).astype(bool)
        painted.append(
            (-int(instance.sum()), ann.get("id", 0), category_to_class[category], instance)
        )
    mask = np.zeros((height, width), np.uint8)
    for _, _, cls, instance in sorted(painted, key=lambda p: (p[0], p[1])):
        mask[instance] = cls
    return mask


def _image_mask(
    anns: list[dict], hw: tuple[int, int], category_to_class: dict[int, int], size
) -> np.ndarray:
    if tuple(size) != hw:
        raise ValueError(f"annotation file says (H, W) = {hw}, the image is {tuple(size)}")
    return class_mask(anns, hw[0], hw[1], category_to_class)


def load_annotations(path: Path, dataset: str = "coco20i") -> tuple[list[dict], dict, dict]:
    """instances_*.json -> (images sorted by id, {image id: annotations}, {category: class}).

    Raises `ValueError` naming the file if it is not valid JSON, lacks a key, or its
    categories are not COCO's 80 (`folds.COCO_CLASSES` in category-id order).
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{dataset}: cannot parse annotation file {path}: {e}") from e
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(f"{dataset}: annotation file {path} has no {missing} key(s)")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    names = tuple(c["name"] for c in categories)
    if names != folds.COCO_CLASSES:
        raise ValueError(
            f"{dataset}: {path} has {len(names)} categories, expected COCO's 80 in category-id "
            f"order; differences: {sorted(set(names) ^ set(folds.COCO_CLASSES))[:10]}"
        )
    category_to_class = {c["id"]: i + 1 for i, c in enumerate(categories)}
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images = sorted(data["images"], key=lambda im: im["id"])
    return images, by_image, category_to_class


class Coco20i(common.FewShotBuilder):
    """COCO-20i from a local COCO 2014 copy (layout: module docstring)."""

    name = "coco20i"
    SPLITS = ("train", "val")
    LAYOUT = LAYOUT
    DESCRIPTION = (
        "COCO 2014 with per-image class-index masks of the 80 instance categories, one record "
        "per image, for COCO-20i few-shot segmentation."
    )
    HOMEPAGE = "https://cocodataset.org/"
    CITATION = """@inproceedings{lin2014microsoft,
  title={Microsoft COCO: Common Objects in Context},
  author={Lin, Tsung-Yi and Maire, Michael and Belongie, Serge and Hays, James and
          Perona, Pietro and Ramanan, Deva and Doll{\\'a}r, Piotr and Zitnick, C Lawrence},
  booktitle={ECCV}, year={2014}}"""

    def class_names(self):
        return folds.COCO_CLASSES

    def check_layout(self, root: Path) -> dict:
        # Existence only: parsing instances_train2014.json takes a while and a few GB, so it
        # is done once per split while that split is written (a malformed file then fails
        # the build; TFDS removes the incomplete output).
        check = dict(dataset=self.name, layout=LAYOUT)
        layout: dict = {"class_names": folds.COCO_CLASSES}
        for split, folder in _SPLIT_DIRS.items():
            layout[f"{split}_images"] = common.require_dir(
                root / folder, what=f"{split} image", **check
            )
            layout[f"{split}_annotations"] = common.require_file(
                root / "annotations" / f"instances_{folder}.json",
                what=f"{split} annotation file",
                **check,
            )
        return layout

    def candidates(self, root: Path, split: str, layout: dict):
        images, by_image, category_to_class = load_annotations(
            layout[f"{split}_annotations"], self.name
        )
        for image in images:
            hw = (int(image["height"]), int(image["width"]))
            yield common.Candidate(
                image_id=Path(image["file_name"]).stem,
                image_path=layout[f"{split}_images"] / image["file_name"],
                load_mask=partial(
                    _image_mask, by_image.get(image["id"], []), hw, category_to_class
                ),
            )
