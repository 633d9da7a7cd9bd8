"""The trainer: exact resumption across processes, 1 vs 8 devices, logs, non-finite loss.

The trainer's mechanics (resumption, kills, devices, non-finite losses) are checked on the
test learner of tests/toy_learner.py with dropout (so on the rng streams too): they do not
depend on the learner, and it compiles in a fraction of VRP-SAM's time. One VRP-SAM run
checks the logs and feeds the evaluation tests.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvrp import train
from jaxvrp.learners import registry, vrp
from tests import processes, toy_learner

RUNNER = os.path.join(os.path.dirname(__file__), "train_runner.py")
SIX = ["epochs=1", "steps_per_epoch=6", "checkpoint_every=3"]  # the runs of `runs`


def _command(tmp_path, name, devices, *overrides) -> list[str]:
    out = tmp_path / f"{name}.npz"
    data = f"data.data_dir={tmp_path / 'tfds'}"  # shared: built once by `runs`
    return [sys.executable, RUNNER, str(tmp_path / name), str(out), str(devices), data, *overrides]


def _result(tmp_path, name) -> dict:
    return dict(np.load(tmp_path / f"{name}.npz"))


def _run(tmp_path, name, devices, *overrides):
    processes.run_together([_command(tmp_path, name, devices, *overrides)], timeout=600)
    return _result(tmp_path, name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    processes.build_procedural(tmp / "tfds")
    three = ["epochs=1", "steps_per_epoch=3", "batch_size=8"]  # the same global batch
    # two at a time (2 cores): the VRP-SAM run beside the toy runs one after another (the
    # resumed run's second process continues its workdir)
    processes.run_lanes(
        [
            [_command(tmp, "straight", 1, *SIX)],  # VRP-SAM: logs, evaluation
            [
                _command(tmp, "resumed", 1, "toy", *SIX, "stop_after=3"),  # exits after step 3
                _command(tmp, "resumed", 1, "toy", *SIX),
                _command(tmp, "toy_straight", 1, "toy", *SIX),
                _command(tmp, "one", 1, "toy", *three),
                _command(tmp, "eight", 8, "toy", *three),
            ],
        ]
    )
    straight, resumed = _result(tmp, "toy_straight"), _result(tmp, "resumed")
    return tmp, straight, resumed, (_result(tmp, "one"), _result(tmp, "eight"))


def test_resume_in_a_new_process_is_bitwise_identical(runs):
    _, straight, resumed, _ = runs
    keys = [k for k in straight if k != "losses"]
    assert keys and set(keys) == {k for k in resumed if k != "losses"}
    for k in keys:
        np.testing.assert_array_equal(resumed[k], straight[k], err_msg=k)
    np.testing.assert_array_equal(resumed["losses"], straight["losses"])  # 3 + 3 logged


def test_a_killed_run_resumes_from_its_last_checkpoint_and_logs_each_step_once(runs):
    """SIGKILL at step 5 (not a checkpoint step; checkpoints every 3), then a new process in
    the same workdir: the same params as the uninterrupted run of `runs`, bitwise, and each
    step logged (metrics.jsonl) exactly once."""
    tmp, straight, _, _ = runs
    work = tmp / "killed"
    env = dict(os.environ, TRAIN_RUNNER_HANG_AFTER="5")
    cmd = [sys.executable, RUNNER, str(work), str(tmp / "k.npz"), "1"]
    cmd += ["toy", f"data.data_dir={tmp / 'tfds'}", *SIX]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):
            if (work / "HANGING").exists() or proc.poll() is not None:
                break
            time.sleep(0.5)
        assert (work / "HANGING").exists(), "the run never reached step 5"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    steps = [json.loads(x)["step"] for x in open(work / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5]
    assert train.checkpoint_manager(work, _ckpt_options()).latest_step() == 3
    resumed = _run(tmp, "killed", 1, "toy", *SIX)
    steps = [json.loads(x)["step"] for x in open(work / "metrics.jsonl")]
    assert steps == list(range(1, 7))
    for k in straight:
        np.testing.assert_array_equal(resumed[k], straight[k], err_msg=k)


def _ckpt_options():
    config = toy_learner.get_config("runlocal")
    config.checkpoint_every = 3
    return config


def test_truncate_log_keeps_steps_up_to_the_restored_one(tmp_path):
    from jaxvrp import loop

    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 7)))
    log.write_text(log.read_text() + '{"step": 7, "lo')  # cut by a kill mid-write
    loop.truncate_log(log, 4)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2, 3, 4]
    loop.truncate_log(log, 0)
    assert log.read_text() == ""


def test_one_and_eight_devices_give_the_same_losses(runs):
    one, eight = runs[3]
    assert len(one["losses"]) == len(eight["losses"]) == 3
    rel = np.abs(eight["losses"] - one["losses"]) / np.abs(one["losses"])
    assert rel.max() <= 1e-6, rel


def test_metrics_log_and_tensorboard(runs):
    tmp = runs[0]
    lines = [json.loads(x) for x in open(tmp / "straight" / "metrics.jsonl")]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5, 6]
    for x in lines:
        assert {"loss", "lr", "grad_norm", "examples_per_s", "bce", "dice"} <= set(x)
    assert list((tmp / "straight" / "tensorboard").glob("events.out.tfevents.*"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(runs, monkeypatch):
    tmp = runs[0]
    workdir = tmp / "nan"
    config = toy_learner.get_config("runlocal")
    config.data.data_dir = str(tmp / "tfds")
    config.epochs, config.steps_per_epoch, config.checkpoint_every = 1, 4, 2
    config.batch_size = 8  # the tests run on 8 simulated devices
    config.stop_after = 2
    train.train(config, workdir)

    def poisoned(*args, **kwargs):
        loss, parts = toy_learner.loss_fn(*args, **kwargs)
        return loss * jnp.nan, parts

    poisoned_learner = dataclasses.replace(toy_learner.LEARNER, loss_fn=poisoned)
    monkeypatch.setitem(registry._LEARNERS, toy_learner.NAME, poisoned_learner)
    config.stop_after = 0
    with pytest.raises(train.NonFiniteLoss, match="at step 3.*last good checkpoint is step 2"):
        train.train(config, workdir)
    assert train.checkpoint_manager(workdir, config).latest_step() == 2


def test_a_non_finite_metric_stops_like_a_non_finite_loss(tmp_path):
    """e.g. ProSAM's sigma statistics: a finite loss with an infinite sigma_max stops."""
    from jaxvrp import loop

    class Manager:  # the part of orbax's CheckpointManager run_steps uses
        def latest_step(self):
            return 1

        def save(self, *args, **kwargs):
            pass

        def wait_until_finished(self):
            pass

    def step(state, batch):
        bad = state >= 1
        return state + 1, {"loss": 1.0, "sigma_max": float("inf") if bad else 2.0}

    config = type("C", (), {"batch_size": 1, "log_every": 1})()
    with pytest.raises(train.NonFiniteLoss, match="non-finite sigma_max.*at step 2"):
        loop.run_steps(
            step,
            0,
            iter(range(9)),
            Manager(),
            tmp_path,
            start=0,
            end=5,
            config=config,
            tensorboard=False,
        )
    assert [json.loads(x)["step"] for x in open(tmp_path / "metrics.jsonl")] == [1]


class _Saves:
    """The part of orbax's CheckpointManager run_steps uses, saving every `every` steps."""

    def __init__(self, every):
        self.every, self.saved = every, []

    def latest_step(self):
        return self.saved[-1] if self.saved else None

    def should_save(self, step):
        return step % self.every == 0

    def save(self, step, args=None, force=False):
        if force or self.should_save(step):
            self.saved.append(step)

    def wait_until_finished(self):
        pass


def _count_fetches(monkeypatch):
    from jaxvrp import loop

    fetches = []
    real = loop.jax.device_get
    monkeypatch.setattr(loop.jax, "device_get", lambda x: fetches.append(len(x)) or real(x))
    return fetches


def test_metrics_leave_the_device_only_at_log_and_checkpoint_steps(tmp_path, monkeypatch):
    from jaxvrp import loop

    fetches = _count_fetches(monkeypatch)
    config = type("C", (), {"batch_size": 1, "log_every": 4})()
    mgr = _Saves(every=3)
    step = lambda s, b: (s + 1, {"loss": jnp.float32(s)})
    loop.run_steps(
        step, 0, iter(range(99)), mgr, tmp_path, start=0, end=10, config=config, tensorboard=False
    )
    # fetched at 3 (checkpoint), 4 (log), 6 (checkpoint), 8 (log), 9 (checkpoint), 10 (end)
    assert fetches == [3, 1, 2, 2, 1, 1] and mgr.saved == [3, 6, 9, 10]
    logged = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [(x["step"], x["loss"]) for x in logged] == [(4, 3.0), (8, 7.0), (10, 9.0)]


def test_a_non_finite_loss_between_syncs_names_its_step_and_is_never_saved(tmp_path, monkeypatch):
    from jaxvrp import loop

    fetches = _count_fetches(monkeypatch)
    config = type("C", (), {"batch_size": 1, "log_every": 5})()
    mgr = _Saves(every=2)
    step = lambda s, b: (s + 1, {"loss": jnp.where(s == 2, jnp.nan, 1.0)})  # step 3's loss
    with pytest.raises(train.NonFiniteLoss, match=r"\(nan\) at step 3.*checkpoint is step 2"):
        loop.run_steps(
            step,
            0,
            iter(range(99)),
            mgr,
            tmp_path,
            start=0,
            end=9,
            config=config,
            tensorboard=False,
        )
    assert fetches == [2, 2] and mgr.saved == [2]  # step 4's state (after the NaN) not saved


def test_evaluate_a_trained_checkpoint(runs):
    from configs import vrp_sam
    from jaxvrp import evaluate
    from jaxvrp.data import procedural

    tmp = runs[0]
    config = vrp_sam.get_config("runlocal")
    config.data.data_dir = str(tmp / "tfds")
    config.batch_size = 8  # 8 simulated devices; 8 evaluation episodes in one batch
    params, step = evaluate.restore_params(config, tmp / "straight" / "checkpoints")
    assert step == 6
    result = evaluate.evaluate(config, params)
    assert result["episodes"] == config.data.num_eval_episodes == 8
    novel = set(procedural.procedural_classes(config.data.fold)[1])
    assert set(result["per_class_iou"]) <= novel
    assert 0 <= result["miou"] <= 1 and 0 <= result["fb_iou"] <= 1
    evaluate.write_results(tmp / "straight", {"VRP-SAM": result})
    assert "| VRP-SAM |" in (tmp / "straight" / "eval" / "results.md").read_text()
    assert json.loads((tmp / "straight" / "eval" / "results.json").read_text())["VRP-SAM"]


def test_compile_only_reports_memory_without_allocating():
    from configs import vrp_sam

    config = vrp_sam.get_config("runlocal")
    config.batch_size = 8
    report = train.compile_only(config)
    assert report["devices"] == 8
    assert report["learner_params"] == vrp.num_params(
        vrp.param_shapes(train.trainer.learner_config(config))
    )
    assert report["temp_size_gib"] > 0 and report["argument_size_gib"] > 0
    assert not report["precomputed_query_embedding"]

    # on precomputed features: the step that reads the query embedding from the batch
    config.data.feature_cache = "/nonexistent/features"  # compile only: never opened
    cached = train.compile_only(config)
    assert cached["precomputed_query_embedding"]
    from jaxvrp import frozen as frozen_lib
    from jaxvrp import sam as sam_lib

    sam = sam_lib.config.get_config(config.model.sam)
    embedding = config.batch_size * sam.embedding_size**2 * sam.prompt_embed_dim * 4 / 2**30
    # per device: the batch's share of the embedding in, the SAM image encoder's replicated
    # weights out (unused by that step, so not arguments of the compiled program)
    shapes = frozen_lib.param_shapes(vrp.LEARNER.frozen(train.trainer.learner_config(config)))
    encoder = sum(x.size * 4 for x in jax.tree.leaves(shapes["sam"]["image_encoder"])) / 2**30
    extra = cached["argument_size_gib"] - report["argument_size_gib"]
    assert extra == pytest.approx(embedding / jax.device_count() - encoder, rel=1e-4)


def test_evaluation_embedding_cache_gives_the_same_results(runs, tmp_path):
    from configs import vrp_sam
    from jaxvrp import evaluate

    tmp = runs[0]
    config = vrp_sam.get_config("runlocal")
    config.data.data_dir = str(tmp / "tfds")
    config.batch_size = 8
    params, _ = evaluate.restore_params(config, tmp / "straight" / "checkpoints")
    plain = evaluate.evaluate(config, params)
    config.data.embedding_cache = str(tmp_path / "cache")
    first = evaluate.evaluate(config, params)
    files = sorted((tmp_path / "cache").glob("*/*.npy"))
    assert files and len(files) <= config.data.num_eval_episodes
    second = evaluate.evaluate(config, params)  # now read from the cache
    assert sorted((tmp_path / "cache").glob("*/*.npy")) == files
    for r in (first, second):
        assert r["per_class_iou"] == pytest.approx(plain["per_class_iou"], abs=1e-6)
