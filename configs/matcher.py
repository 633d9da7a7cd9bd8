"""Matcher (training-free; `jaxvrp.learners.matcher`, `docs/matcher.md`).

    python -m jaxvrp.evaluate --config configs/matcher.py:dataset=coco20i,fold=0 ...
    python -m jaxvrp.evaluate --config configs/matcher.py:dataset=fss1000,preset=fss ...
    python -m jaxvrp.evaluate --config configs/matcher.py:encoder=sam ...   # no DINOv2 weights

`arg`: comma-separated `key=value` (dataset, fold, label, shots, sam, and `encoder` = dinov2 |
sam, `dinov2` = a DINOv2 arch, `preset` = coco | lvis | fss | main_oss, `iterations` = random
subsets per size and `grid` = points per side of the dense grid instead of the preset's, for
a CPU budget: the demo's row; `filters` = preset | off, off sets the four mask-quality
thresholds to 0, for a small SAM whose masks fall under ViT-H's thresholds) and the flag
`runlocal` (a tiny random SAM, its own encoder, on the procedural data: seconds on one CPU).
"official" = aim-uofa/Matcher (`main_oss.py`, `scripts/coco.sh`, `scripts/fss.sh`). The
DINOv2 weights come from `frozen.backbone_checkpoint` (`jaxvrp convert backbone`).
Nothing is trained: there is no optimizer block.
"""

import ml_collections

from jaxvrp import configs

EXTRA = {
    "encoder": str,
    "dinov2": str,
    "preset": str,
    "iterations": int,
    "grid": int,
    "filters": str,
}
# the preset's mask-quality thresholds that `filters=off` sets to 0 (predicted IoU and
# stability, for the dense grid and for the subsets; the EMD/purity/coverage/score filters
# and NMS stay as the preset has them)
QUALITY_FILTERS = (
    "pred_iou_thresh",
    "stability_score_thresh",
    "iou_filter",
    "sel_stability_score_thresh",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    values, other = configs.parse_arg(arg, extra=EXTRA)
    if "backbone" in values:
        raise ValueError("unknown config arg 'backbone': Matcher's encoder is `encoder`/`dinov2`")
    runlocal = "runlocal" in other
    c = configs.base("matcher", values, runlocal)
    c.seed = 0  # official main_oss.py: utils.fix_randseed(0) (seeds the prompt subsets)

    # the keyword arguments of jaxvrp.learners.matcher.make_config
    c.model = ml_collections.ConfigDict()
    c.model.sam = values.get("sam", "test_small_image" if runlocal else "vit_h")  # official
    c.model.sam_dtype = "float32"  # official runs float32
    # official: DINOv2 ViT-L/14 (dinov2_vitl14_pretrain.pth); "sam" = SAM's own embedding
    c.model.encoder = values.get("encoder", "sam" if runlocal else "dinov2")
    c.model.dinov2 = values.get("dinov2", "dinov2_vitl14")
    # official hyper-parameters per benchmark: coco.sh (COCO-20i, also lvis.sh), fss.sh
    dataset = values.get("dataset", "procedural" if runlocal else "coco20i")
    c.model.preset = values.get("preset", "fss" if dataset == "fss1000" else "coco")
    if runlocal:  # tiny prompt sets (the official counts are the presets')
        c.model.max_sample_iterations = 4
        c.model.sample_range = (1, 2)
        c.model.points_per_side = 4
    if "iterations" in values:  # instead of the preset's max_sample_iterations (coco: 64)
        c.model.max_sample_iterations = values["iterations"]
    if "grid" in values:  # instead of the preset's points_per_side (coco: 32)
        c.model.points_per_side = values["grid"]
    # official (SamAutomaticMaskGenerator): 64 prompts decoded at once; ours: also the chunk
    # whose decoding is skipped when it holds no drawn subset (`matcher.skipping_map`)
    c.model.points_per_batch = 64
    filters = values.get("filters", "preset")
    if filters not in ("preset", "off"):
        raise ValueError(f"config arg filters must be 'preset' or 'off', got {filters!r}")
    if filters == "off":  # not official: a small SAM's masks score under ViT-H's thresholds
        for name in QUALITY_FILTERS:
            setattr(c.model, name, 0.0)

    c.data.dataset = dataset
    c.data.protocol = configs.default_protocol(c.data.dataset)
    c.data.annotation = values.get("label", "mask")  # official: mask references
    if not runlocal:
        c.data.image_size = 518  # official main_oss.py --img-size 518 (the DINOv2 input)
    c.lock()
    return c


def sweep_folds(add):
    """The four folds (COCO-20i)."""
    for fold in range(4):
        add(**{"data.fold": fold})


def sweep_encoders(add):
    """The paper's DINOv2 matching features against SAM's own image embedding."""
    add(**{"model.encoder": "dinov2"})
    add(**{"model.encoder": "sam"})
