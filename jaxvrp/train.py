"""Train a prompt learner: `python -m jaxvrp.train --config configs/vrp_sam.py:ARG --workdir DIR`.

Runs the same config on one CPU, a GPU box or a multi-host pod (`--config.distributed=True`
calls `jax.distributed.initialize()`). A run restarted in the same workdir resumes from its
latest checkpoint (params, optimiser state, step and the data iterator), so it continues
exactly. Writes `workdir/metrics.jsonl` (one JSON object per logged step) and TensorBoard
events under `workdir/tensorboard` (process 0 only), and shows a progress bar with ETA.
"""

import json
import math
import sys
import time
from pathlib import Path

import grain
import jax
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


def train(config, workdir: str | Path) -> dict:
    """Train to `config.total_steps` (or `config.stop_after` steps of this run); returns the
    last logged metrics."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if config.distributed:
        jax.distributed.initialize()
    lead = jax.process_index() == 0
    lconfig = trainer.learner_config(config)
    module = trainer.learner_module(config.learner)
    _, batch_sharding, replicated = trainer.mesh_and_shardings()
    if config.batch_size % jax.device_count():
        raise ValueError(
            f"batch_size {config.batch_size} must be a multiple of the {jax.device_count()} "
            "devices it is split over"
        )
    total = int(config.total_steps)
    optimizer = trainer.make_optimizer(config, total)
    schedule = trainer.lr_schedule(config, total)

    data = datasets.train_episodes(
        config, jax.process_index(), jax.process_count(), config.batch_size // jax.process_count()
    )
    iterator = iter(data)
    state = trainer.init_state(jax.random.key(config.seed), lconfig, module, optimizer)
    mgr = checkpoint_manager(workdir, config)
    start = 0
    if mgr.latest_step() is not None:
        start = mgr.latest_step()
        restored = mgr.restore(
            start,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(state),
                data=grain.checkpoint.CheckpointRestore(iterator),
            ),
        )
        state = restored["state"]
        logging.info("resumed from step %d in %s", start, workdir)
    state = jax.device_put(state, replicated)
    frozen = jax.device_put(frozen_lib.load(config, lconfig), replicated)
    step_fn = trainer.compile_train_step(
        lconfig, module, optimizer, schedule, batch_sharding, replicated
    )
    rng = jax.random.key(config.seed + 1)
    end = total if not config.stop_after else min(total, start + int(config.stop_after))

    log = open(workdir / "metrics.jsonl", "a") if lead else None
    tb = None
    if lead:
        from tensorboardX import SummaryWriter

        tb = SummaryWriter(str(workdir / "tensorboard"))
    progress = _progress(start, end, enabled=lead)
    last: dict = {}
    t0, seen = time.perf_counter(), 0
    try:
        for step in range(start, end):
            batch = trainer.global_batch(trainer.model_inputs(next(iterator)), batch_sharding)
            state, metrics = step_fn(state, batch, rng, frozen)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not math.isfinite(metrics["loss"]):
                raise NonFiniteLoss(
                    f"non-finite loss ({metrics['loss']}) at step {step + 1}: stopping. The last "
                    f"good checkpoint is step {mgr.latest_step()} in {workdir / 'checkpoints'}."
                )
            seen += config.batch_size
            done = step + 1
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
                        if k != "step":
                            tb.add_scalar(k, v, done)
            progress.update(1)
            progress.set_postfix(loss=f"{metrics['loss']:.4f}")
    finally:
        progress.close()
        mgr.wait_until_finished()
        if lead:
            log.close()
            tb.close()
    return last


def _progress(start: int, end: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=end, initial=start, disable=not enabled, desc="train", unit="step", file=sys.stderr
    )


def main(argv) -> None:
    del argv
    try:
        train(flags.FLAGS.config, flags.FLAGS.workdir)
    except NonFiniteLoss as e:
        logging.error("%s", e)
        sys.exit(3)


if __name__ == "__main__":
    _define_flags()
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
