"""PerSeg: 40 personal objects with a few masked images each (`perseg`), a test set.

Expected layout of the manual directory (PerSAM's PerSeg release, unchanged)::

    <manual_dir>/
      Images/<object>/<name>.jpg          the images (00.jpg, 01.jpg, ...)
      Annotations/<object>/<name>.png     their masks (foreground = any non-zero value)

Class ids 1..N are the ranks of the object directories under `Images/` in sorted name order
(1..40 for the full dataset); `info.metadata["class_names"]` lists them. One split, "test":
one record per image, objects in sorted name order, images in numeric / name order;
`image_id` is `<object>/<name>`. PerSAM uses an object's first image (00) as the reference;
that choice belongs to the episode sampler. An image without a mask or unreadable is skipped
and counted; an all-background mask is dropped (see `common`). A missing `Images/` or
`Annotations/` directory, or an object of `Images/` without its `Annotations/<object>/`, is
an error before anything is written.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from absl import logging

from jaxvrp.data.builders import common

LAYOUT = """
<manual_dir>/Images/<object>/<name>.jpg
<manual_dir>/Annotations/<object>/<name>.png   (mask: foreground = non-zero)
"""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _object_mask(path: Path, class_id: int, size) -> np.ndarray:
    del size
    return common.read_nonzero_mask(path).astype(np.uint8) * np.uint8(class_id)


class PerSeg(common.FewShotBuilder):
    """PerSeg from a local copy (layout: module docstring)."""

    name = "perseg"
    SPLITS = ("test",)
    LAYOUT = LAYOUT
    DESCRIPTION = (
        "PerSeg (PerSAM): 40 personal objects, a few images each with masks, one record per image."
    )
    HOMEPAGE = "https://github.com/ZrrSkywalker/Personalize-SAM"
    CITATION = """@article{zhang2023personalize,
  title={Personalize Segment Anything Model with One Shot},
  author={Zhang, Renrui and Jiang, Zhengkai and Guo, Ziyu and Yan, Shilin and Pan, Junting
          and Dong, Hao and Gao, Peng and Li, Hongsheng},
  journal={arXiv preprint arXiv:2305.03048}, year={2023}}"""

    def check_layout(self, root: Path) -> dict:
        check = dict(dataset=self.name, layout=LAYOUT)
        images = common.require_dir(root / "Images", what="Images", **check)
        annotations = common.require_dir(root / "Annotations", what="Annotations", **check)
        objects = common.subdirs(images)
        if not objects:
            raise ValueError(
                f"{self.name}: no object directories in {images}\n"
                f"Expected layout of the {self.name} manual directory:\n{LAYOUT.strip()}"
            )
        for name in objects:
            common.require_dir(annotations / name, what=f"annotation ({name})", **check)
        if len(objects) != 40:
            logging.warning("%s: %d objects (the full dataset has 40)", self.name, len(objects))
        return {"class_names": objects, "images": images, "annotations": annotations}

    def candidates(self, root: Path, split: str, layout: dict):
        for class_id, name in enumerate(layout["class_names"], start=1):
            folder = layout["images"] / name
            for file in common.image_files(folder, IMAGE_SUFFIXES):
                stem = Path(file).stem
                mask = layout["annotations"] / name / f"{stem}.png"
                yield common.Candidate(
                    image_id=f"{name}/{stem}",
                    image_path=folder / file,
                    load_mask=partial(_object_mask, mask, class_id),
                )
