"""ProSAM (VRP-SAM's encoder with Student-t prompts, papers/prosam.md).

    python -m jaxvrp.train --config configs/prosam.py:dataset=pascal5i,fold=0 --workdir DIR

Arguments and the shared blocks: `jaxvrp.configs`; VRP-SAM's model options:
`configs/vrp_sam.py`.
"""

from configs import vrp_sam
from jaxvrp import configs


def get_config(arg: str | None = None):
    values, flags = configs.parse_arg(arg)
    runlocal = "runlocal" in flags
    c = configs.base("prosam", values, runlocal)
    configs.sam_and_backbone(c, values, runlocal)
    vrp_sam.model_options(c, runlocal)
    c.model.nu = 5.0  # paper §5.1
    c.model.num_samples = 2 if runlocal else 10  # paper §5.1, K
    c.model.distribution = "student_t"  # paper eq. 5; "gaussian" is Table 4's ablation
    c.model.n_per = "prompt"  # n of eq. 5: one prompt vector ("image": all of an image's)
    c.model.inference = "mean"  # paper §4.3
    c.model.log_sigma_min = -20.0  # ours: log sigma clamped (the paper has no clamp)
    c.model.log_sigma_max = 10.0
    c.optimizer.schedule = "cosine_restarts"  # paper §5.1
    c.optimizer.restart_steps = 15 * c.get_ref("steps_per_epoch")  # paper §5.1: 15 epochs
    c.epochs = 100  # paper §5.1
    if runlocal:
        c.epochs = 1
        c.optimizer.restart_steps = 2
    c.lock()
    return c


def sweep_inference(add):
    """Table 8: the inference strategies."""
    for inference in ("mean", "max_logits", "mean_logits", "max_binary", "mean_binary", "majority"):
        add(**{"model.inference": inference})


def sweep_distribution(add):
    """Table 4: Student-t against Gaussian prompts."""
    for distribution in ("student_t", "gaussian"):
        add(**{"model.distribution": distribution})


def sweep_nu(add):
    """The Student-t degrees of freedom nu (paper §5.1 uses 5)."""
    for nu in (1.0, 5.0, 10.0, 100.0):
        add(**{"model.nu": nu})
