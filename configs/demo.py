"""What `python -m jaxvrp.demo` runs: every method's config and the settings the demo puts on
top of them, in one place.

Every method is a learner config file of `configs/` with `arg`; `shared` is applied to each
(the same data, SAM, batch and training schedule for all), then the method's own
`overrides`. Trainable methods are trained on fold 0's base classes and every method is
evaluated on the same episodes of the novel classes. `--runlocal` (arg "runlocal") runs
every stage at a tiny size (the tests). The paths (`frozen.sam_checkpoint`,
`data.data_dir`, `data.feature_cache`) come from the command line (the demo precomputes the
frozen features, `jaxvrp.precompute`).
"""

import ml_collections


def method(
    title: str, config: str, workdir: str = "", arg: str = "", **overrides
) -> ml_collections.ConfigDict:
    """A row of the demo's table: `configs/<config>.py:<arg>` (default arg: `ARG`) with
    `overrides` ("a.b" keys); a trainable one trains in `OUT/<workdir>` (default: the
    config's name)."""
    m = ml_collections.ConfigDict()
    m.title = title
    m.config = config
    m.arg = arg or ARG
    m.workdir = workdir or config
    m.overrides = ",".join(f"{k}={v}" for k, v in overrides.items())
    return m


# the embedded SAM (jaxvrp/assets/sam_tiny_128) and its own encoder as the backbone: the
# only models on the machine that have seen these images' kind (no download, no extra
# training, no extra parameters); not a paper setting
ARG = "dataset=procedural,backbone=sam_tiny_128,sam=tiny_128"
SAM_ONLY = "dataset=procedural,sam=tiny_128"  # methods that read no backbone


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = set(filter(None, (arg or "").split(",")))
    if flags - {"runlocal"}:
        raise ValueError(f"unknown configs/demo.py args {sorted(flags - {'runlocal'})}: runlocal")
    runlocal = "runlocal" in flags
    c = ml_collections.ConfigDict()

    s = c.shared = ml_collections.ConfigDict()
    s.data = ml_collections.ConfigDict()
    s.data.image_size = 128  # the procedural images' and the embedded SAM's size
    s.data.procedural_config = "default"  # 2000 train / 500 test images
    # 250 episodes and 350 steps keep the whole demo under 10 minutes on 2 cores (README;
    # `--steps 1000`, the earlier default, trains VRP-SAM to 67.1 mIoU instead of 65.3)
    s.data.num_eval_episodes = 250
    s.batch_size = 8
    # the papers' architectures at a CPU budget: shorter training, a higher learning rate
    s.optimizer = ml_collections.ConfigDict()
    s.optimizer.lr = 1e-3
    s.optimizer.schedule = "cosine"
    s.steps_per_epoch = 350
    s.epochs = 1
    s.log_every = 50
    s.checkpoint_every = 250
    if runlocal:
        s.data.procedural_config = "small"
        s.data.image_size = 64
        s.data.num_eval_episodes = 8
        s.batch_size = 2
        s.steps_per_epoch = 3
        s.log_every = 1
        s.checkpoint_every = 3

    queries = "8" if runlocal else "50"
    c.methods = [
        method("VRP-SAM", "vrp_sam", **{"model.num_queries": queries}),
        # K = 4 samples instead of the paper's 10 (CPU budget)
        method(
            "ProSAM",
            "prosam",
            **{"model.num_queries": queries, "model.num_samples": 2 if runlocal else 4},
        ),
        # HSNet on the SAM encoder's stages pooled to a pyramid (our adaptation, docs/hsnet.md)
        # and SAMIC, its heat maps as SAM point prompts (paper architecture, demo schedule)
        method("HSNet", "hsnet"),
        # SAMIC with the max-normalised spatial softmax: the paper's scale-free losses leave
        # the channel softmax's level free, and its heat maps peak under the threshold 0.5
        # (0.0 mIoU here; docs/samic.md "Heat-map level")
        method("SAMIC", "samic", **{"model.heatmap": "spatial_softmax"}),
        method("GP-SAM (points)", "gp_sam", **{"model.mode": "points"}),
        method("GP-SAM (box)", "gp_sam", **{"model.mode": "box"}),
        method("GP-SAM (points+box)", "gp_sam", **{"model.mode": "points+box"}),
        # training-free, official Personalize-SAM settings (PerSAM-F: a 1000-step fit of
        # its two mask weights on each episode's reference)
        method("PerSAM", "persam", arg=SAM_ONLY),
        method(
            "PerSAM-F",
            "persam",
            arg=f"persam_f,{SAM_ONLY}",
            **({"model.train_steps": 8} if runlocal else {}),
        ),
        # training-free test-time prompt tuning (setting 2 of the SSPrompt issue): N = 16 prompts
        # fitted for 20 Adam steps per episode instead of the 100 x 100 of configs/ssprompt.py
        # (CPU budget)
        method(
            "SSPrompt",
            "ssprompt",
            arg=SAM_ONLY,
            **{"model.num_prompts": 4 if runlocal else 16, "model.steps": 2 if runlocal else 20},
        ),
        # training-free, Matcher (official coco.sh settings) matching with the embedded SAM's
        # own embedding (no DINOv2 weights ship), 4 random subsets per size instead of 64 and
        # an 8 x 8 dense grid instead of 32 x 32 (CPU budget), and without the four mask-quality
        # thresholds (set for ViT-H: the embedded SAM's masks score under them, docs/matcher.md);
        # prompts decoded 4 at a time, so the subset slots left empty by 4 draws per size are
        # skipped (the same masks; 77 -> ~45 s for the row, docs/benchmarks.md)
        method(
            "Matcher (SAM feat., no filters)",
            "matcher",
            arg=f"encoder=sam,iterations=4,grid=8,filters=off,{SAM_ONLY}",
            **{"model.points_per_batch": 4},
        ),
        method("SAM + oracle box", "oracle_box"),
    ]
    c.examples = 8  # episodes shown in examples.png
    c.lock()
    return c
