"""PerSAM / PerSAM-F (training-free; `jaxvrp.learners.persam`, `docs/persam.md`).

    python -m jaxvrp.evaluate --config configs/persam.py:dataset=coco20i,fold=0 ...
    python -m jaxvrp.evaluate --config configs/persam.py:persam_f,dataset=fss1000 ...

`arg`: comma-separated `key=value` (dataset, fold, label, shots, sam) and flags: `persam_f`
(PerSAM-F instead of PerSAM), `runlocal` (a tiny random SAM on the procedural data, seconds
on one CPU). "official" = ZrrSkywalker/Personalize-SAM at a7e87245 (`persam.py`,
`persam_f.py`); "VRP-SAM" = the evaluation protocol of `jaxvrp.configs` (VRP-SAM paper §4.4).
Nothing is trained: there is no optimizer block (PerSAM-F's per-reference fit is in `model`).
"""

import ml_collections

from jaxvrp import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = {x for x in (arg or "").split(",") if x == "persam_f"}
    rest = ",".join(x for x in (arg or "").split(",") if x and x != "persam_f")
    values, other = configs.parse_arg(rest)
    if "backbone" in values:
        raise ValueError("unknown config arg 'backbone': PerSAM reads only the SAM")
    runlocal, fine_tune = "runlocal" in other, "persam_f" in flags
    c = configs.base("persam_f" if fine_tune else "persam", values, runlocal)
    c.seed = 0  # nothing is random in PerSAM; kept for the shared tools

    # the keyword arguments of jaxvrp.learners.persam.make_config / make_config_f
    c.model = ml_collections.ConfigDict()
    c.model.sam = values.get("sam", "test_small_image" if runlocal else "vit_h")  # official
    c.model.sam_dtype = "float32"  # official runs float32; "bfloat16" is an option
    c.model.mask_value = 128.0  # PerSeg annotation PNGs: red 128 (official data)
    c.model.refinement = 2  # official: two cascaded post-refinement passes
    if fine_tune:
        c.model.train_steps = 8 if runlocal else 1000  # official --train_epoch 1000
        c.model.lr = 1e-3  # official --lr 1e-3
        c.model.adam_eps = 1e-4  # official AdamW(eps=1e-4)
        c.model.weight_decay = 0.01  # official: torch AdamW's default
        # persam_f_multi_obj.py's loop: 1 = off (persam_f.py); that script uses 10 and 0.8
        c.model.max_objects = 1
        c.model.iou_threshold = 0.8
    else:
        c.model.target_guided_attention = True  # official persam.py: attn_sim
        c.model.target_semantic_prompting = True  # official persam.py: target_embedding
        c.model.negative_point = True  # official persam.py: the top-last point, label 0

    # VRP-SAM Table 1 compares PerSAM on COCO-20i (23.0 / 23.5 mIoU)
    c.data.dataset = values.get("dataset", "procedural" if runlocal else "coco20i")
    c.data.protocol = configs.default_protocol(c.data.dataset)
    c.data.annotation = values.get("label", "mask")  # official: a mask reference
    # evaluation at the VRP-SAM protocol's 512 (resized to SAM's 1024); batch 8 (results do
    # not depend on it); nothing is trained: the optimizer block is unused
    c.lock()
    return c


def sweep_folds(add):
    """The four folds (COCO-20i / PASCAL-5i)."""
    for fold in range(4):
        add(**{"data.fold": fold})


def sweep_persam_f_multi_object(add):
    """PerSAM-F (`persam_f` arg) with persam_f_multi_obj.py's loop (up to 10 objects)."""
    add(**{"model.max_objects": 1})
    add(**{"model.max_objects": 10})


def sweep_persam_ablation(add):
    """PerSAM's components switched off one at a time: target-guided attention,
    target-semantic prompting, the negative point, the cascaded refinement (the components
    of official persam.py; which combinations the PerSAM paper's ablation table ran is not
    checked here)."""
    add()
    add(**{"model.target_guided_attention": False})
    add(**{"model.target_semantic_prompting": False})
    add(**{"model.negative_point": False})
    add(**{"model.refinement": 0})
