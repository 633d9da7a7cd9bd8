"""The one training loop, shared by the learner trainer (`jaxvrp.train`) and SAM's trainer
(`jaxvrp.sam.train`): the device mesh, a jitted step over it, orbax checkpoints holding the
train state and the data iterator, restore, the step loop with its logs, progress bar and
non-finite stop. It knows nothing of learners, SAM or datasets.

    mesh, batch_sharding, replicated = mesh_and_shardings()
    step = compile_step(step_fn, batch_sharding, replicated)   # step_fn(state, batch, *rest)
    mgr = checkpoint_manager(workdir, config)
    state, start = restore_latest(mgr, state, iterator, workdir)
    state, last = run_steps(lambda s, b: step(s, b, ...), state, iterator, mgr, workdir, ...)

The same code runs on one CPU, a GPU box or a multi-host pod (each host feeds its share of
the global batch; `initialize_distributed` joins the hosts).
"""

import json
import math
import sys
import time
from typing import Any

import flax
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from jaxvrp import paths
from jaxvrp.paths import PathLike


class NonFiniteLoss(FloatingPointError):
    pass


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


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


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This host's share of the batch -> global arrays sharded along "data"."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
    }


def compile_step(step_fn, batch_sharding, replicated, num_replicated_args: int = 1):
    """`jax.jit` of `step_fn(state, batch, *rest) -> (state, metrics)` over the mesh: the
    batch sharded along "data", the state, `rest` (rng, frozen tree, ...) and the outputs
    replicated, the state donated."""
    return jax.jit(
        step_fn,
        in_shardings=(replicated, batch_sharding, *([replicated] * num_replicated_args)),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
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


def checkpoint_manager(workdir: PathLike, config) -> ocp.CheckpointManager:
    """Checkpoints under `workdir/checkpoints`, every `config.checkpoint_every` steps,
    keeping `config.keep_checkpoints`.

    Saves are synchronous: `save` returns once the checkpoint is complete on disk, so a run
    killed at any moment (SIGKILL, pre-emption) resumes from its latest checkpoint step. With
    orbax's default asynchronous saves, a kill shortly after a save lost that checkpoint
    (it was never finalised) and the run went back to an earlier one. The learners' train
    states are small (tens of MB), so waiting costs little.
    """
    return ocp.CheckpointManager(
        paths.absolute(paths.as_path(workdir) / "checkpoints"),  # gs://... stays remote
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.keep_checkpoints,
            save_interval_steps=config.checkpoint_every,
            create=True,
            enable_async_checkpointing=False,
        ),
    )


def restore_latest(mgr: ocp.CheckpointManager, state, iterator, workdir: PathLike):
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


class EarlyStopping:
    """`config.early_stopping`: stop when the mean training loss of a log window has not
    improved on the best window's by more than `min_delta` for `patience` windows in a row.

    Its state is a function of the logged window means (`loss_window` in `metrics.jsonl`),
    so a resumed run replays it from the log (cut back to the restored step) and decides
    exactly as an uninterrupted one; that needs resumes at window ends, hence
    `checkpoint_every` a multiple of `log_every`."""

    def __init__(self, config) -> None:
        es = getattr(config, "early_stopping", None)  # configs older than the key: off
        self.patience = int(es.patience) if es is not None else 0
        self.min_delta = float(es.min_delta) if es is not None else 0.0
        if self.patience < 0:
            raise ValueError(f"early_stopping.patience must be >= 0, got {self.patience}")
        if self.patience and config.checkpoint_every % config.log_every:
            raise ValueError(
                f"early_stopping needs checkpoint_every ({config.checkpoint_every}) to be a "
                f"multiple of log_every ({config.log_every}): resumes must start at a log window"
            )
        self.best, self.waited, self.stopped_at = math.inf, 0, None

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    def update(self, window_loss: float, step: int) -> bool:
        """Account one window ending at `step`; True once training should stop."""
        if window_loss < self.best - self.min_delta:
            self.best, self.waited = window_loss, 0
        else:
            self.waited += 1
        if self.enabled and self.waited >= self.patience and self.stopped_at is None:
            self.stopped_at = step
        return self.stopped_at is not None

    def replay(self, log_path, upto: int) -> dict:
        """Feed the windows logged in `log_path` up to step `upto` (the restored one: later
        lines are a replay's, whether or not process 0 has cut them yet); returns the last
        such line ({} if none)."""
        last = {}
        if not self.enabled:
            return last
        for _, record in _logged(log_path):
            if record["step"] > upto:
                continue
            last = record
            if "loss_window" in record:
                self.update(record["loss_window"], record["step"])
        return last


def run_steps(step, state, iterator, mgr, workdir: PathLike, *, start, end, config, tensorboard):
    """Steps `start` .. `end` of `state, metrics = step(state, next(iterator))`: checkpoints
    (state + iterator), `metrics.jsonl` every `config.log_every` steps (process 0; with
    TensorBoard events if `tensorboard`), a progress bar, a stop on a non-finite loss.
    Returns (state, last logged metrics).

    The metrics stay on the device between syncs: they are fetched (every pending step's at
    once) only at a log step, before a checkpoint is written, and at the end, so the host
    does not wait for each step to finish and the device runs ahead. Every fetched step is
    checked, so a non-finite loss stops with its own step number and no checkpoint is ever
    written of a state after one. The progress bar's loss is the last fetched one."""
    workdir = paths.as_path(workdir)
    lead = jax.process_index() == 0
    stopper = EarlyStopping(config)
    # every host reads the log: one decision everywhere
    replayed = stopper.replay(workdir / "metrics.jsonl", upto=start)
    if stopper.stopped_at is not None:
        logging.info("early stopping already stopped this run at step %d", stopper.stopped_at)
        return state, replayed
    log = None
    if lead:
        truncate_log(workdir / "metrics.jsonl", start)
        log = paths.JsonLines(workdir / "metrics.jsonl")
    tb = None
    if lead and tensorboard:
        from tensorboardX import SummaryWriter

        paths.register_tensorboard(workdir)
        # events of the steps after `start` (replayed now) are purged from the log
        tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=start + 1)
    progress = _progress(start, end, enabled=lead)
    last: dict = {}
    t0, seen, window = time.perf_counter(), 0, []
    pending = []  # the device metrics of the steps since the last fetch
    try:
        for i in range(start, end):
            state, metrics = step(state, next(iterator))
            pending.append(metrics)
            seen += config.batch_size
            done = i + 1
            log_now = done % config.log_every == 0 or done == end
            if not (log_now or _should_save(mgr, done)):
                progress.update(1)
                continue
            fetched = jax.device_get(pending)
            pending = []
            for j, m in enumerate(fetched):
                m = {k: float(v) for k, v in m.items()}
                _check_finite(m, done - len(fetched) + 1 + j, mgr, workdir)
                window.append(m["loss"])
            metrics = m
            window_end = stopper.enabled and done % config.log_every == 0
            stop = window_end and stopper.update(float(np.mean(window)), done)
            mgr.save(
                done,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=grain.checkpoint.CheckpointSave(iterator),
                ),
                force=done == end or stop,
            )
            if log_now:
                now = time.perf_counter()
                last = {"step": done, **metrics, "examples_per_s": seen / (now - t0)}
                if window_end:
                    last["loss_window"] = float(np.mean(window))
                t0, seen, window = now, 0, []
                if lead:
                    log.write(json.dumps(last) + "\n")
                    log.flush()
                    for k, v in last.items():
                        if tb is not None and k != "step":
                            tb.add_scalar(k, v, done)
            progress.update(1)
            progress.set_postfix(loss=f"{metrics['loss']:.4f}")
            if stop:
                logging.info(
                    "early stopping at step %d: the window loss has not improved on %.6g by "
                    "more than %g for %d windows",
                    done,
                    stopper.best,
                    stopper.min_delta,
                    stopper.patience,
                )
                break
    finally:
        progress.close()
        mgr.wait_until_finished()
        if lead:
            log.close()
            if tb is not None:
                tb.close()
    return state, last


def _should_save(mgr, step: int) -> bool:
    """Whether `mgr.save(step)` would write (orbax's `should_save`; a manager without it is
    asked at every step)."""
    should = getattr(mgr, "should_save", None)
    return True if should is None else bool(should(step))


def _check_finite(metrics: dict, step: int, mgr, workdir) -> None:
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        what = "loss" if "loss" in bad else bad[0]  # e.g. ProSAM's sigma statistics
        raise NonFiniteLoss(
            f"non-finite {what} ({metrics[what]}) at step {step}: stopping. The last good "
            f"checkpoint is step {mgr.latest_step()} in {paths.as_path(workdir) / 'checkpoints'}."
        )


def truncate_log(path: PathLike, step: int) -> None:
    """Drop the lines of a `metrics.jsonl` whose step is after `step` (a resumed run replays
    them), atomically, so every step appears once."""
    path = paths.as_path(path)
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = [line for line, record in _logged(path, lines) if record["step"] <= step]
    keep = [line if line.endswith("\n") else line + "\n" for line in keep]
    if keep != lines:
        paths.write_atomic(path, "".join(keep))


def _logged(path: PathLike, lines: list[str] | None = None):
    """(line, record) of each readable line of a `metrics.jsonl` (`lines`: its text already
    read); a line cut by a kill mid-write is skipped."""
    path = paths.as_path(path)
    if lines is None:
        lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    for line in lines:
        try:
            record = json.loads(line)
            record["step"]
        except (ValueError, KeyError, TypeError):
            continue
        yield line, record


def _progress(start: int, end: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=end, initial=start, disable=not enabled, desc="train", unit="step", file=sys.stderr
    )
