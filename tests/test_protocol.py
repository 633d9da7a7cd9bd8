"""The learner protocol: one registry, every tool dispatching through it, and a SAM port
that stands alone."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxvrp import evaluate, train
from jaxvrp.data import procedural
from jaxvrp.learners import checkpoint, registry
from jaxvrp.learners.protocol import Learner
from tests import toy_learner

ROOT = Path(__file__).resolve().parents[1]


def _fresh(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_sam_imports_nothing_of_the_learners_data_or_trainers():
    code = (
        "import json, sys\n"
        "import jaxvrp.sam\n"
        "from jaxvrp.sam import Predictor, predict_masks, preprocess\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('jaxvrp'))))\n"
    )
    loaded = json.loads(_fresh(code).stdout.splitlines()[-1])
    assert "jaxvrp.sam.model" in loaded and "jaxvrp.sam.predictor" in loaded
    banned = ("jaxvrp.learners", "jaxvrp.data", "jaxvrp.train", "jaxvrp.evaluate", "jaxvrp.loop")
    assert [m for m in loaded if m.startswith(banned)] == []


def test_every_builtin_learner_fulfils_the_protocol():
    names = registry.names()
    assert {"vrp_sam", "prosam", "gp_sam", "oracle_box"} <= set(names)
    for learner in registry.all_learners():
        assert isinstance(learner, Learner) and learner.name in names
        assert registry.get(learner.name, module=learner.module) is learner
        assert callable(learner.make_config) and callable(learner.apply)
    with pytest.raises(ValueError, match="unknown learner 'nope'.*vrp_sam"):
        registry.get("nope")
    other = Learner("vrp_sam", "x", dict, dict, dict, dict)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(other)


def test_no_tool_names_a_learner():
    """Only the registry, the learners' own modules and the config files know names."""
    names = set(registry.names())
    tools = [
        "jaxvrp/train.py",
        "jaxvrp/trainer.py",
        "jaxvrp/loop.py",
        "jaxvrp/evaluate.py",
        "jaxvrp/segment.py",
        "jaxvrp/demo.py",
        "jaxvrp/frozen.py",
        "jaxvrp/configs.py",
        "jaxvrp/learners/checkpoint.py",
        "jaxvrp/learners/protocol.py",
    ]
    for path in tools:
        tree = ast.parse((ROOT / path).read_text())
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
        attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not (strings & names), (path, strings & names)
        assert "vrp" not in attrs, path  # no getattr(config, "vrp") / lconfig.vrp


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toy")
    config = toy_learner.get_config("runlocal")
    config.unlock()
    config.data.data_dir = str(tmp / "tfds")
    config.batch_size = 8  # the 8 simulated devices
    config.steps_per_epoch = 12
    config.lock()
    before = evaluate.evaluate(config, None)  # the fresh init, through the same evaluator
    train.train(config, tmp / "work")
    return tmp, config, before


def test_a_toy_learner_trains_and_evaluates_through_the_tools(toy_run):
    tmp, config, before = toy_run
    lines = [json.loads(x) for x in open(tmp / "work" / "metrics.jsonl")]
    assert [x["step"] for x in lines] == list(range(1, 13))
    assert lines[-1]["loss"] < lines[0]["loss"]
    params, step = evaluate.restore_params(config, tmp / "work" / "checkpoints")
    assert step == 12 and set(params) == {"scale", "margin"}
    after = evaluate.evaluate(config, params)
    assert after["episodes"] == before["episodes"] == 8
    assert after["miou"] != before["miou"]
    ckpt = checkpoint.load(tmp / "work" / "learner")
    assert ckpt.learner is toy_learner.LEARNER and ckpt.backbone_params is None
    assert ckpt.metadata["module"] == "tests.toy_learner"
    np.testing.assert_array_equal(ckpt.params["margin"], params["margin"])


def test_a_toy_learner_segments_in_a_fresh_process(toy_run, tmp_path):
    tmp = toy_run[0]
    sample = procedural.generate_image(3, "test", 0, 80)
    c = int(sample.classes[0])
    Image.fromarray(sample.image).save(tmp_path / "ref.png")
    Image.fromarray(((sample.mask == c) * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    (tmp_path / "targets").mkdir()
    for i in (1, 2):
        Image.fromarray(procedural.generate_image(3, "test", i, 72).image).save(
            tmp_path / "targets" / f"t{i}.png"
        )
    # a new process that has never imported tests.toy_learner: the checkpoint names it
    code = (
        "import sys\nfrom jaxvrp import cli\n"
        f"sys.exit(cli.main(['segment', '--learner', {str(tmp / 'work' / 'learner')!r}, "
        f"'--reference', {str(tmp_path / 'ref.png')!r}, "
        f"'--reference-mask', {str(tmp_path / 'mask.png')!r}, "
        f"'--targets', {str(tmp_path / 'targets')!r}, '--out', {str(tmp_path / 'out')!r}]))\n"
    )
    _fresh(code)
    for i in (1, 2):
        with Image.open(tmp_path / "out" / f"t{i}_mask.png") as m:
            assert m.size == (72, 72) and set(np.unique(np.asarray(m))) <= {0, 255}
