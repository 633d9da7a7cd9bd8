"""Several runs of one config that differ only in numbers, trained as one stacked train
state in one jitted step ("members", `docs/sweeps.md`).

    members = stacked.members(config, {"seed": [0, 1, 2], "optimizer.lr": [1e-4, 2e-4]})
    state, last = stacked.train(config, members, workdir)      # 6 members, one job
    params_of_member_3 = stacked.member_params(state.params, 3)

Learners are pure functions of (params, frozen, batch, rng), so the step is
`trainer.train_step` of every member's train state, rng and hyper-parameters on one shared
batch and frozen tree (`map_members`): what depends only on the batch and the frozen tree --
the frozen SAM's image encoder and the frozen backbone on the batch's images -- runs once
per step for all members (`frozen_forward_is_shared` checks it on the jaxpr); the learner's
forward, loss, gradient and AdamW update run per member, one after another
(`config.stack.mode = "map"`, equal to the separate runs) or batched by `jax.vmap`
("vmap"). More devices than the batch can use shard the members (`jax.shard_map` over a
"members" mesh axis). `evaluate` evaluates the whole stack in one compiled call per batch.

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
import jax.extend.core as jc
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from jaxvrp import configs, loop, paths, precompute, trainer
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
    "stack.mode": "sets how the whole stack runs (one program for all members)",
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


MODES = ("map", "vmap")


def _split_shared(closed, shared: list[bool]):
    """Unzip a jaxpr by data dependence: `(shared_jaxpr, member_jaxpr)`.

    `shared[i]` marks the jaxpr's inputs that every member shares (the batch, the frozen
    tree). Each top-level equation whose inputs are all shared (or constants) goes to
    `shared_jaxpr` -- the frozen forward: SAM's image encoder, the backbone, every
    nested call on shared values only --, the others to `member_jaxpr`. `shared_jaxpr`
    takes the shared inputs and returns the residuals (the shared values the member part
    reads); `member_jaxpr` takes the residuals then the member inputs and returns the
    jaxpr's outputs. Equations with effects stay in the member part. The equations are
    the same objects, so each member runs exactly the single run's operations."""
    j = closed.jaxpr
    known = set(j.constvars) | {v for v, s in zip(j.invars, shared, strict=True) if s}
    first, second = [], []
    for e in j.eqns:
        if not e.effects and all(isinstance(v, jc.Literal) or v in known for v in e.invars):
            first.append(e)
            known.update(v for v in e.outvars if not isinstance(v, jc.DropVar))
        else:
            second.append(e)
    used = [v for e in second for v in e.invars] + list(j.outvars)
    residuals = list(dict.fromkeys(v for v in used if not isinstance(v, jc.Literal) and v in known))
    member_in = [v for v, s in zip(j.invars, shared, strict=True) if not s]
    shared_in = [v for v, s in zip(j.invars, shared, strict=True) if s]
    shared_jaxpr = jc.Jaxpr(j.constvars, shared_in, residuals, first, jc.no_effects)
    member_jaxpr = jc.Jaxpr([], [*residuals, *member_in], j.outvars, second, j.effects)
    return shared_jaxpr, member_jaxpr


def map_members(fn, per_member, shared, *, mode: str = "map"):
    """`fn(member_i, shared)` for every member: `per_member` a pytree whose leaves have a
    leading members axis (S, ...), `shared` one pytree for all; outputs stacked (S, ...).

    What depends only on `shared` (the frozen forward on the batch) runs once, outside
    the members (`_split_shared`); the rest runs per member:
    - "map": the members one after another, unrolled, each member's operations exactly
      those of a single run of `fn` (the same shapes, the same arithmetic; params within
      1e-7 relative L2 of separate runs after 3 steps, measured);
    - "vmap": `vmap` over the members, the members batched into each operation (bigger
      matmuls, better for accelerators; float32 sums in another order, `docs/sweeps.md`).
    """
    if mode not in MODES:
        raise ValueError(f"stack mode {mode!r}: one of {MODES}")
    one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), per_member)
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(one, shared)
    m_flat = jax.tree.leaves(per_member)
    s_flat = jax.tree.leaves(shared)
    shared_jaxpr, member_jaxpr = _split_shared(closed, [False] * len(m_flat) + [True] * len(s_flat))
    residuals = jax.core.eval_jaxpr(shared_jaxpr, closed.consts, *s_flat)

    def member(res, leaves):
        return jax.core.eval_jaxpr(member_jaxpr, [], *res, *leaves)

    if mode == "vmap":
        outs = jax.vmap(lambda leaves: member(residuals, leaves))(m_flat)
    else:
        # Each member compiles as straight-line code of its own, as a single run's step.
        # Measured on CPU: inside a while loop (`lax.map`) XLA emits the 1x1 convolutions'
        # filter gradient differently (1.3e-8 relative after one step), and two members
        # unrolled side by side no longer match their runs either (XLA optimises across
        # them); Adam amplifies such differences. An optimization barrier between
        # consecutive members (member i reads the shared values and its own inputs through
        # it, after member i - 1's outputs) keeps each member's operations apart. (Still
        # not bitwise after 3 steps, ~1e-7 relative: the remaining difference is not found.)
        per, prev, res = [], (), residuals
        for i in range(jax.tree.leaves(m_flat)[0].shape[0]):
            res, leaves, _ = jax.lax.optimization_barrier((res, [x[i] for x in m_flat], prev))
            prev = member(res, leaves)
            per.append(prev)
        outs = [jnp.stack(xs) for xs in zip(*per, strict=True)]
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs)


def make_step(config, learner, members_, total: int, *, mode: str = "map", mesh=None):
    """`step(state, batch, rngs, hparams, frozen) -> (state, metrics)`: `trainer.train_step`
    of every member (state, rng, hyper-parameters) with batch and frozen shared, the shared
    frozen forward once (`map_members`, `mode` "map" or "vmap"). With a `mesh` whose
    "members" axis is larger than 1, a `shard_map` over that axis: each device group runs
    its own members (the "data" axis stays partitioned by the compiler).
    Metrics: each member's as `NAME/i` and `loss` = the mean of the members' losses (non-finite
    when any is)."""
    model = config.model.to_dict()
    mkeys = _model_keys(config, members_)
    base_lconfig = learner.make_config(**model)

    def member(per, shared):
        state, rng, hp = per
        batch, frozen = shared
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

    def members_step(state, batch, rngs, hparams, frozen):
        return map_members(member, (state, rngs, hparams), (batch, frozen), mode=mode)

    if mesh is not None and mesh.shape["members"] > 1:
        members_step = _shard_members(members_step, mesh)

    def step(state, batch, rngs, hparams, frozen):
        new, m = members_step(state, batch, rngs, hparams, frozen)
        flat = {"loss": jnp.mean(m["loss"])}
        for k, v in m.items():
            for i in range(v.shape[0]):
                flat[f"{k}/{i}"] = v[i]
        return new, flat

    return step


def _shard_members(fn, mesh):
    """`fn(per_member..., batch, frozen)` (per-member arguments first, then the batch and
    the frozen tree) as a `shard_map` manual over "members" only: each member shard runs
    `fn` on its own members, the batch and frozen tree whole on it (the "data" axis left
    to the compiler). The partitioner never sees the members axis, which it cannot split
    through the vmapped 1x1 convolutions' feature groups on CPU."""
    members = PartitionSpec("members")
    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(members, PartitionSpec(), members, members, PartitionSpec()),
        out_specs=members,
        axis_names={"members"},
        # the member part replays recorded primitives (`map_members`), which skips the
        # implicit `pvary` of members-invariant values that tracing jnp code inserts
        check_vma=False,
    )


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


def stack_mode(config) -> str:
    """`config.stack.mode` ("map" when the config has no `stack` block)."""
    stack = config.get("stack")
    mode = str(stack.get("mode", "map")) if stack is not None else "map"
    if mode not in MODES:
        raise ValueError(f"stack.mode {mode!r}: one of {MODES}")
    return mode


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
    logging.info("%d members (%s) on a (members %d, data %d) mesh", s, stack_mode(config), m, d)

    data = datasets.train_episodes(
        config, jax.process_index(), jax.process_count(), config.batch_size // jax.process_count()
    )
    iterator = iter(data)
    state = init_state(config, learner, members_, total)
    mgr = loop.checkpoint_manager(workdir, config)
    state, start = loop.restore_latest(mgr, state, iterator, workdir)
    state = jax.device_put(state, by_member)
    lconfig = learner.make_config(**config.model.to_dict())
    frozen = frozen_lib.load(config, learner.frozen(lconfig))
    # the precomputed frozen features and points of `jaxvrp.precompute` (data.feature_cache),
    # added to each host batch as for a single run: shared by every member
    features = precompute.reader(config, learner, lconfig, 0, frozen=frozen)
    frozen = jax.device_put(frozen, replicated)
    rngs = jax.device_put(step_rngs(config, members_), by_member)
    hparams = jax.device_put(hparams_of(config, members_), by_member)
    step_fn = jax.jit(
        make_step(config, learner, members_, total, mode=stack_mode(config), mesh=mesh),
        in_shardings=(by_member, batch_sharding, by_member, by_member, replicated),
        out_shardings=(by_member, replicated),
        donate_argnums=(0,),
    )
    end = total if not config.stop_after else min(total, start + int(config.stop_after))
    state, last = loop.run_steps(
        lambda st, b: step_fn(
            st,
            loop.global_batch(
                trainer.model_inputs(b if features is None else features(b), learner, lconfig),
                batch_sharding,
            ),
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


def evaluate(
    config, members_: list[dict], params, *, names: list[str], frozen=None, mode: str = "map"
) -> dict[str, dict]:
    """Every member's metrics on the config's evaluation episodes in one compiled call per
    batch: `learner.apply` of the stacked `params` (leaves (S, ...)) with the frozen forward
    shared (`map_members`). Member i's result (keyed `names[i]`) is what
    `jaxvrp.evaluate.evaluate(member_configs(config, members_)[i], params_i)` gives (the
    same episodes, the same rng `key(0)`; compared in `tests/test_sweep.py`).
    Data-parallel over every device, like `jaxvrp.evaluate`."""
    from jaxvrp import evaluate as evaluate_lib
    from jaxvrp import metrics
    from jaxvrp.data import datasets

    if len(names) != len(members_):
        raise ValueError(f"{len(names)} names for {len(members_)} members")
    learner = trainer.learner_of(config)
    model = config.model.to_dict()
    mkeys = _model_keys(config, members_)
    lconfig = learner.make_config(**model)
    spec = learner.frozen(lconfig)
    if frozen is None:
        frozen_lib.check(config, spec)
        frozen = frozen_lib.load(config, spec)
    _, batch_sharding, replicated = loop.mesh_and_shardings()
    loop.check_batch_size(config.batch_size)
    features = precompute.reader(config, learner, lconfig, 1, frozen=frozen)
    frozen = jax.device_put({k: frozen[k] for k in spec.keys}, replicated)
    params = jax.device_put(params, replicated)
    hparams = jax.device_put(hparams_of(config, members_), replicated)

    def member(per, shared):
        p, hp = per
        f, batch, rng = shared
        c = lconfig
        if mkeys:
            c = learner.make_config(**{**model, **{k: hp[f"model.{k}"] for k in mkeys}})
        return learner.apply(p, f, batch, config=c, rng=rng)

    out_sharding = NamedSharding(batch_sharding.mesh, PartitionSpec(None, "data"))
    predict = jax.jit(
        lambda p, h, f, b, r: map_members(member, (p, h), (f, b, r), mode=mode),
        in_shardings=(replicated, replicated, replicated, batch_sharding, replicated),
        out_shardings=out_sharding,
    )
    meters = [metrics.SegmentationMeter() for _ in members_]
    use_cache = config.data.embedding_cache and spec.sam is not None and features is None
    cache = evaluate_lib.EmbeddingCache(config, spec.sam) if use_cache else None
    local = config.batch_size // jax.process_count()
    episodes = datasets.eval_episodes(config, jax.process_index(), jax.process_count(), local)
    rng = jax.random.key(0)  # as `jaxvrp.evaluate.evaluate`'s default rng_seed
    for batch in episodes:
        if features is not None:
            batch = features(batch)
        if cache is not None:
            batch = {**batch, "query_embedding": cache.lookup(batch, frozen["sam"])}
        inputs = loop.global_batch(trainer.model_inputs(batch, learner, lconfig), batch_sharding)
        logits = predict(params, hparams, frozen, inputs, rng)  # (S, B, H, W)
        local_logits = _local_rows(logits)  # this host's episodes: (S, B_local, H, W)
        for i, meter in enumerate(meters):
            meter.update(
                local_logits[i] > 0,
                batch["query_mask"] > 0,
                batch["class_id"],
                ignore=batch["query_ignore"],
                valid=batch["valid"],
            )
    results = {}
    for name, meter in zip(names, meters, strict=True):
        # every host's counts added up; protocol and HSNet's figures as `jaxvrp.evaluate`
        results[name] = evaluate_lib.result_of(config, evaluate_lib.all_hosts(config, meter))
        logging.info(
            "%s: mIoU %.1f, FB-IoU %.1f over %d episodes",
            name,
            100 * results[name]["miou"],
            100 * results[name]["fb_iou"],
            results[name]["episodes"],
        )
    return results


def _local_rows(x: jax.Array) -> np.ndarray:
    """This host's part of an (S, B, ...) array sharded along B ("data"), in batch order."""
    shards = {}
    for s in x.addressable_shards:
        shards.setdefault(s.index[1].start or 0, s)
    return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)], axis=1)
