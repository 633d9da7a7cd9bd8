"""Configs that would silently run on random frozen weights, or hide a dataset error, fail
loudly and name what to fix."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import gp_sam, oracle_box, vrp_sam
from jaxvrp import evaluate, train
from jaxvrp import frozen as frozen_lib
from jaxvrp.data import episodes

ROOT = Path(__file__).resolve().parents[1]


def test_random_frozen_weights_are_refused_naming_the_flags(tmp_path):
    config = vrp_sam.get_config("dataset=procedural,sam=test_small_image")
    assert not config.frozen.allow_random
    with pytest.raises(frozen_lib.RandomWeightsError) as e:
        train.train(config, tmp_path / "work")
    assert "--config.frozen.sam_checkpoint=DIR" in str(e.value)
    assert "--config.frozen.backbone_checkpoint=DIR" in str(e.value)
    assert "--config.frozen.allow_random=True" in str(e.value)
    assert not (tmp_path / "work").exists()  # refused before anything was written
    with pytest.raises(frozen_lib.RandomWeightsError, match="sam_checkpoint"):
        evaluate.evaluate(config)
    # a SAM-encoder backbone comes with the SAM: only the SAM's flag is asked for
    sam_bb = gp_sam.get_config("dataset=procedural,backbone=sam_tiny_128,sam=tiny_128")
    with pytest.raises(frozen_lib.RandomWeightsError) as e:
        evaluate.evaluate(sam_bb)
    assert "sam_checkpoint" in str(e.value) and "backbone_checkpoint" not in str(e.value)
    oracle = oracle_box.get_config("dataset=procedural")
    with pytest.raises(frozen_lib.RandomWeightsError, match="sam_checkpoint"):
        evaluate.evaluate(oracle)
    assert vrp_sam.get_config("runlocal").frozen.allow_random  # runlocal and tests may


def test_train_program_exits_2_before_compiling():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxvrp.train",
            "--config",
            "configs/vrp_sam.py:dataset=procedural",
            "--workdir",
            "/nonexistent/never/created",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--config.frozen.sam_checkpoint=DIR" in proc.stderr


def test_missing_build_and_broken_build_are_told_apart(tmp_path):
    with pytest.raises(FileNotFoundError, match="'pascal5i' is not built under"):
        episodes.open_source("pascal5i", "val", str(tmp_path))
    broken = tmp_path / "pascal5i" / "1.0.0"
    broken.mkdir(parents=True)
    (broken / "dataset_info.json").write_text("{ not json")
    assert episodes.is_built("pascal5i", str(tmp_path))
    with pytest.raises(Exception) as e:  # TFDS's own error, not "not built"
        episodes.open_source("pascal5i", "val", str(tmp_path))
    assert "is not built" not in str(e.value)
