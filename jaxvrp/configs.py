"""Shared construction of the ml-collections configs in `configs/`.

`configs/<file>.py` defines `get_config(arg)` by calling `make(learner, arg)`. `arg` is a
comma-separated list of `key=value` overrides and flags, e.g.
`dataset=coco20i,fold=2,label=point,shots=5,backbone=vgg16_bn,sam=vit_b,runlocal`:

| key | values | default |
| --- | --- | --- |
| dataset | pascal5i, coco20i, fss1000, coco2pascal, procedural | pascal5i |
| fold | 0..3 | 0 |
| label | point, scribble, box, mask (the reference annotation) | mask |
| shots | K >= 1 | 1 |
| backbone | any `jaxvrp.backbones` arch | resnet50_deepstem |
| sam | vit_b, vit_l, vit_h, ... | vit_h |
| runlocal | (flag) a tiny model on the procedural data, seconds on one CPU | off |

Every default cites its source; paper = the learner's paper (papers/vrp-sam.md,
papers/prosam.md), code = the official VRP-SAM repository.
"""

import ml_collections

_KEYS = {"dataset": str, "fold": int, "label": str, "shots": int, "backbone": str, "sam": str}


def parse_arg(arg: str | None) -> tuple[dict, set[str]]:
    values, flags = {}, set()
    for item in filter(None, (arg or "").split(",")):
        if "=" in item:
            k, v = item.split("=", 1)
            if k not in _KEYS:
                raise ValueError(f"unknown config arg {k!r}; known: {sorted(_KEYS)} and runlocal")
            values[k] = _KEYS[k](v)
        elif item == "runlocal":
            flags.add(item)
        else:
            raise ValueError(f"config arg {item!r} is neither key=value nor 'runlocal'")
    return values, flags


def make(learner: str, arg: str | None) -> ml_collections.ConfigDict:
    values, flags = parse_arg(arg)
    runlocal = "runlocal" in flags
    dataset = values.get("dataset", "procedural" if runlocal else "pascal5i")
    c = ml_collections.ConfigDict()
    c.learner = learner
    c.seed = 321  # code (train.py --seed) and ProSAM paper §5.1
    c.distributed = False  # call jax.distributed.initialize() (multi-host)
    # Explicit cluster for hosts without a scheduler; empty = auto-detect (SLURM, TPU, ...).
    c.coordinator_address = ""
    c.num_processes = 0
    c.process_id = -1

    c.model = ml_collections.ConfigDict()
    c.model.backbone = values.get("backbone", "resnet50_deepstem")  # code / paper: ResNet-50
    c.model.sam = values.get("sam", "vit_h")  # code: SAM2pred loads vit_h
    c.model.sam_dtype = "float32"  # "bfloat16" runs the frozen SAM in bf16
    c.model.num_queries = 50  # paper §4.3, code --num_query
    c.model.pseudo_mask_minmax = False  # code (paper eq. 2 min-max normalises)
    c.model.annotation_downsample = "nearest"  # code; "any" keeps single-pixel points
    c.model.dropout = 0.5  # code: Dropout2d(p=0.5) after the shared 1x1 conv
    if learner == "prosam":
        c.model.nu = 5.0  # ProSAM paper §5.1
        c.model.num_samples = 10  # ProSAM paper §5.1, K
        c.model.distribution = "student_t"
        c.model.n_per = "prompt"
        c.model.inference = "mean"  # ProSAM paper §4.3

    c.frozen = ml_collections.ConfigDict()
    c.frozen.sam_checkpoint = ""  # conversion.sam output; empty = random (runlocal/tests)
    c.frozen.backbone_checkpoint = ""  # conversion.backbone output; empty = random
    c.frozen.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.dataset = dataset
    c.data.data_dir = ""  # where the TFDS builds live (default: ~/tensorflow_datasets)
    c.data.manual_dir = ""  # the user's raw dataset files, read when building
    c.data.fold = values.get("fold", 0)
    c.data.shots = values.get("shots", 1)
    c.data.annotation = values.get("label", "mask")
    c.data.image_size = 512  # paper §4.4 / code FSSDataset img_size
    c.data.num_eval_episodes = 1000  # paper §4.4 (HSNet protocol)
    c.data.num_workers = 0
    c.data.procedural_config = "default"
    c.data.embedding_cache = ""  # directory caching evaluation targets' SAM embeddings

    c.batch_size = 8  # paper §4.4: total batch 8 (4 GPUs x 2)
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 2e-4 if dataset == "pascal5i" and learner == "vrp_sam" else 1e-4  # paper
    c.optimizer.weight_decay = 1e-6  # paper / code
    c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.999, 1e-8  # code betas
    c.optimizer.schedule = "cosine" if learner == "vrp_sam" else "cosine_restarts"  # papers
    c.optimizer.restart_steps = 0  # ProSAM: 15 epochs, set from steps_per_epoch below
    c.epochs = (100 if dataset == "pascal5i" else 50) if learner == "vrp_sam" else 100  # papers
    c.steps_per_epoch = 1000  # episodes per epoch / batch; set to your training list's size
    c.total_steps = c.get_ref("epochs") * c.get_ref("steps_per_epoch")
    c.stop_after = 0  # stop this process after N steps (pre-emption tests); 0 = to the end
    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    if learner == "prosam":
        c.optimizer.restart_steps = 15 * c.get_ref("steps_per_epoch")  # ProSAM paper §5.1

    if runlocal:
        c.model.backbone = values.get("backbone", "resnet_test_deepstem")
        c.model.sam = values.get("sam", "test_small_image")
        c.model.num_queries = 8
        if learner == "prosam":
            c.model.num_samples = 2
        c.data.image_size = 64
        c.data.num_eval_episodes = 8
        c.data.procedural_config = "small"
        c.batch_size = 2
        c.epochs, c.steps_per_epoch = 1, 4
        if learner == "prosam":
            c.optimizer.restart_steps = 2
        c.log_every = 1
        c.checkpoint_every = 2
    c.lock()
    return c
