"""PASCAL-5i: VOC2012 images with the SBD-augmented class masks (`pascal5i`).

Expected layout of the manual directory::

    <manual_dir>/
      VOC2012/JPEGImages/<id>.jpg                 VOC2012 images (VOCtrainval_11-May-2012)
      VOC2012/SegmentationClassAug/<id>.png       SBD-augmented class masks: palette or
                                                  grayscale PNG, 0 background, 1..20 the VOC
                                                  classes, 255 ignore (object boundaries)
      splits/train.txt                            one image id per line
      splits/val.txt

`SegmentationClassAug` is the 12,031-mask set distributed with DeepLab / HSNet / PANet
("SegmentationClassAug.zip"; SBD's masks converted to PNG plus VOC2012's own). The split lists
are the standard ones of HSNet / PANet / PFENet: `train.txt` = the SBD-augmented training set
(`train_aug.txt`, 10,582 images, which excludes VOC val) and `val.txt` = VOC2012
`ImageSets/Segmentation/val.txt` (1,449 images). A line may be a bare id (`2007_000032`) or a
DeepLab-style `/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png` pair;
blank lines and `#` comments are ignored, repeated ids are written once.

Records: splits "train" and "val", one record per listed image, in list order; `image_id` is
the VOC id; `mask` keeps 255 (ignore) as is; class ids 1..20 in VOC order
(`jaxvrp.data.folds.PASCAL_CLASSES`). The fold (which classes are base/novel) is chosen when
episodes are sampled (`jaxvrp.data.folds.pascal_classes`), not here. Listed images whose
image or mask is missing or unreadable are skipped and counted; images with no class pixel
are dropped (see `common`).
"""

from functools import partial
from pathlib import Path

from absl import logging

from jaxvrp.data import folds
from jaxvrp.data.builders import common

LAYOUT = """
<manual_dir>/VOC2012/JPEGImages/<id>.jpg
<manual_dir>/VOC2012/SegmentationClassAug/<id>.png   (class-index PNG: 0, 1..20, 255)
<manual_dir>/splits/train.txt   (SBD-augmented train list, train_aug.txt, 10,582 ids)
<manual_dir>/splits/val.txt     (VOC2012 ImageSets/Segmentation/val.txt, 1,449 ids)
"""


def _read_mask(path: Path, size: tuple[int, int]):
    del size
    return common.read_index_mask(path)


class Pascal5i(common.FewShotBuilder):
    """PASCAL-5i from a local VOC2012 + SegmentationClassAug copy (layout: module docstring)."""

    name = "pascal5i"
    SPLITS = ("train", "val")
    LAYOUT = LAYOUT
    DESCRIPTION = (
        "PASCAL VOC2012 with SBD-augmented masks, one record per image, for PASCAL-5i "
        "few-shot segmentation."
    )
    HOMEPAGE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"
    CITATION = """@article{everingham2010pascal,
  title={The Pascal Visual Object Classes (VOC) Challenge},
  author={Everingham, Mark and Van Gool, Luc and Williams, Christopher KI and Winn, John
          and Zisserman, Andrew},
  journal={IJCV}, volume={88}, pages={303--338}, year={2010}}"""

    def class_names(self):
        return folds.PASCAL_CLASSES

    def check_layout(self, root: Path) -> dict:
        check = dict(dataset=self.name, layout=LAYOUT)
        voc = common.require_dir(root / "VOC2012", what="VOC2012", **check)
        images = common.require_dir(voc / "JPEGImages", what="image", **check)
        masks = common.require_dir(voc / "SegmentationClassAug", what="mask", **check)
        splits = common.require_dir(root / "splits", what="split-list", **check)
        lists = {
            s: common.read_list(splits / f"{s}.txt", what=f"{s} split list", stems=True, **check)
            for s in self.SPLITS
        }
        overlap = set(lists["train"]) & set(lists["val"])
        if overlap:
            logging.warning(
                "%s: %d images are in both train.txt and val.txt (the standard lists are "
                "disjoint): %s",
                self.name,
                len(overlap),
                sorted(overlap)[:20],
            )
        return {"class_names": folds.PASCAL_CLASSES, "images": images, "masks": masks, **lists}

    def candidates(self, root: Path, split: str, layout: dict):
        for image_id in layout[split]:
            mask_path = layout["masks"] / f"{image_id}.png"
            yield common.Candidate(
                image_id=image_id,
                image_path=layout["images"] / f"{image_id}.jpg",
                load_mask=partial(_read_mask, mask_path),
            )
