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
| backbone | resnet50, resnet101, vgg16 (torchvision layouts) | resnet50 |
| runlocal | (flag) tiny backbone, 64 px procedural data, seconds on one CPU | off |

`model` holds exactly the keyword arguments of `jaxvrp.learners.hsnet.make_config` (HSNet
prompts no SAM, so there is no `model.sam`). Sources: code = the official repository
(`juhongm999/hsnet`: `train.py`, `test.py`, README), paper = HSNet (ICCV 2021), SAMIC =
papers/samic.md.
"""

import ml_collections

_KEYS = {"dataset": str, "fold": int, "label": str, "shots": int, "backbone": str}


def _parse(arg: str | None) -> tuple[dict, bool]:
    values, runlocal = {}, False
    for item in filter(None, (arg or "").split(",")):
        if "=" in item:
            k, v = item.split("=", 1)
            if k not in _KEYS:
                raise ValueError(f"unknown config arg {k!r}; known: {sorted(_KEYS)} and runlocal")
            values[k] = _KEYS[k](v)
        elif item == "runlocal":
            runlocal = True
        else:
            raise ValueError(f"config arg {item!r} is neither key=value nor 'runlocal'")
    return values, runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    values, runlocal = _parse(arg)
    dataset = values.get("dataset", "procedural" if runlocal else "pascal5i")
    c = ml_collections.ConfigDict()
    c.learner = "hsnet"
    c.seed = 0  # code: test.py fix_randseed(0) (training epochs reseed with None)

    c.model = ml_collections.ConfigDict()
    c.model.backbone = values.get("backbone", "resnet50")  # code: resnet50 / resnet101 / vgg16
    c.model.num_4d_layers = 3  # code learner.py; SAMIC Table 5 ablates 1-4
    c.model.square_upsample_fix = False  # code: decoder upsamples to (2W, 2W)

    c.frozen = ml_collections.ConfigDict()
    c.frozen.backbone_checkpoint = ""  # conversion.backbone output; empty = random
    c.frozen.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.dataset = dataset
    c.data.data_dir = ""
    c.data.manual_dir = ""
    c.data.fold = values.get("fold", 0)
    c.data.shots = values.get("shots", 1)  # code trains 1-shot; test.py --nshot
    c.data.annotation = values.get("label", "mask")  # code: masks
    c.data.image_size = 400  # code: FSSDataset.initialize(img_size=400)
    # code: 1000 test episodes (PASCAL, COCO); FSS-1000 uses every test image (2400).
    c.data.num_eval_episodes = 2400 if dataset == "fss1000" else 1000
    c.data.num_workers = 0

    c.batch_size = 40 if dataset == "coco20i" else 20  # code README: bsz 20 PASCAL/FSS, 40 COCO
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"  # code train.py: optim.Adam
    c.optimizer.lr = 1e-3  # code train.py --lr
    c.optimizer.weight_decay = 0.0  # code: none
    c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.999, 1e-8  # torch Adam defaults
    c.optimizer.schedule = "constant"  # code: no schedule
    c.epochs = 2000  # code train.py --niter (best checkpoint by val mIoU, val = test fold)
    c.steps_per_epoch = 1000  # episodes per epoch / batch; set to your training list's size
    c.total_steps = c.get_ref("epochs") * c.get_ref("steps_per_epoch")
    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3

    if runlocal:
        c.model.backbone = values.get("backbone", "resnet_test")
        c.data.image_size = 64
        c.data.num_eval_episodes = 8
        c.batch_size = 2
        c.epochs, c.steps_per_epoch = 1, 4
        c.log_every = 1
        c.checkpoint_every = 2
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
