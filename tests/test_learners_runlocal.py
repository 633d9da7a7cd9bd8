"""Every learner config's runlocal mode trains (when trainable) and evaluates through the
one trainer and evaluator: HSNet, SAMIC (points derived on the host by its `prepare`),
PerSAM and PerSAM-F. (VRP-SAM and ProSAM: tests/test_train.py, tests/test_demo.py.)"""

import json

import pytest

from configs import hsnet, persam, samic
from jaxvrp import evaluate, train


def _tiny(config, tmp_path, steps: int):
    config.unlock()
    if "num_4d_layers" in config.model:
        config.model.num_4d_layers = 1  # the smallest HSNet: compile time, not numbers
    config.data.data_dir = str(tmp_path.parent / "tfds")  # one procedural build for all
    config.batch_size = 8  # the 8 simulated devices
    config.steps_per_epoch = steps
    config.log_every = 1
    config.checkpoint_every = steps
    config.lock()
    return config


@pytest.mark.parametrize("name,make", [("hsnet", hsnet.get_config), ("samic", samic.get_config)])
def test_trainable_learner_runlocal(tmp_path, name, make):
    config = _tiny(make("runlocal"), tmp_path, steps=2)
    train.train(config, tmp_path / name)
    lines = [json.loads(x) for x in open(tmp_path / name / "metrics.jsonl")]
    assert [x["step"] for x in lines] == [1, 2]
    params, step = evaluate.restore_params(config, tmp_path / name / "checkpoints")
    result = evaluate.evaluate(config, params)
    assert step == 2 and result["episodes"] == 8 and 0.0 <= result["miou"] <= 1.0


@pytest.mark.parametrize("arg", ["runlocal", "persam_f,runlocal"])
def test_training_free_learner_runlocal(tmp_path, arg):
    config = _tiny(persam.get_config(arg), tmp_path, steps=1)
    assert train.train(config, tmp_path / "w") == {}  # nothing to train
    result = evaluate.evaluate(config)
    assert result["episodes"] == 8 and 0.0 <= result["miou"] <= 1.0
