"""Train a prompt learner: `python -m jaxvrp.train --config configs/vrp_sam.py:ARG --workdir DIR`.

Runs the same config on one CPU, a GPU box or a multi-host pod (`--config.distributed=True`
calls `jax.distributed.initialize()`). A run restarted in the same workdir resumes from its
latest checkpoint (params, optimiser state, step and the data iterator), so it continues
exactly. Writes `workdir/metrics.jsonl` (one JSON object per logged step) and TensorBoard
events under `workdir/tensorboard` (process 0 only), and shows a progress bar with ETA. At
the end, `workdir/learner` holds the trained learner as a `jaxvrp.learners.checkpoint`
(what `jaxvrp segment --learner` reads).
`--compile_only` compiles the train step for the current devices and prints its memory
(no data, no parameters allocated): check a config fits before launching it.
"""

import json
import math
import sys
import time
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging
from ml_collections import config_flags

from jaxvrp import frozen as frozen_lib
from jaxvrp import trainer
from jaxvrp.data import datasets


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (so modules import freely)."""
    config_flags.DEFINE_config_file("config", None, "learner config file", lock_config=True)
    flags.DEFINE_string("workdir", None, "directory for checkpoints and metrics")
    flags.DEFINE_bool("compile_only", False, "compile the train step, report memory, exit")


class NonFiniteLoss(FloatingPointError):
    pass


def checkpoint_manager(workdir: Path, config) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.keep_checkpoints,
            save_interval_steps=config.checkpoint_every,
            create=True,
        ),
    )


def initialize_distributed(config) -> None:
    """`jax.distributed.initialize()`, with the config's explicit cluster when given."""
    kwargs = {}
    if config.coordinator_address:
        kwargs = dict(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
        )
    jax.distributed.initialize(**kwargs)


def train(config, workdir: str | Path) -> dict:
    """Train to `config.total_steps` (or `config.stop_after` steps of this run); returns the
    last logged metrics."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if config.distributed:
        initialize_distributed(config)
    lead = jax.process_index() == 0
    lconfig = trainer.learner_config(config)
    module = trainer.learner_module(config.learner)
    _, batch_sharding, replicated = trainer.mesh_and_shardings()
    trainer.check_batch_size(config.batch_size)
    total = int(config.total_steps)
    optimizer = trainer.make_optimizer(config, total)
    schedule = trainer.lr_schedule(config, total)

    data = datasets.train_episodes(
        config, jax.process_index(), jax.process_count(), config.batch_size // jax.process_count()
    )
    iterator = iter(data)
    state = trainer.init_state(jax.random.key(config.seed), lconfig, module, optimizer)
    mgr = checkpoint_manager(workdir, config)
    state, start = restore_latest(mgr, state, iterator, workdir)
    state = jax.device_put(state, replicated)
    frozen = jax.device_put(frozen_lib.load(config, lconfig), replicated)
    step_fn = trainer.compile_train_step(
        lconfig, module, optimizer, schedule, batch_sharding, replicated
    )
    rng = jax.random.key(config.seed + 1)
    end = total if not config.stop_after else min(total, start + int(config.stop_after))

    state, last = run_steps(
        lambda st, b: step_fn(
            st, trainer.global_batch(trainer.model_inputs(b), batch_sharding), rng, frozen
        ),
        state,
        iterator,
        mgr,
        workdir,
        start=start,
        end=end,
        config=config,
        tensorboard=True,
    )
    if end == total and lead:
        export_learner(workdir / "learner", config, jax.device_get(state.params), frozen)
    return last


def restore_latest(mgr: ocp.CheckpointManager, state, iterator, workdir: Path):
    """(state, step) of the latest checkpoint, the data iterator restored in place; the
    given state and step 0 when there is none."""
    start = mgr.latest_step()
    if start is None:
        return state, 0
    restored = mgr.restore(
        start,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(state),
            data=grain.checkpoint.CheckpointRestore(iterator),
        ),
    )
    logging.info("resumed from step %d in %s", start, workdir)
    return restored["state"], start


def run_steps(step, state, iterator, mgr, workdir: Path, *, start, end, config, tensorboard):
    """Steps `start` .. `end` of `state, metrics = step(state, next(iterator))`: checkpoints
    (state + iterator), `metrics.jsonl` every `config.log_every` steps (process 0; with
    TensorBoard events if `tensorboard`), a progress bar, a stop on a non-finite loss.
    Returns (state, last logged metrics)."""
    lead = jax.process_index() == 0
    log = open(workdir / "metrics.jsonl", "a") if lead else None
    tb = None
    if lead and tensorboard:
        from tensorboardX import SummaryWriter

        tb = SummaryWriter(str(workdir / "tensorboard"))
    progress = _progress(start, end, enabled=lead)
    last: dict = {}
    t0, seen = time.perf_counter(), 0
    try:
        for i in range(start, end):
            state, metrics = step(state, next(iterator))
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not math.isfinite(metrics["loss"]):
                raise NonFiniteLoss(
                    f"non-finite loss ({metrics['loss']}) at step {i + 1}: stopping. The last "
                    f"good checkpoint is step {mgr.latest_step()} in {workdir / 'checkpoints'}."
                )
            seen += config.batch_size
            done = i + 1
            mgr.save(
                done,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=grain.checkpoint.CheckpointSave(iterator),
                ),
                force=done == end,
            )
            if done % config.log_every == 0 or done == end:
                now = time.perf_counter()
                last = {"step": done, **metrics, "examples_per_s": seen / (now - t0)}
                t0, seen = now, 0
                if lead:
                    log.write(json.dumps(last) + "\n")
                    log.flush()
                    for k, v in last.items():
                        if tb is not None and k != "step":
                            tb.add_scalar(k, v, done)
            progress.update(1)
            progress.set_postfix(loss=f"{metrics['loss']:.4f}")
    finally:
        progress.close()
        mgr.wait_until_finished()
        if lead:
            log.close()
            if tb is not None:
                tb.close()
    return state, last


def export_learner(directory: Path, config, params, frozen) -> Path:
    """The trained learner as a `jaxvrp.learners.checkpoint` (for `jaxvrp segment`)."""
    from jaxvrp.learners import checkpoint

    return checkpoint.save(
        directory,
        learner=config.learner,
        model=config.model.to_dict(),
        params=params,
        image_size=config.data.image_size,
        backbone_params=jax.device_get(frozen["backbone"]),
        extra={"training": {"steps": int(config.total_steps), "dataset": config.data.dataset}},
        overwrite=True,
    )


def batch_spec(config) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of a global training batch (what `trainer.model_inputs` keeps)."""
    b, k, s = config.batch_size, config.data.shots, config.data.image_size
    f32 = np.float32
    return {
        "query_image": jax.ShapeDtypeStruct((b, s, s, 3), f32),
        "support_images": jax.ShapeDtypeStruct((b, k, s, s, 3), f32),
        "support_annotations": jax.ShapeDtypeStruct((b, k, s, s), f32),
        "query_mask": jax.ShapeDtypeStruct((b, s, s), f32),
        "query_ignore": jax.ShapeDtypeStruct((b, s, s), np.bool_),
    }


def compile_only(config) -> dict:
    """Compile the train step of `config` for the current devices and report its memory,
    without data, checkpoints or allocating any parameter."""
    from jaxvrp import backbones
    from jaxvrp import sam as sam_lib

    lconfig = trainer.learner_config(config)
    module = trainer.learner_module(config.learner)
    _, batch_sharding, replicated = trainer.mesh_and_shardings()
    optimizer = trainer.make_optimizer(config, int(config.total_steps))
    schedule = trainer.lr_schedule(config, int(config.total_steps))
    v = getattr(lconfig, "vrp", lconfig)
    state = jax.eval_shape(
        lambda r: trainer.init_state(r, lconfig, module, optimizer), jax.random.key(0)
    )
    frozen = {"sam": sam_lib.param_shapes(v.sam), "backbone": backbones.param_shapes(v.backbone)}
    step_fn = trainer.compile_train_step(
        lconfig, module, optimizer, schedule, batch_sharding, replicated
    )
    t = time.perf_counter()
    compiled = step_fn.lower(state, batch_spec(config), jax.random.key(0), frozen).compile()
    mem = compiled.memory_analysis()
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    report = {
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "compile_seconds": time.perf_counter() - t,
        "learner_params": count(state.params),
        "frozen_params": count(frozen),
    }
    for field in (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
    ):
        if mem is not None and hasattr(mem, field):
            report[field.replace("_in_bytes", "_gib")] = getattr(mem, field) / 2**30
    return report


def _progress(start: int, end: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=end, initial=start, disable=not enabled, desc="train", unit="step", file=sys.stderr
    )


def main(argv) -> None:
    del argv
    if flags.FLAGS.compile_only:
        print(json.dumps(compile_only(flags.FLAGS.config), indent=2))
        return
    if not flags.FLAGS.workdir:
        raise app.UsageError("--workdir is required to train")
    try:
        train(flags.FLAGS.config, flags.FLAGS.workdir)
    except NonFiniteLoss as e:
        logging.error("%s", e)
        sys.exit(3)


if __name__ == "__main__":
    _define_flags()
    flags.mark_flags_as_required(["config"])
    app.run(main)
