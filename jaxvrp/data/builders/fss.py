"""FSS-1000: 1000 classes × 10 images with binary masks, split by class (`fss1000`).

Expected layout of the manual directory::

    <manual_dir>/
      fewshot_data/<class_name>/<n>.jpg     the images (n = 1..10)
      fewshot_data/<class_name>/<n>.png     their binary masks (foreground >= 128)
      splits/train.txt                      class names, one per line: HSNet's
      splits/val.txt                        data/splits/fss/{trn,val,test}.txt
      splits/test.txt                       (520 / 240 / 240 classes; trn.txt -> train.txt)

Class ids 1..N are the ranks of all class directories under `fewshot_data/` in sorted name
order (1..1000 for the full dataset), whatever split a class is in; `info.metadata` holds
`class_names` (id c is class_names[c - 1]) and `split_classes` (split -> class names), which
`jaxvrp.data.folds.fss_classes` turns into ids. Splits "train", "val" and "test" contain only
the images of that split's classes: one record per image, classes in sorted name order,
images in numeric order; `image_id` is `<class_name>/<n>`. A mask is foreground where its
grey level is >= 128, as HSNet thresholds it. Images without a mask or unreadable are skipped
and counted; all-background masks are dropped (see `common`).

A listed class without a directory, a class in two lists or an empty list is an error
(`ValueError`) before anything is written.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from absl import logging

from jaxvrp.data.builders import common

LAYOUT = """
<manual_dir>/fewshot_data/<class_name>/<n>.jpg   (image)
<manual_dir>/fewshot_data/<class_name>/<n>.png   (binary mask)
<manual_dir>/splits/train.txt, val.txt, test.txt (class names, one per line: HSNet's
    data/splits/fss/trn.txt, val.txt, test.txt)
"""

IMAGE_SUFFIXES = (".jpg", ".jpeg")


def _binary_class_mask(path: Path, class_id: int, threshold: int, size) -> np.ndarray:
    del size
    return common.read_grey_mask(path, threshold).astype(np.uint8) * np.uint8(class_id)


class Fss1000(common.FewShotBuilder):
    """FSS-1000 from a local copy plus HSNet's class split lists (layout: module docstring)."""

    name = "fss1000"
    SPLITS = ("train", "val", "test")
    LAYOUT = LAYOUT
    DESCRIPTION = (
        "FSS-1000 (1000 classes, 10 images each, binary masks), one record per image, split "
        "by class as in HSNet (520 / 240 / 240)."
    )
    HOMEPAGE = "https://github.com/HKUSTCV/FSS-1000"
    CITATION = """@inproceedings{li2020fss,
  title={FSS-1000: A 1000-Class Dataset for Few-Shot Segmentation},
  author={Li, Xiang and Wei, Tianhan and Chen, Yau Pun and Tai, Yu-Wing and Tang, Chi-Keung},
  booktitle={CVPR}, year={2020}}"""

    def check_layout(self, root: Path) -> dict:
        check = dict(dataset=self.name, layout=LAYOUT)
        data = common.require_dir(root / "fewshot_data", what="fewshot_data", **check)
        class_names = common.subdirs(data)
        if not class_names:
            raise ValueError(
                f"{self.name}: no class directories in {data}\n"
                f"Expected layout of the {self.name} manual directory:\n{LAYOUT.strip()}"
            )
        splits = common.require_dir(root / "splits", what="split-list", **check)
        lists = {
            s: common.read_list(splits / f"{s}.txt", what=f"{s} class list", **check)
            for s in self.SPLITS
        }
        known = set(class_names)
        for split, names in lists.items():
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ValueError(
                    f"{self.name}: {len(unknown)} classes of {splits / f'{split}.txt'} have no "
                    f"directory in {data}: {unknown[:10]}"
                )
        seen: dict[str, str] = {}
        for split, names in lists.items():
            for n in names:
                if n in seen:
                    raise ValueError(
                        f"{self.name}: class {n!r} is in both {seen[n]}.txt and {split}.txt "
                        f"under {splits}; the class splits must be disjoint"
                    )
                seen[n] = split
        sizes = {s: len(v) for s, v in lists.items()}
        if len(class_names) != 1000 or sizes != {"train": 520, "val": 240, "test": 240}:
            logging.warning(
                "%s: %d classes, split sizes %s (the full dataset has 1000 classes split "
                "520 / 240 / 240)",
                self.name,
                len(class_names),
                sizes,
            )
        split_classes = {s: sorted(v) for s, v in lists.items()}
        return {
            "class_names": class_names,
            "metadata": {"split_classes": split_classes},
            "data": data,
            **split_classes,
        }

    def candidates(self, root: Path, split: str, layout: dict):
        ids = {name: i + 1 for i, name in enumerate(layout["class_names"])}
        for name in layout[split]:
            folder = layout["data"] / name
            for file in common.image_files(folder, IMAGE_SUFFIXES):
                stem = Path(file).stem
                yield common.Candidate(
                    image_id=f"{name}/{stem}",
                    image_path=folder / file,
                    load_mask=partial(_binary_class_mask, folder / f"{stem}.png", ids[name], 128),
                )
