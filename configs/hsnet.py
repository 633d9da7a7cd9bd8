"""HSNet (Min et al., ICCV 2021) on PASCAL-5i / COCO-20i / FSS-1000 / procedural.

    python -m jaxvrp.train --config configs/hsnet.py:dataset=pascal5i,fold=0 \
        --workdir /tmp/hsnet --config.frozen.backbone_checkpoint=ckpt/resnet50 ...

`arg` is a comma-separated list of `key=value` overrides and flags:

| key | values | default |
| --- | --- | --- |
| dataset | pascal5i, coco20i, fss1000, coco2pascal, procedural | pascal5i |
| fold | 0..3 | 0 |
| label | point, scribble, box, mask (the reference annotation) | mask |
| shots | K >= 1 (evaluation; HSNet trains 1-shot) | 1 |
| backbone | resnet50, resnet101, vgg16 (torchvision layouts); sam_<variant> (ours) | resnet50 |
| sam | only with backbone=sam_<variant>: that variant (its checkpoint has the weights) | none |
| runlocal | (flag) tiny backbone, 64 px procedural data, seconds on one CPU | off |

`model` holds exactly the keyword arguments of `jaxvrp.learners.hsnet.make_config` (HSNet
prompts no SAM: `model.sam` is None, except with the SAM-encoder backbone, our adaptation
for the CPU demo, `docs/hsnet.md`). Sources: code = the official repository
(`juhongm999/hsnet`: `train.py`, `test.py`, README), paper = HSNet (ICCV 2021), SAMIC =
papers/samic.md.
"""

import ml_collections

from jaxvrp import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    values, flags = configs.parse_arg(arg)
    runlocal = "runlocal" in flags
    default_backbone = "resnet_test" if runlocal else "resnet50"
    backbone = values.get("backbone", default_backbone)
    if "sam" in values and backbone != f"sam_{values['sam']}":
        raise ValueError(
            f"config arg sam={values['sam']!r}: HSNet prompts no SAM; 'sam' is only the SAM "
            f"whose encoder is the backbone (backbone=sam_{values['sam']}), got {backbone!r}"
        )
    c = configs.base("hsnet", values, runlocal)
    dataset = c.data.dataset
    c.seed = 0  # code: test.py fix_randseed(0) (training epochs reseed with None)

    c.model = ml_collections.ConfigDict()
    c.model.backbone = backbone  # code: resnet50/101, vgg16; ours: sam_<variant> (hsnet.py)
    c.model.sam = values.get("sam")  # None, or the SAM of a sam_<variant> backbone
    c.model.num_4d_layers = 3  # code learner.py; SAMIC Table 5 ablates 1-4
    c.model.square_upsample_fix = False  # code: decoder upsamples to (2W, 2W)

    c.data.annotation = values.get("label", "mask")  # code: masks
    if not runlocal:
        c.data.image_size = 400  # code: FSSDataset.initialize(img_size=400)
        # code: 1000 test episodes (PASCAL, COCO); FSS-1000 uses every test image (2400)
        c.data.num_eval_episodes = 2400 if dataset == "fss1000" else 1000
        c.batch_size = 40 if dataset == "coco20i" else 20  # code README: 20 PASCAL/FSS, 40 COCO
    c.optimizer.lr = 1e-3  # code train.py --lr; optim.Adam (= AdamW with no weight decay)
    c.optimizer.weight_decay = 0.0  # code: none
    c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.999, 1e-8  # torch Adam defaults
    c.optimizer.schedule = "constant"  # code: no schedule
    c.epochs = 1 if runlocal else 2000  # code train.py --niter (best by val mIoU = test fold)
    c.lock()
    return c


def sweep_folds(add):
    """The paper's main tables: 4 folds."""
    for fold in range(4):
        add(**{"data.fold": fold})


def sweep_backbones(add):
    """The paper's backbones (VGG-16, ResNet-50, ResNet-101)."""
    for backbone in ("vgg16", "resnet50", "resnet101"):
        add(**{"model.backbone": backbone})


def sweep_depth(add):
    """SAMIC Table 5: center-pivot layers per block (1-4)."""
    for n in (1, 2, 3, 4):
        add(**{"model.num_4d_layers": n})
