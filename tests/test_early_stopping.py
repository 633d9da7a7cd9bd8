"""Early stopping on the training loss (`config.early_stopping`, SAMIC §4.2) and the
per-class training subset (`data.train_fraction`): decisions, resumes, errors."""

import json

import grain
import ml_collections
import numpy as np
import pytest

from jaxvrp import loop
from jaxvrp.data import episodes

# a loss that falls for 12 steps, then stays flat: windows of 3 steps improve 4 times
LOSSES = [10.0 - i for i in range(12)] + [-1.5] * 30


def _config(patience=2, log_every=3, checkpoint_every=3, min_delta=0.0):
    c = ml_collections.ConfigDict()
    c.batch_size = 1
    c.log_every, c.checkpoint_every, c.keep_checkpoints = log_every, checkpoint_every, 10
    c.early_stopping = ml_collections.ConfigDict()
    c.early_stopping.patience, c.early_stopping.min_delta = patience, min_delta
    return c


def _run(workdir, config, end, calls):
    """`loop.run_steps` over a counter state, the loss read from `LOSSES` by step."""
    iterator = iter(grain.MapDataset.range(1000).to_iter_dataset())
    mgr = loop.checkpoint_manager(workdir, config)
    state, start = loop.restore_latest(mgr, {"step": np.zeros((), np.int64)}, iterator, workdir)

    def step(state, batch):
        calls.append(int(batch))
        n = int(state["step"])
        return {"step": np.asarray(n + 1, np.int64)}, {"loss": np.float32(LOSSES[n])}

    state, last = loop.run_steps(
        step, state, iterator, mgr, workdir, start=start, end=end, config=config, tensorboard=False
    )
    mgr.close()
    return int(state["step"]), last, mgr


def _logged(workdir):
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_stops_after_patience_windows_without_improvement(tmp_path):
    calls = []
    steps, last, _ = _run(tmp_path, _config(), 40, calls)
    # windows end at 3, 6, 9, 12, 15 (each improving), then 18 and 21 are flat: patience 2
    windows = [np.mean(LOSSES[i : i + 3]) for i in range(0, 21, 3)]
    assert windows[4] < windows[3] and windows[5] == windows[6] == windows[4]
    assert steps == 21 and calls == list(range(21))
    assert [r["step"] for r in _logged(tmp_path)] == [3, 6, 9, 12, 15, 18, 21]
    np.testing.assert_allclose([r["loss_window"] for r in _logged(tmp_path)], windows)
    mgr = loop.checkpoint_manager(tmp_path, _config())
    assert mgr.latest_step() == 21  # the stopping step is saved
    # a rerun in the same workdir is already stopped: no step runs
    again = []
    steps, last, _ = _run(tmp_path, _config(), 40, again)
    assert again == [] and steps == 21 and last["step"] == 21


def test_a_resumed_run_stops_where_an_uninterrupted_one_does(tmp_path):
    straight = []
    _run(tmp_path / "a", _config(), 40, straight)
    first, second = [], []
    _run(tmp_path / "b", _config(), 15, first)  # the process ends after step 15 (a checkpoint)
    steps, _, _ = _run(tmp_path / "b", _config(), 40, second)
    assert steps == 21 and first + second == straight
    drop = lambda rows: [{k: v for k, v in r.items() if k != "examples_per_s"} for r in rows]
    assert drop(_logged(tmp_path / "b")) == drop(_logged(tmp_path / "a"))  # each step once


def test_min_delta_and_off(tmp_path):
    calls = []
    # window means 9, 6, 3, 0, -1.5: the best 9 is beaten by more than 5 only at window 3
    # (3); windows 4 and 5 (0, -1.5) do not beat 3 by 5, so the run stops at step 15
    steps, _, _ = _run(tmp_path / "delta", _config(min_delta=5.0), 40, calls)
    assert steps == 15 and calls == list(range(15))
    steps, _, _ = _run(tmp_path / "off", _config(patience=0), 30, [])
    assert steps == 30 and all("loss_window" not in r for r in _logged(tmp_path / "off"))


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="multiple of log_every"):
        loop.EarlyStopping(_config(log_every=3, checkpoint_every=4))
    with pytest.raises(ValueError, match="patience must be >= 0"):
        loop.EarlyStopping(_config(patience=-1))


def test_train_fraction_subset_is_seeded_per_class_and_keeps_the_minimum():
    index = episodes.ClassIndex(
        {1: np.arange(0, 100), 2: np.arange(100, 110), 3: np.arange(200, 202)}
    )
    sub = index.subset(0.2, seed=7, minimum=3)
    assert [len(sub.records[c]) for c in (1, 2, 3)] == [20, 3, 2]  # ceil(20 %), >= 3, all
    for c in (1, 2, 3):
        r = sub.records[c]
        assert set(r) <= set(index.records[c]) and (np.diff(r) > 0).all()  # a sorted subset
    again = index.subset(0.2, seed=7, minimum=3)
    assert all((again.records[c] == sub.records[c]).all() for c in (1, 2, 3))
    other = index.subset(0.2, seed=8, minimum=3)
    assert not (other.records[1] == sub.records[1]).all()
    # one class's draw does not depend on the others
    alone = episodes.ClassIndex({1: np.arange(0, 100)}).subset(0.2, seed=7, minimum=3)
    assert (alone.records[1] == sub.records[1]).all()
    assert index.subset(1.0, seed=7, minimum=3) is index
    with pytest.raises(ValueError, match="train_fraction"):
        index.subset(0.0, seed=7, minimum=3)
