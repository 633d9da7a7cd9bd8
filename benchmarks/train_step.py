"""Seconds per training step of a demo learner, with the frozen SAM encoder in the step, on
a precomputed query embedding, and on precomputed SAM + backbone features, in the same run.

    python benchmarks/train_step.py --method VRP-SAM --steps 20 --repeats 3
    python benchmarks/train_step.py --size issue --steps 2 --repeats 1   # SAM vit_b, R50, 512

The method's config is the demo's (`configs/demo.py` via `jaxvrp.demo.method_configs`: the
embedded SAM `tiny_128`, its encoder as the backbone, 128 px, batch 8), on every local
device; `--size issue` is instead configs/vrp_sam.py with SAM vit_b, the deep-stem ResNet-50,
512 px, batch 2, 1-shot masks, random weights (issue 16's step). The batch is one prefetched
batch of the procedural benchmark (the data pipeline is not timed). "precomputed" adds the
batch's `query_embedding` (computed once, as `jaxvrp.precompute` stores it) so the step
skips the query's SAM embedding; the backbone still runs. "precomputed_backbone" also adds
the backbone's stored stages (`data.backbone_features`, the learner's
`Learner.backbone_stages`: for VRP-SAM/ProSAM the query's layer2-4 and the references'
layer2-3, so only each reference's layer4 runs; for HSNet/SAMIC every stage they correlate,
so no backbone runs). Prints JSON: compile seconds
and the median seconds per step over `--repeats` runs of `--steps` steps, and the ratios.
Use it to compare commits (same machine, same run of this script per commit).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from _timing import seconds_per_call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", default="VRP-SAM", help="a trainable row of configs/demo.py")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-dir", default="")
    p.add_argument("--size", choices=["demo", "issue"], default="demo")
    args = p.parse_args()

    from configs import demo as demo_config
    from jaxvrp import assets, demo, loop, trainer
    from jaxvrp import frozen as frozen_lib
    from jaxvrp.data import datasets
    from jaxvrp.learners import frozen_sam
    from jaxvrp.learners import vrp as vrp_lib

    out = Path(args.data_dir or tempfile.mkdtemp())
    if args.size == "issue":
        from configs import vrp_sam

        config = vrp_sam.get_config("runlocal")
        config.model.sam, config.model.backbone = "vit_b", "resnet50_deepstem"
        config.model.num_queries = 50
        config.data.image_size, config.batch_size = 512, 2
        config.data.annotation, config.data.shots = "mask", 1
        args.method = "VRP-SAM"
    else:
        cfgs = demo.method_configs(
            demo_config.get_config(), out, assets.default_sam_dir(), steps=None
        )
        if args.method not in cfgs:
            raise SystemExit(f"--method {args.method!r}: one of {sorted(cfgs)}")
        config = cfgs[args.method]
    with config.unlocked():
        config.data.procedural_config = "small"  # only for the batch: resized to the size
        config.data.data_dir = str(out / "tfds")
    learner = trainer.learner_of(config)
    if not learner.trainable:
        raise SystemExit(f"{args.method} is training-free: no train step")
    lconfig = trainer.learner_config(config)
    total = int(config.total_steps)
    _, batch_sharding, replicated = loop.mesh_and_shardings()
    spec = learner.frozen(lconfig)
    frozen = jax.device_put(frozen_lib.load(config, spec), replicated)
    local = next(iter(datasets.train_episodes(config, 0, 1, config.batch_size)))
    inputs = trainer.model_inputs(local, learner, lconfig)
    optimizer = trainer.make_optimizer(config, total)
    schedule = trainer.lr_schedule(config, total)
    report = {
        "method": args.method,
        "size": args.size,
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "batch_size": config.batch_size,
        "image_size": config.data.image_size,
        "steps": args.steps,
        "repeats": args.repeats,
    }
    batches = {"encoder_in_step": inputs}
    if spec.sam is not None:
        emb = jax.jit(lambda s, x: frozen_sam.image_embeddings(s, x, spec.sam))(
            frozen["sam"], inputs["query_image"]
        )
        batches["precomputed"] = {**inputs, "query_embedding": np.asarray(emb)}
    if spec.backbone is not None and learner.backbone_stages is not None:
        batches["precomputed_backbone"] = vrp_lib.with_stored_stages(
            batches.get("precomputed", inputs),
            frozen["backbone"],
            spec.backbone,
            learner.backbone_stages(lconfig),
        )
    for name, host_batch in batches.items():
        batch = loop.global_batch(host_batch, batch_sharding)
        step = trainer.compile_train_step(
            lconfig, learner, optimizer, schedule, batch_sharding, replicated
        )
        # placed as `jaxvrp.train` places it: an uncommitted state made the second call
        # compile again, inside the timed steps
        state = {
            "s": jax.device_put(
                trainer.init_state(jax.random.key(0), lconfig, learner, optimizer), replicated
            )
        }
        rng = jax.random.key(1)
        t = time.perf_counter()
        state["s"], m = step(state["s"], batch, rng, frozen)
        jax.block_until_ready(m)
        report[f"{name}_compile_s"] = time.perf_counter() - t

        def one(step=step, batch=batch, state=state, rng=rng):
            state["s"], m = step(state["s"], batch, rng, frozen)
            return m["loss"]

        report[f"{name}_step_s"] = seconds_per_call(one, args.steps, args.repeats, warmup=False)
        print(json.dumps({k: v for k, v in report.items() if k.startswith(name)}), flush=True)
    for name in ("precomputed", "precomputed_backbone"):
        if f"{name}_step_s" in report:
            report[f"speedup_{name}"] = report["encoder_in_step_step_s"] / report[f"{name}_step_s"]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
