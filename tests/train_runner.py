"""Runs `jaxvrp.train.train` in a fresh process for the trainer tests.

    python tests/train_runner.py WORKDIR OUT.npz DEVICES [toy] [key=value ...]

Uses configs/vrp_sam.py:runlocal (or, with `toy`, the test learner of tests/toy_learner.py,
whose dropout is set to 0.5: the trainer's mechanics at a fraction of the compile time) with
the overrides, on DEVICES simulated CPU devices, and
saves the final params (flattened) and the logged losses. With TRAIN_RUNNER_HANG_AFTER=N it
stops after logging step N and waits (10 minutes) to be killed.
"""

import json
import os
import sys

workdir, out, devices, *overrides = sys.argv[1:]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}" + os.environ.get(
    "JAXVRP_TEST_XLA_OPT_FLAGS", ""
)  # the suite's optimisation level (tests/conftest.py)
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from flax import traverse_util  # noqa: E402

from configs import vrp_sam  # noqa: E402
from jaxvrp import train  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
if "distributed=True" in overrides:  # several processes on this machine: CPU collectives
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
hang_after = int(os.environ.get("TRAIN_RUNNER_HANG_AFTER", "0"))
if hang_after:  # after step N is logged, wait to be killed (the kill/resume test)
    import time

    from jaxvrp import loop

    run_steps = loop.run_steps

    def hanging_run_steps(step, *args, **kwargs):
        calls = [kwargs["start"]]

        def wrapped(state, batch):
            if calls[0] == hang_after:
                open(os.path.join(workdir, "HANGING"), "w").close()
                time.sleep(600)
            calls[0] += 1
            return step(state, batch)

        return run_steps(wrapped, *args, **kwargs)

    loop.run_steps = hanging_run_steps
if "toy" in overrides:
    from tests import toy_learner  # noqa: E402

    config = toy_learner.get_config("runlocal")
    config.model.dropout = 0.5
    overrides = [x for x in overrides if x != "toy"]
else:
    config = vrp_sam.get_config("runlocal")
for item in overrides:
    key, value = item.split("=", 1)
    node = config
    *path, leaf = key.split(".")
    for p in path:
        node = node[p]
    node[leaf] = value == "True" if isinstance(node[leaf], bool) else type(node[leaf])(value)
train.train(config, workdir)
mgr = train.checkpoint_manager(__import__("pathlib").Path(workdir), config)
state = mgr.restore(mgr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
params = traverse_util.flatten_dict(state["state"]["params"], sep="/")
losses = [json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
np.savez(out, losses=np.array(losses), **{k: np.asarray(v) for k, v in params.items()})
