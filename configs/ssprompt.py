"""SSPrompt on SAM (`jaxvrp.learners.ssprompt`, `jaxvrp.ssprompt_semantic`, docs/ssprompt.md).

Setting 2, test-time prompt tuning on few-shot episodes (a training-free learner):

    python -m jaxvrp.evaluate --config configs/ssprompt.py:dataset=pascal5i,fold=0 --workdir W \
        --config.frozen.sam_checkpoint=ckpt/sam_vit_h

Setting 1, the paper's protocol (semantic segmentation, 16 labelled images per class):

    python -m jaxvrp.ssprompt_semantic --config configs/ssprompt.py:semantic --workdir W \
        --config.frozen.sam_checkpoint=ckpt/sam_vit_h

`arg`: comma-separated `key=value` (the keys of `jaxvrp.configs`, plus `n` = the number of
spatial prompts N, `weight` = a fixed fusion weight ŵ instead of the learned one) and flags:
`semantic` (setting 1), `spaprompt` (SpaPrompt alone, no SemPrompt), `runlocal` (a tiny
random SAM on the procedural data, seconds on one CPU). paper = papers/ssprompt.md; "ours" =
not stated in the paper, chosen here.
"""

import ml_collections

from jaxvrp import configs

FLAGS = ("semantic", "spaprompt")
EXTRA = {"n": int, "weight": float}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    items = [x for x in (arg or "").split(",") if x]
    flags = {x for x in items if x in FLAGS}
    values, other = configs.parse_arg(",".join(x for x in items if x not in FLAGS), extra=EXTRA)
    if "backbone" in values:
        raise ValueError("unknown config arg 'backbone': SSPrompt reads only the SAM")
    runlocal, setting1 = "runlocal" in other, "semantic" in flags
    if setting1 and "fold" in values:
        raise ValueError("setting 1 (semantic) learns every class: it has no fold")
    c = configs.base("ssprompt", values, runlocal)
    c.seed = 0

    # the keyword arguments of jaxvrp.learners.ssprompt.make_config
    c.model = ml_collections.ConfigDict()
    c.model.sam = values.get("sam", "test_small_image" if runlocal else "vit_h")
    c.model.sam_dtype = "float32"
    c.model.num_prompts = values.get("n", 4 if runlocal else 100)  # paper §4.2: N = 100
    c.model.semantic = "spaprompt" not in flags  # SemPrompt: our adaptation (no text encoder)
    # None: ŵ = sigmoid(θ) learned (paper eq. 4 / 6); a number: that fixed ŵ (Table 5)
    c.model.fixed_weight = values.get("weight")
    c.model.pad_token = True  # SAM's padding token after the prompts (ours)

    if setting1:
        c.setting = "semantic"
        c.data.dataset = values.get("dataset", "procedural")  # or pascal5i (full VOC maps)
        c.data.shots = values.get("shots", 4 if runlocal else 16)  # paper: 16 per class
        c.data.shot_seed = 0  # the seeded k-shot list (saved as workdir/kshot.json)
        c.data.max_eval_images = 16 if runlocal else 0  # validation images scored; 0 = all
        # paper: shorter side 512; ours: square images, the procedural images' own size
        c.data.image_size = 64 if runlocal else (128 if c.data.dataset == "procedural" else 512)
        c.optimizer = ml_collections.ConfigDict()
        c.optimizer.lr = 1e-3  # paper §4.2: base lr 1e-3
        c.optimizer.weight_decay = 1e-4  # paper §4.2
        c.optimizer.power = 0.9  # paper §4.2: poly schedule, power 0.9
        c.optimizer.momentum = 0.9  # ours (paper: "SGD"; DeepLab's momentum)
        c.batch_size = 2 if runlocal else 8  # paper: 2 (1 GPU) or 8 (4 GPUs)
        # ours (paper: not stated): 20 classes x 16 images at batch 8 = 40 steps an epoch
        c.epochs = 1 if runlocal else 50
        c.steps_per_epoch = 3 if runlocal else 40
        c.log_every = 1 if runlocal else 20
        c.checkpoint_every = 3 if runlocal else 500
    else:
        c.setting = "episodes"
        c.model.steps = 3 if runlocal else 100  # ours: Adam steps per episode
        c.model.lr = 1e-2  # ours
        c.model.seed = 0  # seed of the points sampled in the reference annotation
        c.data.dataset = values.get("dataset", "procedural" if runlocal else "pascal5i")
    c.lock()
    return c


def sweep_weight_and_prompts(add):
    """Table 5: learned vs fixed (0.5, the plain average) weight x SpaPrompt / SSPrompt
    (SpaPrompt + our SemPrompt). Either setting."""
    for semantic in (False, True):
        for weight in (None, 0.5):
            add(**{"model.semantic": semantic, "model.fixed_weight": weight})


def sweep_shots(add):
    """Table 6: 16 / 12 / 8 / 4 labelled images per class (setting 1, `semantic` arg)."""
    for shots in (16, 12, 8, 4):
        add(**{"data.shots": shots})


def sweep_num_prompts(add):
    """The number of spatial prompts N (paper: 100, from SEEM): square grids."""
    for n in (16, 36, 64, 100, 144):
        add(**{"model.num_prompts": n})


def sweep_folds(add):
    """Setting 2 on the four folds (PASCAL-5i / COCO-20i)."""
    for fold in range(4):
        add(**{"data.fold": fold})
