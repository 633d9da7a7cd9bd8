"""A learner defined only in the tests: it registers itself through the protocol and must
go through every tool (train, evaluate, learner checkpoints, `jaxvrp segment`) with no edit
to any of them.

Colour prototype: the masked mean colour of the references; each query pixel's logit is
`scale * (margin - |pixel - prototype|^2)`. Two learned scalars, no frozen model.
"""

import dataclasses

import jax.numpy as jnp
import ml_collections

from jaxvrp import configs
from jaxvrp.learners import registry
from jaxvrp.learners.losses import segmentation_loss
from jaxvrp.learners.protocol import FrozenSpec, Learner

NAME = "toy_colour_prototype"


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    init_margin: float = 1.0


def make_config(init_margin: float = 1.0) -> ToyConfig:
    return ToyConfig(float(init_margin))


def init(rng, config: ToyConfig) -> dict:
    del rng
    return {"scale": jnp.ones(()), "margin": jnp.full((), config.init_margin)}


def apply(params, frozen, batch, *, config, rng=None, train=False):
    del frozen, config, rng, train
    ann = batch["support_annotations"][..., None]  # (B, K, H, W, 1)
    proto = (batch["support_images"] * ann).sum(axis=(1, 2, 3)) / (ann.sum(axis=(1, 2, 3)) + 1)
    dist = ((batch["query_image"] - proto[:, None, None, :]) ** 2).sum(-1)  # (B, H, W)
    return params["scale"] * (params["margin"] - dist)


def loss_fn(params, frozen, batch, *, config, rng, train=True):
    logits = apply(params, frozen, batch, config=config, rng=rng, train=train)
    return segmentation_loss(logits, batch["query_mask"], batch.get("query_ignore"))


LEARNER = registry.register(
    Learner(
        name=NAME,
        title="Toy prototype",
        make_config=make_config,
        init=init,
        apply=apply,
        loss_fn=loss_fn,
        frozen=lambda config: FrozenSpec(),
        module=__name__,
    )
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The toy learner's config, built like the files of configs/."""
    values, flags = configs.parse_arg(arg)
    c = configs.base(NAME, values, "runlocal" in flags)
    c.learner_module = __name__
    c.model = ml_collections.ConfigDict({"init_margin": 1.0})
    c.optimizer.lr = 0.05
    c.lock()
    return c
