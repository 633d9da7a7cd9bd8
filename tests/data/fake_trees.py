"""Tiny fake copies of the few-shot datasets, laid out as the builders expect.

Each `make_*` writes a tree under a directory and returns a `FakeTree`: the expected records
per split (image id -> (H, W) uint8 class-index mask, in record order) and the ids whose
masks are empty (dropped by the builders). Images are about 40×60 pixels, JPEG (quality 95)
with random content; masks are rectangles, so the expected class maps are known exactly.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 40, 60

PASCAL_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair")

# COCO's 80 category ids (1..90 with gaps), ascending; class c is COCO_CATEGORY_IDS[c - 1].
COCO_CATEGORY_IDS = [
    *range(1, 12),
    *range(13, 26),
    27,
    28,
    *range(31, 45),
    *range(46, 66),
    67,
    70,
] + [*range(72, 83), *range(84, 91)]


@dataclasses.dataclass
class FakeTree:
    root: Path
    expected: dict[str, dict[str, np.ndarray]]  # split -> image id -> (H, W) uint8 mask
    empty: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    files: dict[str, Path] = dataclasses.field(default_factory=dict)  # image id -> image file


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def write_jpeg(path: Path, seed: int, shape: tuple[int, int] = (H, W), mode: str = "RGB"):
    """A random smooth-ish JPEG image at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    small = rng.integers(0, 256, (shape[0] // 4 + 1, shape[1] // 4 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((shape[1], shape[0]), Image.BILINEAR)
    image.convert(mode).save(path, format="JPEG", quality=95)


def rect(shape=(H, W), *boxes: tuple[int, int, int, int, int]) -> np.ndarray:
    """(H, W) uint8 map with value v on each box (y0, y1, x0, x1, v), later boxes on top."""
    mask = np.zeros(shape, np.uint8)
    for y0, y1, x0, x1, v in boxes:
        mask[y0:y1, x0:x1] = v
    return mask


def write_png(path: Path, array: np.ndarray, palette: bool = False):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(array, np.uint8))
    if palette:  # mode L -> P keeping the values as palette indices
        image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
        assert image.mode == "P"
    image.save(path, format="PNG")


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file to `keep` of its length (a truncated JPEG fails to decode fully)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ---- PASCAL-5i ----------------------------------------------------------------------------


def make_pascal(root: Path) -> FakeTree:
    """VOC2012/{JPEGImages,SegmentationClassAug} + splits/{train,val}.txt.

    train: 3 images in list order (one listed twice, one DeepLab-style line) + one whose mask
    has only background and 255 (dropped); val: 2 images (one palette mask with boundary).
    """
    voc = root / "VOC2012"
    masks = {
        "2008_000010": rect((H, W), (5, 20, 5, 30, 1), (22, 38, 30, 58, 15)),
        "2007_000005": rect((H, W), (0, 40, 0, 10, 20)),
        "2009_000002": rect((H, W), (10, 30, 10, 50, 7), (10, 30, 9, 10, 255)),
        "2007_000999": rect((H, W), (10, 30, 10, 50, 255)),  # no class pixel: dropped
        "2010_000001": rect((H, W), (1, 39, 1, 59, 255), (2, 38, 2, 58, 12)),
        "2010_000002": rect((H, W), (3, 9, 4, 16, 3), (20, 35, 40, 55, 19)),
    }
    files = {}
    for seed, (image_id, mask) in enumerate(masks.items()):
        files[image_id] = voc / "JPEGImages" / f"{image_id}.jpg"
        write_jpeg(files[image_id], seed)
        write_png(voc / "SegmentationClassAug" / f"{image_id}.png", mask, palette=seed % 2 == 1)
    write_jpeg(voc / "JPEGImages" / "2011_000000.jpg", 99)  # unlisted: not written
    splits = root / "splits"
    splits.mkdir(parents=True)
    (splits / "train.txt").write_text(
        "# SBD-augmented train list\n2008_000010\n"
        "/JPEGImages/2007_000005.jpg /SegmentationClassAug/2007_000005.png\n"
        "2007_000999\n\n2008_000010\n2009_000002\n"
    )
    (splits / "val.txt").write_text("2010_000001\n2010_000002\n")
    order = {"train": ["2008_000010", "2007_000005", "2009_000002"], "val": list(masks)[4:]}
    expected = {s: {i: masks[i] for i in ids} for s, ids in order.items()}
    return FakeTree(root, expected, {"train": ["2007_000999"], "val": []}, files)


# ---- COCO-20i -----------------------------------------------------------------------------


def coco_category_names() -> list[str]:
    from jaxvrp.data.folds import COCO_CLASSES

    return list(COCO_CLASSES)


def rle_encode_uncompressed(mask: np.ndarray) -> dict:
    """(H, W) 0/1 mask -> COCO uncompressed RLE (column-major runs, background first)."""
    flat = np.asarray(mask, np.uint8).T.reshape(-1)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def rle_compress(counts: list[int]) -> str:
    """Run lengths -> COCO's compressed RLE string (pycocotools `rleToString`)."""
    out = []
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if ch & 0x10 else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def _box_polygon(y0, y1, x0, x1) -> list[float]:
    # pycocotools samples pixel centres: the polygon [x0, x1] × [y0, y1] covers exactly
    # the pixels [y0, y1) × [x0, x1).
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _box(y0, y1, x0, x1) -> list[list[float]]:
    """A one-polygon COCO segmentation."""
    return [_box_polygon(y0, y1, x0, x1)]


def make_coco(root: Path) -> FakeTree:
    """train2014/, val2014/ and annotations/instances_{train,val}2014.json.

    train: image 7 (a large instance with a smaller one of another class on top, listed
    first, and a second polygon part), image 3 (uncompressed-RLE crowd + compressed RLE),
    image 12 (no annotation: dropped), image 9 (grayscale JPEG); val: images 20 and 21.
    Records are in ascending image id.
    """
    names = coco_category_names()
    categories = [{"id": cid, "name": n} for cid, n in zip(COCO_CATEGORY_IDS, names, strict=True)]
    cls = {cid: i + 1 for i, cid in enumerate(COCO_CATEGORY_IDS)}  # category id -> class
    table, cup, person, toothbrush, bus = 67, 47, 1, 90, 6

    crowd = rect((H, W), (0, 10, 0, 60, 1))
    small = rect((H, W), (20, 30, 25, 35, 1))
    specs = {
        "train": [
            (
                7,
                "RGB",
                [  # small cup first in the file: the area rule must still put it on top
                    (101, cup, _box(10, 20, 20, 30), 0),
                    (100, table, [_box_polygon(5, 35, 5, 55), _box_polygon(36, 40, 0, 3)], 0),
                ],
            ),
            (
                3,
                "RGB",
                [
                    (102, person, rle_encode_uncompressed(crowd), 1),
                    (
                        103,
                        toothbrush,
                        {
                            "size": [H, W],
                            "counts": rle_compress(rle_encode_uncompressed(small)["counts"]),
                        },
                        0,
                    ),
                ],
            ),
            (12, "RGB", []),
            (9, "L", [(104, bus, _box(0, 40, 0, 30), 0)]),
        ],
        "val": [
            (21, "RGB", [(201, person, _box(2, 12, 3, 13), 0)]),
            (20, "RGB", [(200, toothbrush, _box(30, 40, 50, 60), 0)]),
        ],
    }
    expected_masks = {
        7: rect(
            (H, W),
            (5, 35, 5, 55, cls[table]),
            (36, 40, 0, 3, cls[table]),
            (10, 20, 20, 30, cls[cup]),
        ),
        3: rect((H, W), (0, 10, 0, 60, cls[person]), (20, 30, 25, 35, cls[toothbrush])),
        12: rect((H, W)),
        9: rect((H, W), (0, 40, 0, 30, cls[bus])),
        21: rect((H, W), (2, 12, 3, 13, cls[person])),
        20: rect((H, W), (30, 40, 50, 60, cls[toothbrush])),
    }
    (root / "annotations").mkdir(parents=True)
    expected, empty, files = {}, {}, {}
    for split, folder in (("train", "train2014"), ("val", "val2014")):
        images, annotations = [], []
        for image_id, mode, anns in specs[split]:
            file_name = f"COCO_{folder}_{image_id:012d}.jpg"
            files[file_name[:-4]] = root / folder / file_name
            write_jpeg(files[file_name[:-4]], image_id, mode=mode)
            images.append({"id": image_id, "file_name": file_name, "height": H, "width": W})
            for ann_id, category, segmentation, crowd_flag in anns:
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": category,
                        "segmentation": segmentation,
                        "iscrowd": crowd_flag,
                        "area": 0.0,
                        "bbox": [0, 0, 1, 1],
                    }
                )
        data = {"images": images, "annotations": annotations, "categories": categories[::-1]}
        (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(data))
        ids = sorted(i for i, _, _ in specs[split])
        stems = {i: f"COCO_{folder}_{i:012d}" for i in ids}
        expected[split] = {stems[i]: expected_masks[i] for i in ids if expected_masks[i].any()}
        empty[split] = [stems[i] for i in ids if not expected_masks[i].any()]
    return FakeTree(root, expected, empty, files)


# ---- FSS-1000 -----------------------------------------------------------------------------

FSS_SPLITS = {"train": ["zebra", "apple", "bus"], "val": ["ab_wheel"], "test": ["dog", "cat_2"]}


def make_fss(root: Path) -> FakeTree:
    """fewshot_data/<class>/{1,2,10}.{jpg,png} for 7 classes + splits/{train,val,test}.txt.

    Class "unused" is in no list (it still gets an id). Masks are 0/255 grey PNGs, one RGB
    with a value below the 128 threshold around the object (background after thresholding).
    """
    data = root / "fewshot_data"
    all_names = sorted([*sum(FSS_SPLITS.values(), []), "unused"])
    ids = {n: i + 1 for i, n in enumerate(all_names)}
    expected: dict[str, dict[str, np.ndarray]] = {s: {} for s in FSS_SPLITS}
    files = {}
    seed = 0
    for split, names in FSS_SPLITS.items():
        for name in sorted(names):
            for k, n in enumerate((1, 2, 10)):
                seed += 1
                box = (3 + k, 30 + k, 5 + 2 * k, 50 - k)
                fg = rect((H, W), (*box, 1)).astype(bool)
                path = data / name / f"{n}.jpg"
                write_jpeg(path, seed)
                files[f"{name}/{n}"] = path
                grey = np.where(fg, 255, 0).astype(np.uint8)
                if n == 2:
                    grey = np.where(fg, 200, 0).astype(np.uint8)
                    grey[0:2, :] = 100  # below the threshold
                    write_png(data / name / f"{n}.png", np.stack([grey] * 3, -1))
                else:
                    write_png(data / name / f"{n}.png", grey)
                expected[split][f"{name}/{n}"] = fg.astype(np.uint8) * ids[name]
    write_jpeg(data / "unused" / "1.jpg", 77)
    write_png(data / "unused" / "1.png", rect((H, W), (0, 10, 0, 10, 255)))
    (root / "splits").mkdir(parents=True)
    for split, names in FSS_SPLITS.items():
        (root / "splits" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return FakeTree(root, expected, {s: [] for s in FSS_SPLITS}, files)


# ---- PerSeg -------------------------------------------------------------------------------


def make_perseg(root: Path) -> FakeTree:
    """Images/<object>/{00,01}.jpg + Annotations/<object>/{00,01}.png for 3 objects.

    Masks: 0/255 grey, palette with index 1 (dark red), and RGB (255, 255, 255) on black.
    """
    objects = ["teddybear", "backpack_dog", "can"]
    expected: dict[str, np.ndarray] = {}
    files = {}
    for class_id, name in enumerate(sorted(objects), start=1):
        for k in range(2):
            fg = rect((H, W), (4 + 3 * k, 36, 6, 40 + 5 * k, 1)).astype(bool)
            path = root / "Images" / name / f"{k:02d}.jpg"
            write_jpeg(path, 10 * class_id + k)
            files[f"{name}/{k:02d}"] = path
            ann = root / "Annotations" / name / f"{k:02d}.png"
            if class_id == 2:
                write_png(ann, fg.astype(np.uint8), palette=True)
            elif class_id == 3 and k == 1:
                write_png(ann, np.stack([fg.astype(np.uint8) * 255] * 3, -1))
            else:
                write_png(ann, fg.astype(np.uint8) * 255)
            expected[f"{name}/{k:02d}"] = fg.astype(np.uint8) * class_id
    return FakeTree(root, {"test": expected}, {"test": []}, files)
