"""SAM with the tight box of the target's ground truth: the upper bound of any method that
prompts SAM with one box (`jaxvrp.baselines`); training-free.

    python -m jaxvrp.evaluate --config configs/oracle_box.py:dataset=pascal5i --workdir DIR

Arguments: `jaxvrp.configs` (backbone is ignored: no features are read).
"""

import ml_collections

from jaxvrp import configs


def get_config(arg: str | None = None):
    values, flags = configs.parse_arg(arg)
    runlocal = "runlocal" in flags
    c = configs.base("oracle_box", values, runlocal)
    c.model = ml_collections.ConfigDict()
    c.model.sam = values.get("sam", "test_small_image" if runlocal else "vit_h")
    c.model.sam_dtype = "float32"
    c.lock()
    return c


def sweep_folds(add):
    """The upper bound on each fold."""
    for fold in range(4):
        add(**{"data.fold": fold})
