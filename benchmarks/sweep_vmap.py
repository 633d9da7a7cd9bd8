"""Wall time of S vmapped members (`jaxvrp.stacked`) against S separate runs of the same steps.

    python benchmarks/sweep_vmap.py --members 1 3 8 --steps 10 --repeats 3 --modes map vmap

The demo's VRP-SAM (`configs/demo.py` via `jaxvrp.demo.method_configs`: the embedded SAM
`tiny_128`, its encoder `sam_tiny_128` as the backbone, 128 px, batch 8, 50 queries), on
every local device. A separate run's step is `jaxvrp.trainer.compile_train_step` (what
`jaxvrp.train` runs); S separate runs of N steps cost S x N of its steps. The stacked step
trains S members (seeds 0..S-1, learning rates 1e-3 .. 2e-3) in one call, in each
`stack.mode` of `--modes` ("map": each member as its separate run, "vmap": batched). Both
read the same prefetched batch (the data pipeline is the same for both and not timed:
each separate run would read its own). Also times the frozen forward alone (SAM image
encoder on the queries, the backbone and pseudo-mask on query and references): the part the
members share.
Prints JSON: seconds per step (median over repeats of N steps) and the ratios.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
from _timing import seconds_per_call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--members", type=int, nargs="+", default=[1, 3, 8])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", nargs="+", default=["map", "vmap"], choices=["map", "vmap"])
    p.add_argument("--data-dir", default="")
    args = p.parse_args()

    from configs import demo as demo_config
    from jaxvrp import assets, demo, loop, stacked, trainer
    from jaxvrp import frozen as frozen_lib
    from jaxvrp.data import datasets
    from jaxvrp.learners import vrp

    out = Path(args.data_dir or tempfile.mkdtemp())
    config = demo.method_configs(
        demo_config.get_config(), out, assets.default_sam_dir(), steps=None
    )["VRP-SAM"]
    with config.unlocked():
        config.data.procedural_config = "small"  # only for the batch: resized to 128 px
        config.data.data_dir = str(out / "tfds")
    learner = trainer.learner_of(config)
    lconfig = trainer.learner_config(config)
    total = int(config.total_steps)
    _, batch_sharding, replicated = loop.mesh_and_shardings()
    frozen = jax.device_put(frozen_lib.load(config, learner.frozen(lconfig)), replicated)
    local = next(iter(datasets.train_episodes(config, 0, 1, config.batch_size)))
    batch = loop.global_batch(trainer.model_inputs(local, learner), batch_sharding)

    report = {
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "batch_size": config.batch_size,
        "image_size": config.data.image_size,
        "num_queries": config.model.num_queries,
        "steps": args.steps,
        "repeats": args.repeats,
    }
    shared = jax.jit(
        lambda f, b: (vrp.query_embeddings(f, b, lconfig), vrp.shot_features(f, b, lconfig))
    )
    report["frozen_forward_s"] = seconds_per_call(
        lambda: shared(frozen, batch), args.steps, args.repeats
    )

    optimizer = trainer.make_optimizer(config, total)
    schedule = trainer.lr_schedule(config, total)
    single = trainer.compile_train_step(
        lconfig, learner, optimizer, schedule, batch_sharding, replicated
    )

    # Placed as the step's outputs are (replicated): a fresh, uncommitted state is another
    # input placement to jit, so the first step on the step's own output would compile again
    # inside the timed steps (what inflated this reference before: 1.85 s a step).
    def fresh_state():
        state = trainer.init_state(jax.random.key(0), lconfig, learner, optimizer)
        return jax.device_put(state, replicated)

    state = {"s": fresh_state()}
    rng = jax.random.key(1)
    t = time.perf_counter()
    jax.block_until_ready(single(state["s"], batch, rng, frozen))
    report["single_compile_s"] = time.perf_counter() - t
    state["s"] = fresh_state()

    def one_step():
        state["s"], m = single(state["s"], batch, rng, frozen)
        return m["loss"]

    report["single_step_s"] = seconds_per_call(one_step, args.steps, args.repeats)
    rows = []
    for s, mode in [(s, mode) for s in args.members for mode in args.modes]:
        members = [{"seed": i, "optimizer.lr": 1e-3 * (1 + i / max(s - 1, 1))} for i in range(s)]
        step = jax.jit(
            stacked.make_step(config, learner, members, total, mode=mode), donate_argnums=(0,)
        )
        rngs, hp = stacked.step_rngs(config, members), stacked.hparams_of(config, members)
        st = {"s": jax.device_put(stacked.init_state(config, learner, members, total), replicated)}
        t = time.perf_counter()
        st["s"], m = step(st["s"], batch, rngs, hp, frozen)
        jax.block_until_ready(m["loss"])
        compile_s = time.perf_counter() - t

        def stacked_step(step=step, st=st, rngs=rngs, hp=hp):
            st["s"], m = step(st["s"], batch, rngs, hp, frozen)
            return m["loss"]

        sec = seconds_per_call(stacked_step, args.steps, args.repeats)
        separate = s * report["single_step_s"]
        rows.append(
            {
                "members": s,
                "mode": mode,
                "stacked_step_s": sec,
                "separate_steps_s": separate,
                "ratio": sec / separate,
                "stacked_compile_s": compile_s,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    report["rows"] = rows
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
