"""Trains vmapped members and their separate runs in a fresh process for the sweep tests.

    python tests/sweep_runner.py MODES WORKDIR OUT.npz DEVICES CONFIG MEMBERS_JSON [key=value ...]

On DEVICES simulated CPU devices, with `configs/CONFIG.py:runlocal` and the overrides
(`member_shards=N` sets the stacked mesh's members axis), for
each mode of the comma-separated MODES:
- "separate": `jaxvrp.train.train` of each member's config (`stacked.member_configs`) in
  its own workdir (the reference);
- "stacked": `jaxvrp.stacked.train` of the members (`stack.mode` of the config);
- "stacked-vmap": the same with `stack.mode = "vmap"`;
- "stacked-store": "stacked" on precomputed SAM embeddings (`data.feature_cache` =
  WORKDIR/stacked-store/features, `data.precompute = True`: the stack runs the pass);
- "sweep": `jaxvrp.sweep.run_point` of the members: trained stacked, evaluated, exported.
Saves every member's final params as `MODE/i/path` arrays and its logged losses as
`MODE/i/losses`.
"""

import importlib
import json
import os
import sys

modes, workdir, out, devices, config_name, members_json, *overrides = sys.argv[1:]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}" + os.environ.get(
    "JAXVRP_TEST_XLA_OPT_FLAGS", ""
)  # the suite's optimisation level (tests/conftest.py)
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from flax import traverse_util  # noqa: E402

from jaxvrp import stacked, sweep, train  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
member_shards = 0
for item in list(overrides):
    if item.startswith("member_shards="):  # the stacked mesh's members axis
        member_shards = int(item.split("=", 1)[1])
        overrides.remove(item)
config = importlib.import_module(f"configs.{config_name}").get_config("runlocal")
for item in overrides:
    key, value = item.split("=", 1)
    node = config
    *path, leaf = key.split(".")
    for p in path:
        node = node[p]
    node[leaf] = value == "True" if isinstance(node[leaf], bool) else type(node[leaf])(value)
members = json.loads(members_json)
arrays = {}


def restore(workdir):
    mgr = train.checkpoint_manager(Path(workdir), config)
    restored = mgr.restore(
        mgr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )
    return restored["state"]["params"]


def losses(workdir, key):
    return np.array([json.loads(x)[key] for x in open(os.path.join(workdir, "metrics.jsonl"))])


def save_stack(mode, params, workdir):
    for i in range(len(members)):
        flat = traverse_util.flatten_dict(stacked.member_params(params, i), sep="/")
        arrays.update({f"{mode}/{i}/{k}": v for k, v in flat.items()})
        arrays[f"{mode}/{i}/losses"] = losses(workdir, f"loss/{i}")


for mode in modes.split(","):
    w = os.path.join(workdir, mode)
    if mode == "separate":
        for i, c in enumerate(stacked.member_configs(config, members)):
            train.train(c, os.path.join(w, str(i)))
            flat = traverse_util.flatten_dict(restore(os.path.join(w, str(i))), sep="/")
            arrays.update({f"{mode}/{i}/{k}": np.asarray(v) for k, v in flat.items()})
            arrays[f"{mode}/{i}/losses"] = losses(os.path.join(w, str(i)), "loss")
    elif mode in ("stacked", "stacked-vmap", "stacked-store"):
        c = config
        if mode == "stacked-vmap":
            c = config.copy_and_resolve_references()
            c.stack.mode = "vmap"
        if mode == "stacked-store":
            c = config.copy_and_resolve_references()
            c.data.feature_cache, c.data.precompute = os.path.join(w, "features"), True
        state, _, _ = stacked.train(c, members, w, member_shards=member_shards)
        save_stack(mode, state.params, w)
    elif mode == "sweep":
        assert sweep.run_point(sweep.Point(0, "p", {}, config), w, members)
        save_stack(mode, restore(os.path.join(w, "p")), os.path.join(w, "p"))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
np.savez(out, **arrays)
