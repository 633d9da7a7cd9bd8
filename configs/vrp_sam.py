"""VRP-SAM on PASCAL-5i / COCO-20i / FSS-1000 / COCO->PASCAL / procedural.

    python -m jaxvrp.train --config configs/vrp_sam.py:dataset=coco20i,fold=0,label=scribble \
        --workdir /tmp/vrp --config.frozen.sam_checkpoint=ckpt/sam_vit_h ...

Arguments and the shared blocks: `jaxvrp.configs`. paper = papers/vrp-sam.md, code = the
official VRP-SAM repository.
"""

from jaxvrp import configs


def get_config(arg: str | None = None):
    values, flags = configs.parse_arg(arg)
    runlocal = "runlocal" in flags
    c = configs.base("vrp_sam", values, runlocal)
    configs.sam_and_backbone(c, values, runlocal)
    model_options(c, runlocal)
    if c.data.dataset == "pascal5i":
        c.optimizer.lr = 2e-4  # paper: PASCAL 2e-4
        c.epochs = 100  # paper: PASCAL 100 epochs (COCO 50)
    if runlocal:
        c.epochs = 1
    c.lock()
    return c


def model_options(c, runlocal: bool) -> None:
    """VRP-SAM's own `model` options (ProSAM and GP-SAM share them)."""
    c.model.num_queries = 8 if runlocal else 50  # paper §4.3, code --num_query
    c.model.pseudo_mask_minmax = False  # code (paper eq. 2 min-max normalises)
    c.model.annotation_downsample = "nearest"  # code; "any" keeps single-pixel points
    c.model.dropout = 0.5  # code: Dropout2d(p=0.5) after the shared 1x1 conv


def sweep_folds_and_labels(add):
    """The paper's main table: 4 folds x 4 annotation types."""
    for fold in range(4):
        for label in ("point", "scribble", "box", "mask"):
            add(**{"data.fold": fold, "data.annotation": label})


def sweep_shots(add):
    """1-shot against 5-shot (paper Table 2)."""
    for shots in (1, 5):
        add(**{"data.shots": shots})


def sweep_num_queries(add):
    """The number of learned queries (paper Table 7)."""
    for n in (10, 25, 50, 100):
        add(**{"model.num_queries": n})


def sweep_lr_seeds(add):
    """3 seeds x 2 learning rates (around the paper's 1e-4 COCO / 2e-4 PASCAL, scaled for
    short runs): run it with `--vmap seed --vmap optimizer.lr` to train all six in one job."""
    for lr in (1e-3, 2e-3):
        for seed in (0, 1, 2):
            add(**{"optimizer.lr": lr, "seed": seed})
