"""The training loop's pure parts: train state, optimiser, one jitted step over a mesh.

`train_step(state, batch, rng) -> (state, metrics)` is a pure function; `compile_train_step`
jits it over a mesh of all devices: the batch sharded along "data", the state and the frozen
SAM/backbone tree replicated, the state donated. The same code runs on one CPU, a GPU box or
a multi-host pod (where each host feeds its share of the global batch).
"""

from functools import partial
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxvrp.learners import prosam, vrp

LEARNERS = {"vrp_sam": vrp, "prosam": prosam}


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def learner_module(name: str):
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; known: {sorted(LEARNERS)}")
    return LEARNERS[name]


def learner_config(config) -> Any:
    """The learner's frozen config from the ml-collections `config.model`."""
    model = dict(config.model)
    return learner_module(config.learner).make_config(
        model.pop("backbone"), model.pop("sam"), **model
    )


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


def init_state(rng: jax.Array, lconfig: Any, module: Any, optimizer) -> TrainState:
    params = module.init(rng, lconfig)
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def train_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    frozen: Any,
    *,
    lconfig: Any,
    module: Any,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on the learner's params only; the step is folded into the rng."""
    rng = jax.random.fold_in(rng, state.step)
    loss_fn = partial(module.loss_fn, config=lconfig, train=True)
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
    return TrainState(state.step + 1, params, opt_state), metrics


def mesh_and_shardings() -> tuple[jax.sharding.Mesh, NamedSharding, NamedSharding]:
    """A 1-D "data" mesh over every device (all hosts); batch and replicated shardings."""
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    return mesh, NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int) -> None:
    """The global batch is split evenly over every device of the mesh."""
    if batch_size % jax.device_count():
        raise ValueError(
            f"batch_size {batch_size} must be a multiple of the {jax.device_count()} "
            "devices it is split over"
        )


def compile_train_step(lconfig, module, optimizer, schedule, batch_sharding, replicated):
    step = partial(
        train_step, lconfig=lconfig, module=module, optimizer=optimizer, schedule=schedule
    )
    return jax.jit(
        step,
        in_shardings=(replicated, batch_sharding, replicated, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This host's share of the batch -> global arrays sharded along "data"."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
    }


def model_inputs(batch: dict) -> dict:
    """The arrays the learners read (drops bookkeeping such as `episode`)."""
    keys = (
        "query_image",
        "support_images",
        "support_annotations",
        "query_mask",
        "query_ignore",
        "query_embedding",
    )
    return {k: batch[k] for k in keys if k in batch}
