"""A learner defined only in the tests: it registers itself through the protocol and must
go through every tool (train, evaluate, learner checkpoints, `jaxvrp segment`) with no edit
to any of them.

Colour prototype: the masked mean colour of the references; each query pixel's logit is
`scale * (margin - |pixel - prototype|^2)`. Two learned scalars, no frozen model. With
`dropout` > 0, training drops logits (inverted dropout) with the step's rng, so the trainer
tests that use it (resumption, devices, hosts) also check the rng streams.
"""

import dataclasses

import jax
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
    dropout: float = 0.0


def make_config(init_margin: float = 1.0, dropout: float = 0.0) -> ToyConfig:
    return ToyConfig(float(init_margin), float(dropout))


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
    if train and config.dropout > 0:
        # rng: one key per example (B,), as the trainer gives every learner
        keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1 - config.dropout, logits.shape[1:]))(
            rng
        )
        logits = jnp.where(keep, logits / (1 - config.dropout), 0.0)
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
    c.model = ml_collections.ConfigDict({"init_margin": 1.0, "dropout": 0.0})
    c.optimizer.lr = 0.05
    c.lock()
    return c
