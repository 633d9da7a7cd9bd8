"""Class splits of the few-shot benchmarks: PASCAL-5i, COCO-20i, FSS-1000, COCO-20i → PASCAL.

Pure python. Every class id is the 1-based id the builders write into the `mask` class-index
map (`jaxvrp.data.schema`):

- PASCAL-5i: id c is `PASCAL_CLASSES[c - 1]` (the 20 VOC classes in VOC order).
- COCO-20i: id c is `COCO_CLASSES[c - 1]`, the c-th of the 80 categories in ascending COCO
  category-id order (person = 1, ..., toothbrush = 80).
- FSS-1000: id c is the c-th class name in sorted order (the built dataset's
  `info.metadata["class_names"]`).

Folds (4 each, numbered 0..3, as HSNet, PFENet and VRP-SAM number them):

- PASCAL-5i fold i: novel = 5i+1 .. 5i+5, base = the other 15 (contiguous blocks).
- COCO-20i fold f: novel = f+1, f+5, ..., f+77 (interleaved: every 4th class), base = the
  other 60.
- COCO-20i → PASCAL (VRP-SAM Table 4 / 10, the domain-shift setting of HSNet/PFENet/RePRI):
  train on COCO fold f's 60 base classes, test on the PASCAL classes whose COCO counterpart is
  among COCO fold f's novel classes, so train and test classes never overlap. Test-fold sizes
  are 6, 4, 6, 4 (see `coco_to_pascal`).
"""

from collections.abc import Mapping, Sequence
from typing import Any

PASCAL_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# The 80 COCO 2014/2017 "instances" categories in ascending category-id order (ids 1..90 with
# gaps); COCO-20i class c (1-based) is COCO_CLASSES[c - 1].
COCO_CLASSES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)

# PASCAL VOC class name -> COCO category name (every VOC class has a COCO counterpart).
PASCAL_TO_COCO: dict[str, str] = {
    name: {
        "aeroplane": "airplane",
        "diningtable": "dining table",
        "motorbike": "motorcycle",
        "pottedplant": "potted plant",
        "sofa": "couch",
        "tvmonitor": "tv",
    }.get(name, name)
    for name in PASCAL_CLASSES
}

NUM_FOLDS = 4
FSS_SPLITS = ("train", "val", "test")


def _check_fold(fold: int) -> int:
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < NUM_FOLDS:
        raise ValueError(f"fold must be one of {list(range(NUM_FOLDS))}, got {fold!r}")
    return fold


def pascal_classes(fold: int) -> tuple[list[int], list[int]]:
    """PASCAL-5i fold `fold` (0..3) -> (base, novel) sorted 1-based class ids (15 and 5).

    Novel = 5·fold+1 .. 5·fold+5 (fold 0: aeroplane..bottle, 1: bus..cow,
    2: diningtable..person, 3: pottedplant..tvmonitor).
    """
    fold = _check_fold(fold)
    novel = list(range(5 * fold + 1, 5 * fold + 6))
    base = [c for c in range(1, len(PASCAL_CLASSES) + 1) if c not in novel]
    return base, novel


def coco_classes(fold: int) -> tuple[list[int], list[int]]:
    """COCO-20i fold `fold` (0..3) -> (base, novel) sorted 1-based class ids (60 and 20).

    Novel = fold+1, fold+5, ..., fold+77 (every 4th class in category-id order, as HSNet's
    `class_ids_val = [fold + 4 * i for i in range(20)]` in 0-based ids).
    """
    fold = _check_fold(fold)
    novel = [fold + 1 + NUM_FOLDS * i for i in range(20)]
    base = [c for c in range(1, len(COCO_CLASSES) + 1) if c not in novel]
    return base, novel


def coco_to_pascal(fold: int) -> tuple[list[int], list[int]]:
    """COCO-20i → PASCAL domain shift, fold 0..3 -> (COCO train ids, PASCAL test ids).

    Train on COCO-20i fold `fold`'s 60 base classes (COCO ids); test on the PASCAL classes
    (PASCAL ids) whose COCO counterpart (`PASCAL_TO_COCO`) is NOT a training class, i.e. is in
    COCO fold `fold`'s novel set. The four test folds partition the 20 PASCAL classes:

    - fold 0 (6): aeroplane, boat, chair, diningtable, dog, person
    - fold 1 (4): bicycle, bus, horse, sofa
    - fold 2 (6): bird, car, pottedplant, sheep, train, tvmonitor
    - fold 3 (4): bottle, cat, cow, motorbike
    """
    base, novel = coco_classes(fold)
    novel_names = {COCO_CLASSES[c - 1] for c in novel}
    test = [i + 1 for i, name in enumerate(PASCAL_CLASSES) if PASCAL_TO_COCO[name] in novel_names]
    return base, test


def class_ids(names: Sequence[str], class_names: Sequence[str]) -> list[int]:
    """Sorted 1-based ids of `names` in `class_names` (id c is `class_names[c - 1]`)."""
    index = {name: i + 1 for i, name in enumerate(class_names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise ValueError(
            f"{len(missing)} class names are not in the dataset's class list "
            f"({len(class_names)} classes): {missing[:10]}"
        )
    return sorted(index[n] for n in names)


def fss_classes(split: str, metadata: Mapping[str, Any]) -> list[int]:
    """FSS-1000 split ("train", "val" or "test") -> the sorted 1-based class ids of that split.

    `metadata` is the built dataset's `info.metadata` (e.g.
    `tfds.builder("fss1000", data_dir=...).info.metadata`), or any mapping with
    `class_names` (all classes sorted by name; id c is `class_names[c - 1]`) and
    `split_classes` (split -> class names, from the user's HSNet split lists). With HSNet's
    lists the splits have 520, 240 and 240 classes.
    """
    if split not in FSS_SPLITS:
        raise ValueError(f"FSS-1000 split must be one of {list(FSS_SPLITS)}, got {split!r}")
    for key in ("class_names", "split_classes"):
        if key not in metadata:
            raise ValueError(
                f"FSS-1000 metadata has no {key!r} (keys: {sorted(metadata)}); pass the "
                "built dataset's info.metadata"
            )
    if split not in metadata["split_classes"]:
        raise ValueError(
            f"FSS-1000 metadata has no class list for split {split!r} "
            f"(has {sorted(metadata['split_classes'])})"
        )
    return class_ids(metadata["split_classes"][split], metadata["class_names"])
