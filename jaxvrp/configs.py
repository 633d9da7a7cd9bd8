"""Shared construction of the ml-collections configs in `configs/`.

Each `configs/<learner>.py` defines `get_config(arg)`: it parses `arg` with `parse_arg`, takes
the blocks every learner shares from `base` (run, frozen models, data, optimiser, schedule of
steps) and adds its own `model` block (the keyword arguments of its `Learner.make_config`)
and its own training defaults, each commented with its source. `arg` is a comma-separated
list of `key=value` overrides and flags, e.g.
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

A config file may accept more keys (`parse_arg(arg, extra=...)`). Defaults cite their source:
paper = the learner's paper (`papers/`), code = the official repository.
"""

from typing import Any

import ml_collections

KEYS = {"dataset": str, "fold": int, "label": str, "shots": int, "backbone": str, "sam": str}


def parse_arg(arg: str | None, extra: dict[str, type] | None = None) -> tuple[dict, set[str]]:
    """`arg` -> ({key: value}, {flags}); the only flag is "runlocal"."""
    keys = {**KEYS, **(extra or {})}
    values, flags = {}, set()
    for item in filter(None, (arg or "").split(",")):
        if "=" in item:
            k, v = item.split("=", 1)
            if k not in keys:
                raise ValueError(f"unknown config arg {k!r}; known: {sorted(keys)} and runlocal")
            values[k] = keys[k](v)
        elif item == "runlocal":
            flags.add(item)
        else:
            raise ValueError(f"config arg {item!r} is neither key=value nor 'runlocal'")
    return values, flags


def base(learner: str, values: dict, runlocal: bool) -> ml_collections.ConfigDict:
    """The blocks every learner's config shares (unlocked; the config file adds `model`
    and locks it). Training defaults are VRP-SAM's; a learner's file overrides its own."""
    dataset = values.get("dataset", "procedural" if runlocal else "pascal5i")
    c = ml_collections.ConfigDict()
    c.learner = learner  # the registry name (jaxvrp.learners.registry)
    c.learner_module = ""  # module registering a learner defined outside jaxvrp
    c.seed = 321  # VRP-SAM code (train.py --seed) and ProSAM paper §5.1
    c.distributed = False  # call jax.distributed.initialize() (multi-host)
    # Explicit cluster for hosts without a scheduler; empty = auto-detect (SLURM, TPU, ...).
    c.coordinator_address = ""
    c.num_processes = 0
    c.process_id = -1

    c.frozen = ml_collections.ConfigDict()
    c.frozen.sam_checkpoint = ""  # conversion.sam output; empty = random (runlocal/tests)
    c.frozen.backbone_checkpoint = ""  # conversion.backbone output; empty = random
    c.frozen.seed = 0
    # Random frozen weights (an empty checkpoint above) are refused unless allowed: nothing
    # trained on them means anything. runlocal (and tests, benchmarks) allow them.
    c.frozen.allow_random = runlocal

    c.data = ml_collections.ConfigDict()
    c.data.dataset = dataset
    c.data.data_dir = ""  # where the TFDS builds live (default: ~/tensorflow_datasets)
    c.data.manual_dir = ""  # the user's raw dataset files, read when building
    c.data.fold = values.get("fold", 0)
    c.data.shots = values.get("shots", 1)
    c.data.annotation = values.get("label", "mask")
    c.data.image_size = 512  # VRP-SAM paper §4.4 / code FSSDataset img_size
    # HSNet code (data/{pascal,coco,fss}.py __len__): 1000 episodes; FSS-1000 one per test image
    c.data.num_eval_episodes = 2400 if dataset == "fss1000" else 1000
    # Evaluation episodes: "hsnet" = HSNet's own test episodes (its split lists and seeded
    # draws, jaxvrp.data.hsnet), the protocol of the published tables; "jaxvrp" = jaxvrp's
    # seeded per-episode draws (docs/data.md).
    c.data.protocol = default_protocol(dataset)
    c.data.hsnet_splits = ""  # directory of HSNet's split lists; empty = the shipped copy
    c.data.num_workers = 0
    c.data.procedural_config = "default"
    c.data.embedding_cache = ""  # directory caching evaluation targets' SAM embeddings
    # Precomputed frozen SAM embeddings (`jaxvrp.precompute`, docs/training.md): a directory
    # the train and eval steps read the query embeddings from instead of running the encoder
    # ("" = run the encoder in the step, as before); `precompute` runs the pass at the start
    # of training / evaluation (finished entries are skipped); `feature_dtype` is how they
    # are stored: "float32", or "bfloat16" (exact) when model.sam_dtype is "bfloat16".
    c.data.feature_cache = ""
    c.data.precompute = False
    c.data.feature_dtype = "float32"
    # Also precompute the frozen backbone's annotation-independent stages into
    # `feature_cache` (VRP-SAM, ProSAM, GP-SAM: the query's layer2-4, each reference's
    # layer2-3; ~59 MB per image for ResNet-50 at 512 px in float32, docs/training.md).
    c.data.backbone_features = False
    # Seed of the episode sampler; -1 = `seed` (as before this key existed). Separate from
    # `seed` so that vmapped members of different seeds can share one data order
    # (docs/sweeps.md). A sentinel, not a FieldReference to `seed`: setting a
    # FieldReference'd key sets the key it refers to, so `--config.data.seed=1` would
    # silently change `seed` too.
    c.data.seed = -1
    # Training episodes use this fraction of each class's records (a seeded subset drawn with
    # `data.seed`, at least shots + 1; SAMIC §4.2 trains on 20 %); 1 = all of them.
    c.data.train_fraction = 1.0

    c.batch_size = 8  # VRP-SAM paper §4.4: total batch 8 (4 GPUs x 2)
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 1e-4  # VRP-SAM paper (COCO)
    c.optimizer.weight_decay = 1e-6  # VRP-SAM paper / code
    c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.999, 1e-8  # VRP-SAM code betas
    c.optimizer.schedule = "cosine"  # VRP-SAM paper; or cosine_restarts, constant
    c.optimizer.restart_steps = 0  # period of cosine_restarts
    c.epochs = 50  # VRP-SAM paper (COCO)
    c.steps_per_epoch = 1000  # episodes per epoch / batch; set to your training list's size
    c.total_steps = c.get_ref("epochs") * c.get_ref("steps_per_epoch")
    c.stop_after = 0  # stop this process after N steps (pre-emption tests); 0 = to the end
    # vmapped sweep members (jaxvrp.stacked, docs/sweeps.md): "map" runs each member's
    # operations as its separate run does (equal to it); "vmap" batches the members
    c.stack = ml_collections.ConfigDict()
    c.stack.mode = "map"
    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    # Stop when the mean training loss of a log window (`log_every` steps) has not improved
    # on the best window by more than `min_delta` for `patience` windows (SAMIC §4.2);
    # 0 = off. Needs `checkpoint_every` to be a multiple of `log_every` (exact resumes).
    c.early_stopping = ml_collections.ConfigDict()
    c.early_stopping.patience = 0
    c.early_stopping.min_delta = 0.0
    if runlocal:
        c.data.image_size = 64
        c.data.num_eval_episodes = 8
        c.data.procedural_config = "small"
        c.batch_size = 2
        c.epochs, c.steps_per_epoch = 1, 4
        c.log_every = 1
        c.checkpoint_every = 2
    return c


def default_protocol(dataset: str) -> str:
    """The evaluation protocol of a dataset by default: HSNet's where it has one, PerSAM's
    for perseg."""
    from jaxvrp.data import hsnet, perseg

    if dataset == perseg.DATASET:
        return perseg.PROTOCOL
    return hsnet.PROTOCOL if dataset in hsnet.DATASETS else "jaxvrp"


def sam_and_backbone(c: ml_collections.ConfigDict, values: dict, runlocal: bool) -> None:
    """`model.backbone`, `model.sam` and `model.sam_dtype`, shared by the learners that
    prompt a SAM from a backbone's features."""
    c.model = ml_collections.ConfigDict()
    default_backbone = "resnet_test_deepstem" if runlocal else "resnet50_deepstem"
    c.model.backbone = values.get("backbone", default_backbone)  # VRP-SAM code / paper: R50
    c.model.sam = values.get("sam", "test_small_image" if runlocal else "vit_h")  # code: vit_h
    c.model.sam_dtype = "float32"  # "bfloat16" runs the frozen SAM in bf16


def override(config: ml_collections.ConfigDict, updates: dict[str, Any], where: str = "") -> None:
    """Set `updates` (nested dicts, or "a.b" keys) on `config`; a key the config does not
    have is an error naming it (a typo would otherwise be silently ignored)."""
    for key, value in updates.items():
        node, *rest = key.split(".", 1)
        if rest:
            value, key = {rest[0]: value}, node
        if key not in config:
            raise KeyError(f"{where or 'config'} has no key {key!r}; known: {sorted(config)}")
        if isinstance(value, dict) and isinstance(config[key], ml_collections.ConfigDict):
            override(config[key], value, f"{where}.{key}".strip("."))
        else:
            config[key] = value


def data_seed(config) -> int:
    """The seed of the episode sampler: `config.data.seed`, or `config.seed` when it is -1
    (or absent, for configs written before the key existed)."""
    seed = int(config.data.get("seed", -1))
    return int(config.seed) if seed < 0 else seed
