"""GP-SAM (VRP-SAM paper §5.3, Table 3): the frozen SAM prompted with points and/or a box
sampled from VRP-SAM's pseudo-mask; training-free (`jaxvrp.baselines`).

    python -m jaxvrp.evaluate --config configs/gp_sam.py:dataset=pascal5i,mode=box --workdir DIR

Arguments: `jaxvrp.configs` plus `mode` (points, box, points+box).
"""

from jaxvrp import configs


def get_config(arg: str | None = None):
    values, flags = configs.parse_arg(arg, extra={"mode": str})
    runlocal = "runlocal" in flags
    c = configs.base("gp_sam", values, runlocal)
    configs.sam_and_backbone(c, values, runlocal)
    c.model.pseudo_mask_minmax = False  # as VRP-SAM's; GP-SAM min-max normalises itself
    c.model.annotation_downsample = "nearest"  # VRP-SAM code
    c.model.mode = values.get("mode", "points+box")
    c.model.num_points = 5  # VRP-SAM paper §5.3: "randomly sample 5 points"
    c.model.threshold = 0.5  # binarising the normalised pseudo-mask (ours, docs/learners.md)
    c.lock()
    return c


def sweep_modes(add):
    """Table 3's geometric prompts: points, box, both."""
    for mode in ("points", "box", "points+box"):
        add(**{"model.mode": mode})
