"""PerSAM's PerSeg evaluation protocol (`config.data.protocol = "perseg"`).

Read from the official evaluation (ZrrSkywalker/Personalize-SAM, `persam.py` and
`eval_miou.py`): every object's reference is its image `00` (`00.jpg` with the mask
`00.png`), and every other image of the object is a target, segmented from that one
reference. The score of an object is its intersection summed over its targets divided by
its union summed over them (Σ∩ / Σ∪), and mIoU is the mean over the objects (40 in PerSeg)
— exactly `jaxvrp.metrics.SegmentationMeter`'s per-class IoU and mIoU, with one class per
object, so the evaluator needs nothing else than this episode list.

Differences, chosen and documented (docs/data.md):
- the official `eval_miou.py` leaves a file out when `'00' in path`, a substring test that
  would also drop e.g. `100.png`; here only the reference itself (`<object>/00`) is left out;
- the targets are scored at `data.image_size` (the evaluator's fixed-shape batches, masks
  resized with PIL's nearest), not at each image's original size as `eval_miou.py`;
- PerSeg is a test set: it cannot be trained on (`jaxvrp.data.datasets` refuses).
"""

from __future__ import annotations

import numpy as np

PROTOCOL = "perseg"  # the value of config.data.protocol
DATASET = "perseg"  # the one dataset it applies to (config.data.dataset)
REFERENCE = "00"  # persam.py: the reference of every object is its image 00


def episodes_of(
    ids: dict[str, int], records: dict[int, np.ndarray]
) -> list[tuple[int, int, np.ndarray]]:
    """[(class id, target record, (1,) reference record)] of a PerSeg build, objects in class
    order, targets in `image_id` order.

    `ids` maps `image_id` ("<object>/<name>") -> record, `records` class -> its records
    (a `jaxvrp.data.episodes.ClassIndex`). An object without its `00` image, or with no
    other image, is an error naming it."""
    name_of = {r: image_id for image_id, r in ids.items()}
    out = []
    for c in sorted(records):
        rows = sorted((name_of[int(r)], int(r)) for r in records[c])
        objects = {image_id.rsplit("/", 1)[0] for image_id, _ in rows}
        if len(objects) != 1:
            raise ValueError(f"perseg class {c} holds images of several objects: {sorted(objects)}")
        (obj,) = objects
        refs = [r for image_id, r in rows if image_id == f"{obj}/{REFERENCE}"]
        if not refs:
            raise ValueError(
                f"perseg object {obj!r} (class {c}) has no reference image {REFERENCE} "
                f"(PerSAM's protocol segments every other image from {obj}/{REFERENCE}); "
                f"its images: {[i for i, _ in rows][:10]}"
            )
        targets = [r for image_id, r in rows if r != refs[0]]
        if not targets:
            raise ValueError(f"perseg object {obj!r} (class {c}) has no image besides 00")
        out += [(c, t, np.array(refs[:1], np.int64)) for t in targets]
    return out
