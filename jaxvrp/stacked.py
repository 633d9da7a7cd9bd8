"""Several runs of one config that differ only in numbers, trained as one stacked train
state in one jitted step ("members", `docs/sweeps.md`).

    members = stacked.members(config, {"seed": [0, 1, 2], "optimizer.lr": [1e-4, 2e-4]})
    state, last = stacked.train(config, members, workdir)      # 6 members, one job
    params_of_member_3 = stacked.member_params(state.params, 3)

Learners are pure functions of (params, frozen, batch, rng), so the step is
`jax.vmap(trainer.train_step)` over the members' train states, rngs and hyper-parameters
with the batch and the frozen tree unmapped (`in_axes=None`). What depends only on unmapped
inputs -- the frozen SAM's image encoder and the frozen backbone on the batch's images -- is
not batched by `vmap`: it runs once per step for all members (`frozen_forward_is_shared`
checks it on the jaxpr). The learner's forward, loss, gradient and AdamW update run per
member.

Member `i` is the separate run of `member_configs(config, members)[i]`: its params start from
`learner.init(key(seed))` and its steps use `key(seed + 1)` folded with the step, as
`jaxvrp.train` does; its optimiser is `trainer.make_optimizer_from` with its own
hyper-parameters (the same numbers as `trainer.make_optimizer`). All members read the same
episodes: the data seed stays the base config's (`configs.data_seed`), and each member's
config says so with an explicit `data.seed`.

Only keys in `VMAP_KEYS` (and a learner's `TRACED_MODEL_KEYS`) can be vmapped: each is a
number that enters the step as a value, never a shape or a branch. Anything else is an
error naming the key and why; put it in the sweep's grid instead.
"""

import itertools
import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from jaxvrp import configs, loop, paths, trainer
from jaxvrp import frozen as frozen_lib

# config key -> what it is in the step. `seed` becomes the member's rngs; the optimiser
# keys its traced hyper-parameters (trainer.make_optimizer_from).
VMAP_KEYS = {
    "seed": "the member's init and step rngs (key(seed), key(seed + 1)); data order shared",
    "optimizer.lr": "peak learning rate (multiplies the schedule)",
    "optimizer.weight_decay": "AdamW decoupled weight decay",
    "optimizer.b1": "Adam first-moment decay",
    "optimizer.b2": "Adam second-moment decay",
    "optimizer.eps": "Adam epsilon",
}
# learner name -> `model` keys it only ever uses as values (no shape, no Python branch):
# they are traced into the member's learner config (tested to equal separate runs).
TRACED_MODEL_KEYS = {
    "prosam": ("nu",),  # Student-t degrees of freedom: chi^2 draw and scale (prosam.py)
}
# why common keys cannot be vmapped (anything not whitelisted is refused; these say why)
_WHY_NOT = {
    "learner": "selects another learner (other code)",
    "learner_module": "selects another learner (other code)",
    "batch_size": "changes the shape of the batch every member shares",
    "epochs": "changes the number of steps; members train in lockstep",
    "steps_per_epoch": "changes the number of steps; members train in lockstep",
    "total_steps": "changes the number of steps; members train in lockstep",
    "stop_after": "changes the number of steps; members train in lockstep",
    "early_stopping.patience": "stops members at different steps; members train in lockstep",
    "early_stopping.min_delta": "stops members at different steps; members train in lockstep",
    "optimizer.schedule": "selects another schedule (other code)",
    "optimizer.restart_steps": "sets the schedule's periods (Python structure of the schedule)",
    "model.num_queries": "sets parameter shapes",
    "model.num_samples": "sets the number of samples (a shape)",
    "model.backbone": "selects another frozen backbone (other parameters and code)",
    "model.sam": "selects another frozen SAM (other parameters and code)",
    "model.sam_dtype": "changes the frozen SAM's dtype (other code)",
    "model.distribution": "selects another sampling code path",
    "model.inference": "selects another inference code path",
    "model.dropout": "read by Python control flow in the learner (`if dropout > 0`)",
    "data.seed": "members share one data stream: the base config's data seed",
}


class VmapKeyError(ValueError):
    pass


def check_vmap_key(config, key: str) -> None:
    """Raise `VmapKeyError` naming `key` and why unless it can be vmapped for `config`."""
    allowed = set(VMAP_KEYS) | {
        f"model.{k}" for k in TRACED_MODEL_KEYS.get(str(config.learner), ())
    }
    if key in allowed:
        return
    if key in _WHY_NOT:
        why = _WHY_NOT[key]
    elif key.startswith("data."):
        why = "changes the data every member shares (episodes, shapes)"
    elif key.startswith("frozen."):
        why = "changes the frozen models every member shares"
    elif key.startswith("model."):
        why = f"not one of {config.learner}'s model keys known to be used only as a value"
    else:
        why = "not one of the numeric keys known to be safe to vmap"
    raise VmapKeyError(
        f"--vmap {key}: cannot be vmapped ({why}); put it in the sweep's grid instead. "
        f"Vmappable for {config.learner}: {sorted(allowed)}"
    )


def parse_vmap(config, specs: list[str]) -> dict[str, list]:
    """["seed=0,1,2", "optimizer.lr=1e-4,2e-4"] -> {"seed": [0, 1, 2], "optimizer.lr":
    [1e-4, 2e-4]}, each value of the config's type; refused keys raise `VmapKeyError`."""
    out: dict[str, list] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise ValueError(f"--vmap {spec!r}: expected KEY=v1,v2,...")
        check_vmap_key(config, key)
        node = config
        for part in key.split("."):
            if part not in node:
                raise KeyError(f"--vmap {key}: the config has no key {part!r}")
            node = node[part]
        kind = type(node)
        try:
            out[key] = [kind(v.strip()) for v in values.split(",")]
        except ValueError as e:
            raise ValueError(f"--vmap {key}: values must be {kind.__name__}: {e}") from None
        if key in out and len(set(out[key])) != len(out[key]):
            raise ValueError(f"--vmap {key}: repeated values {out[key]}")
    return out


def members(config, vmap: dict[str, list]) -> list[dict[str, Any]]:
    """The product of the vmapped values, in order (the last key varies fastest): one dict
    of overrides per member."""
    for key in vmap:
        check_vmap_key(config, key)
    keys = list(vmap)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*vmap.values())]


def member_configs(config, members_: list[dict]) -> list:
    """Each member as the config of the separate run it equals: the base config with the
    member's overrides and the base's data seed made explicit."""
    out = []
    seed = configs.data_seed(config)
    for m in members_:
        c = config.copy_and_resolve_references()
        with c.unlocked():
            configs.override(c, {**m, "data.seed": seed})
        c.lock()
        out.append(c)
    return out


def mesh_shape(num_members: int, batch_size: int, devices: int, member_shards: int = 0):
    """(members, data) mesh sizes. By default the batch is split over as many devices as
    divide it (the frozen forward then runs once per step over the whole mesh) and the
    members are sharded over the rest: `devices / gcd(batch_size, devices)` member shards,
    which must divide the number of members. `member_shards` forces that size."""
    if member_shards:
        m = member_shards
        if devices % m:
            raise ValueError(f"member_shards {m} must divide the {devices} devices")
    else:
        m = devices // math.gcd(batch_size, devices)
    d = devices // m
    if num_members % m:
        raise ValueError(
            f"{num_members} members cannot be split over {m} member shards (the batch of "
            f"{batch_size} is split over {d} of the {devices} devices); use a number of "
            f"members divisible by {m}, or a batch size divisible by {devices}"
        )
    if batch_size % d:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the {d} data shards")
    return m, d


def make_mesh(m: int, d: int) -> jax.sharding.Mesh:
    if m > 1 and jax.process_count() > 1:
        raise ValueError(
            "member sharding is single-host only (each host feeds its share of the batch to "
            "the data axis): use a batch size divisible by the device count"
        )
    return jax.make_mesh((m, d), ("members", "data"), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _stack(trees: list) -> Any:
    return jax.tree.map(lambda *x: jnp.stack(x), *trees)


def member_params(params, i: int):
    """Member `i`'s params of a stacked tree (numpy)."""
    return jax.tree.map(lambda x: np.asarray(x[i]), jax.device_get(params))


def hparams_of(config, members_: list[dict]) -> dict[str, np.ndarray]:
    """{name: (S,) float32}: the optimiser's `trainer.HPARAMS` ("lr", ...) and the vmapped
    traced model keys ("model.nu", ...) of every member."""
    mconfigs = member_configs(config, members_)
    out = {k: [trainer.optimizer_hparams(c)[k] for c in mconfigs] for k in trainer.HPARAMS}
    for k in _model_keys(config, members_):
        out[f"model.{k}"] = [float(c.model[k]) for c in mconfigs]
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def _model_keys(config, members_) -> list[str]:
    return sorted({k[len("model.") :] for m in members_ for k in m if k.startswith("model.")})


def _hp_optimizer(hp: dict) -> dict:
    return {k: hp[k] for k in trainer.HPARAMS}


def make_step(config, learner, members_, total: int):
    """`step(state, batch, rngs, hparams, frozen) -> (state, metrics)`: `trainer.train_step`
    vmapped over the members (state, rng, hyper-parameters) with batch and frozen shared.
    Metrics: each member's as `NAME/i` and `loss` = the mean of the members' losses (non-finite
    when any is)."""
    model = config.model.to_dict()
    mkeys = _model_keys(config, members_)
    base_lconfig = learner.make_config(**model)

    def member(state, batch, rng, frozen, hp):
        lconfig = base_lconfig
        if mkeys:  # traced model values in the member's learner config
            lconfig = learner.make_config(**{**model, **{k: hp[f"model.{k}"] for k in mkeys}})
        optimizer = trainer.make_optimizer_from(config, total, _hp_optimizer(hp))
        schedule = trainer.lr_schedule_scaled(config, total, hp["lr"])
        return trainer.train_step(
            state,
            batch,
            rng,
            frozen,
            lconfig=lconfig,
            learner=learner,
            optimizer=optimizer,
            schedule=schedule,
        )

    def step(state, batch, rngs, hparams, frozen):
        new, m = jax.vmap(member, in_axes=(0, None, 0, None, 0))(
            state, batch, rngs, frozen, hparams
        )
        flat = {"loss": jnp.mean(m["loss"])}
        for k, v in m.items():
            for i in range(v.shape[0]):
                flat[f"{k}/{i}"] = v[i]
        return new, flat

    return step


def init_state(config, learner, members_, total: int) -> loop.TrainState:
    """The stacked train state: member i's `trainer.init_state(key(seed_i))` with its own
    optimiser (every leaf has a leading members axis, the step too)."""
    lconfig = learner.make_config(**config.model.to_dict())
    mconfigs = member_configs(config, members_)
    keys = jnp.stack([jax.random.key(int(c.seed)) for c in mconfigs])
    hp = hparams_of(config, members_)

    def one(key, h):
        optimizer = trainer.make_optimizer_from(config, total, _hp_optimizer(h))
        return trainer.init_state(key, lconfig, learner, optimizer)

    return jax.jit(jax.vmap(one))(keys, hp)


def step_rngs(config, members_) -> jax.Array:
    """(S,) keys: member i's `key(seed_i + 1)`, the rng `jaxvrp.train` folds each step into."""
    return jnp.stack([jax.random.key(int(c.seed) + 1) for c in member_configs(config, members_)])


def frozen_forward_is_shared(config, members_, batch: dict, frozen) -> dict:
    """Check on the jaxprs that the stacked step runs the frozen image convolutions once:
    every convolution reading 3-channel images (the SAM's patch embedding, a backbone's
    stem) has the same input shape and count as in a single run's step. Returns
    {"single": [shapes], "stacked": [shapes]}."""
    learner = trainer.learner_of(config)
    total = int(config.total_steps)
    state = jax.eval_shape(lambda: init_state(config, learner, members_, total))
    step = make_step(config, learner, members_, total)
    stacked = jax.make_jaxpr(step)(
        state, batch, step_rngs(config, members_), hparams_of(config, members_), frozen
    )
    single_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), state)
    plain = jax.make_jaxpr(
        lambda s, b, r, f: trainer.train_step(
            s,
            b,
            r,
            f,
            lconfig=learner.make_config(**config.model.to_dict()),
            learner=learner,
            optimizer=trainer.make_optimizer(config, total),
            schedule=trainer.lr_schedule(config, total),
        )
    )(single_state, batch, jax.random.key(0), frozen)
    return {"single": _image_convs(plain.jaxpr), "stacked": _image_convs(stacked.jaxpr)}


def _image_convs(jaxpr) -> list[tuple[int, ...]]:
    """Input shapes of the convolutions over 3-channel (NHWC) inputs, in every sub-jaxpr."""
    found = []

    def subjaxprs(value):
        if hasattr(value, "eqns"):  # Jaxpr
            yield value
        elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):  # ClosedJaxpr
            yield value.jaxpr
        elif isinstance(value, (tuple, list)):  # e.g. cond branches
            for v in value:
                yield from subjaxprs(v)

    def walk(j):
        for eqn in j.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                lhs = eqn.invars[0].aval.shape
                dims = eqn.params["dimension_numbers"].lhs_spec  # (batch, feature, spatial...)
                if lhs[dims[1]] == 3:
                    found.append(tuple(lhs))
            for value in eqn.params.values():
                for sub in subjaxprs(value):
                    walk(sub)

    walk(jaxpr)
    return found


def train(config, members_: list[dict], workdir: str | Path, *, member_shards: int = 0):
    """Train the members of `config` together to `config.total_steps` (or `stop_after` steps
    of this call) in `workdir`: checkpoints hold the stacked state and the data iterator (a
    restarted call resumes), `metrics.jsonl` each member's metrics (`loss/i`, ...).
    Returns (state, last logged metrics, the frozen tree it loaded); the state's leaves are
    stacked along members."""
    from jaxvrp.data import datasets

    workdir = paths.as_path(workdir)  # gs://... stays remote
    learner = trainer.learner_of(config)
    if not learner.trainable:
        raise ValueError(f"{learner.name} is training-free: nothing to train")
    if config.get("early_stopping") is not None and config.early_stopping.patience:
        raise ValueError(
            "early_stopping.patience > 0 would stop each member at its own step, but stacked "
            "members train in lockstep: set --config.early_stopping.patience=0 or run the "
            "members as grid points"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    _check_members_file(workdir, members_)
    total = int(config.total_steps)
    s = len(members_)
    m, d = mesh_shape(s, int(config.batch_size), jax.device_count(), member_shards)
    mesh = make_mesh(m, d)
    by_member = NamedSharding(mesh, PartitionSpec("members"))
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    logging.info("%d members on a (members %d, data %d) mesh", s, m, d)

    data = datasets.train_episodes(
        config, jax.process_index(), jax.process_count(), config.batch_size // jax.process_count()
    )
    iterator = iter(data)
    state = init_state(config, learner, members_, total)
    mgr = loop.checkpoint_manager(workdir, config)
    state, start = loop.restore_latest(mgr, state, iterator, workdir)
    state = jax.device_put(state, by_member)
    lconfig = learner.make_config(**config.model.to_dict())
    frozen = jax.device_put(frozen_lib.load(config, learner.frozen(lconfig)), replicated)
    rngs = jax.device_put(step_rngs(config, members_), by_member)
    hparams = jax.device_put(hparams_of(config, members_), by_member)
    step_fn = jax.jit(
        make_step(config, learner, members_, total),
        in_shardings=(by_member, batch_sharding, by_member, by_member, replicated),
        out_shardings=(by_member, replicated),
        donate_argnums=(0,),
    )
    end = total if not config.stop_after else min(total, start + int(config.stop_after))
    state, last = loop.run_steps(
        lambda st, b: step_fn(
            st,
            loop.global_batch(trainer.model_inputs(b, learner), batch_sharding),
            rngs,
            hparams,
            frozen,
        ),
        state,
        iterator,
        mgr,
        workdir,
        start=start,
        end=end,
        config=config,
        tensorboard=False,
    )
    return state, last, frozen


def _check_members_file(workdir: Path, members_: list[dict]) -> None:
    """`workdir/members.json` names the stack's members; a restart with other members would
    restore a checkpoint of another stack: an error."""
    path = workdir / "members.json"
    text = json.dumps(members_, sort_keys=True)
    if path.exists():
        if json.dumps(json.loads(path.read_text()), sort_keys=True) != text:
            raise ValueError(
                f"{workdir} holds a stack of other members ({path.read_text().strip()}); "
                f"asked for {text}: use another workdir"
            )
    elif jax.process_index() == 0:
        path.write_text(json.dumps(members_, indent=1) + "\n")
