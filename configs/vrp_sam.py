"""VRP-SAM on PASCAL-5i / COCO-20i / FSS-1000 / COCO->PASCAL / procedural.

    python -m jaxvrp.train --config configs/vrp_sam.py:dataset=coco20i,fold=0,label=scribble \
        --workdir /tmp/vrp --config.frozen.sam_checkpoint=ckpt/sam_vit_h ...

Arguments and defaults: `jaxvrp.configs`.
"""

from jaxvrp import configs


def get_config(arg: str | None = None):
    return configs.make("vrp_sam", arg)


def sweep_folds_and_labels(add):
    """The paper's main table: 4 folds x 4 annotation types."""
    for fold in range(4):
        for label in ("point", "scribble", "box", "mask"):
            add(**{"data.fold": fold, "data.annotation": label})
