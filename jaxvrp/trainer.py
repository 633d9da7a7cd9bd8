"""The learner trainer's pure parts: the learner of a config, its optimiser and one train
step; the loop around them is `jaxvrp.loop`, the program `jaxvrp.train`.

`train_step(state, batch, rng, frozen) -> (state, metrics)` is a pure function of any
registered learner (`jaxvrp.learners.registry`): gradients of `Learner.loss_fn` with respect
to the learner's params only; `loop.compile_step` jits it over the device mesh.
"""

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvrp import loop
from jaxvrp.learners import protocol, registry
from jaxvrp.learners.protocol import Learner

# the batch arrays every learner may read (`Learner.batch_keys` adds its own)
MODEL_INPUTS = (
    "query_image",
    "support_images",
    "support_annotations",
    "query_mask",
    "query_ignore",
    "query_embedding",
)


def learner_of(config) -> Learner:
    """The registered learner named by `config.learner` (an ml-collections config)."""
    return registry.get(config.learner, module=config.get("learner_module") or None)


def learner_config(config) -> Any:
    """The learner's frozen config from the ml-collections `config.model`."""
    return learner_of(config).make_config(**config.model.to_dict())


def lr_schedule(config, total_steps: int) -> optax.Schedule:
    """Cosine decay (VRP-SAM) or cosine with warm restarts every `restart_steps` (ProSAM)."""
    o = config.optimizer
    if o.schedule == "cosine":
        return optax.cosine_decay_schedule(o.lr, max(total_steps, 1))
    if o.schedule == "cosine_restarts":
        period = max(int(o.restart_steps), 1)
        return optax.sgdr_schedule(
            [
                dict(
                    init_value=o.lr,
                    peak_value=o.lr,
                    warmup_steps=0,
                    decay_steps=period,
                    end_value=0.0,
                )
            ]
            * (-(-max(total_steps, 1) // period))
        )
    if o.schedule == "constant":
        return optax.constant_schedule(o.lr)
    raise ValueError(f"unknown schedule {o.schedule!r}: cosine, cosine_restarts or constant")


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
    o = config.optimizer
    return optax.adamw(
        lr_schedule(config, total_steps), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay
    )


def init_state(rng: jax.Array, lconfig: Any, learner: Learner, optimizer) -> loop.TrainState:
    params = learner.init(rng, lconfig)
    return loop.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def train_step(
    state: loop.TrainState,
    batch: dict,
    rng: jax.Array,
    frozen: Any,
    *,
    lconfig: Any,
    learner: Learner,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
) -> tuple[loop.TrainState, dict[str, jax.Array]]:
    """One optimiser step on the learner's params only.

    The learner gets per-example keys `fold_in(fold_in(rng, step), episode)` (B,) from
    `batch["episode"]` (B,) uint32 (`model_inputs`), so each episode's dropout and samples do
    not depend on where it sits in the global batch, nor on how many hosts and devices share
    the batch (`jaxvrp.learners.protocol`)."""
    if "episode" not in batch:
        raise KeyError(
            "train_step needs batch['episode'] (B,), the episode numbers its per-example rngs "
            "are keyed by (kept by trainer.model_inputs)"
        )
    rng = protocol.example_keys(jax.random.fold_in(rng, state.step), batch["episode"])
    loss_fn = partial(learner.loss_fn, config=lconfig, train=True)
    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, frozen, batch, rng=rng
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        **parts,
        "grad_norm": optax.global_norm(grads),
        "lr": schedule(state.step),
    }
    return loop.TrainState(state.step + 1, params, opt_state), metrics


def compile_train_step(lconfig, learner, optimizer, schedule, batch_sharding, replicated):
    step = partial(
        train_step, lconfig=lconfig, learner=learner, optimizer=optimizer, schedule=schedule
    )
    return loop.compile_step(step, batch_sharding, replicated, num_replicated_args=2)


def model_inputs(batch: dict, learner: Learner | None = None, lconfig: Any = None) -> dict:
    """The arrays a learner reads from a host batch, after its `prepare`, and `episode`
    (B,) as uint32, the number the step's per-example rngs are keyed by (drops other
    bookkeeping such as `class_id`)."""
    if learner is not None and learner.prepare is not None:
        batch = learner.prepare(batch, lconfig)
    keys = MODEL_INPUTS
    if learner is not None:
        keys += learner.batch_keys + (learner.stage_keys(lconfig) if lconfig is not None else ())
    out = {k: batch[k] for k in keys if k in batch}
    if "episode" in batch:
        out["episode"] = episode_numbers(batch["episode"])
    return out


def episode_numbers(episode) -> np.ndarray:
    """Episode numbers (B,) as uint32 (what `jax.random.fold_in` takes); a number outside
    [0, 2**32) is an error rather than a silent wrap onto another episode's key."""
    e = np.asarray(episode)
    if e.size and (e.min() < 0 or e.max() >= 2**32):
        raise ValueError(f"batch['episode'] must be in [0, 2**32), got {e.min()}..{e.max()}")
    return e.astype(np.uint32)


# Hyper-parameters as values: what `jaxvrp.stacked` vmaps over (one set per member). With
# `optimizer_hparams(config)` they give the same numbers as `make_optimizer` (tested).
HPARAMS = ("lr", "weight_decay", "b1", "b2", "eps", "one_minus_b1", "one_minus_b2")


def optimizer_hparams(config) -> dict[str, float]:
    """The optimiser's numeric hyper-parameters of a config, keys `HPARAMS`. `1 - b1` and
    `1 - b2` are computed here in double precision, as optax computes `1 - decay` from a
    Python float; the same in float32 from a traced b2 = 0.999 is off by 1.3e-5 relative."""
    o = config.optimizer
    return {
        "lr": float(o.lr),
        "weight_decay": float(o.weight_decay),
        "b1": float(o.b1),
        "b2": float(o.b2),
        "eps": float(o.eps),
        "one_minus_b1": 1 - float(o.b1),
        "one_minus_b2": 1 - float(o.b2),
    }


def lr_schedule_scaled(config, total_steps: int, lr) -> optax.Schedule:
    """`lr_schedule(config, total_steps)` with the peak rate `lr` a (possibly traced) value:
    `lr` times the schedule of a unit rate, which is how optax's schedules compute it
    (`init_value * decayed`), so a float `lr` equal to `config.optimizer.lr` gives the same
    numbers."""
    unit = config.copy_and_resolve_references()
    with unit.unlocked():
        unit.optimizer.lr = 1.0
    shape = lr_schedule(unit, total_steps)
    return lambda step: lr * shape(step)


def scale_by_adam_values(b1, b2, eps, one_minus_b1, one_minus_b2) -> optax.GradientTransformation:
    """`optax.scale_by_adam(b1, b2, eps)` (eps_root 0, no Nesterov) with every constant a
    value, `1 - b1` and `1 - b2` given (see `optimizer_hparams`): the same operations in the
    same order, the same state (`optax.ScaleByAdamState`)."""

    def init_fn(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros())

    def update_fn(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda g, t: one_minus_b1 * g + b1 * t, updates, state.mu)
        nu = jax.tree.map(lambda g, t: one_minus_b2 * (g**2) + b2 * t, updates, state.nu)
        count = optax.safe_increment(state.count)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + 0.0) + eps), mu_hat, nu_hat)
        return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer_from(config, total_steps: int, hparams: dict) -> optax.GradientTransformation:
    """`make_optimizer` with the hyper-parameters `hparams` (floats or traced values, keys
    `HPARAMS`, from `optimizer_hparams`): `optax.adamw`'s chain (scale_by_adam,
    add_decayed_weights, scale by the negative scheduled rate) built from values instead of
    Python constants; the same numbers as `make_optimizer` (tested)."""
    h = hparams
    return optax.chain(
        scale_by_adam_values(h["b1"], h["b2"], h["eps"], h["one_minus_b1"], h["one_minus_b2"]),
        optax.add_decayed_weights(h["weight_decay"]),
        optax.scale_by_learning_rate(lr_schedule_scaled(config, total_steps, h["lr"])),
    )
