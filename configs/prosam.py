"""ProSAM (VRP-SAM's encoder with Student-t prompts). Arguments: `jaxvrp.configs`."""

from jaxvrp import configs


def get_config(arg: str | None = None):
    return configs.make("prosam", arg)


def sweep_inference(add):
    """Table 8: the inference strategies."""
    for inference in ("mean", "max_logits", "mean_logits", "max_binary", "mean_binary", "majority"):
        add(**{"model.inference": inference})


def sweep_distribution(add):
    """Table 4: Student-t against Gaussian prompts."""
    for distribution in ("student_t", "gaussian"):
        add(**{"model.distribution": distribution})
