"""The README's main job at a tiny size: SAM training, the demo's stages, `jaxvrp segment`
with the demo's learner and the embedded SAM. Run as fresh single-device processes, as a
user runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from jaxvrp import assets, demo, segment
from jaxvrp import sam as sam_lib
from jaxvrp.data import procedural
from jaxvrp.learners import checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, timeout=900):
    flags = "--xla_force_host_platform_device_count=1" + os.environ["JAXVRP_TEST_XLA_OPT_FLAGS"]
    env = dict(os.environ, XLA_FLAGS=flags)
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_sam_training_runlocal_exports_a_loadable_sam(tmp_path):
    _run("-m", "jaxvrp.sam.train", "--config", "configs/sam.py:runlocal", "--workdir", tmp_path)
    params, config = sam_lib.load(tmp_path / "sam")
    assert config == sam_lib.config.get_config("tiny_128")
    meta = json.loads((tmp_path / "sam" / "metadata.json").read_text())
    quality = meta["training"]["quality"]
    assert {"point_miou", "point_best_miou", "box_miou"} <= set(quality)
    assert quality["point_best_miou"] >= quality["point_miou"]
    assert meta["training"]["steps"] == 3 and meta["training"]["config"]["sam"] == "tiny_128"
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]


def test_demo_stages_and_segment_with_its_learner(tmp_path):
    out = tmp_path / "demo"
    proc = _run("-m", "jaxvrp.demo", "--runlocal", "--out", out)
    results = json.loads((out / "results.json").read_text())
    methods = [
        "VRP-SAM",
        "ProSAM",
        "HSNet",
        "SAMIC",
        "GP-SAM (points)",
        "GP-SAM (box)",
        "GP-SAM (points+box)",
        "PerSAM",
        "PerSAM-F",
        "SSPrompt",
        "Matcher (SAM feat., no filters)",
        "SAM + oracle box",
    ]
    assert list(results) == sorted(methods) or set(results) == set(methods)
    for r in results.values():
        assert r["episodes"] == 8 and 0.0 <= r["miou"] <= 1.0
        assert set(r["per_class_iou"]) <= {"1", "2", "3", "4", "5"}  # fold 0's novel classes
    assert "| method | mIoU |" in proc.stdout and "SAM + oracle box" in proc.stdout
    grid = np.asarray(Image.open(out / "examples.png"))
    # a header, 2 episodes x (reference, target, 12 methods), the legend (one line at this width)
    assert grid.shape == (26 + 2 * 68 + demo.LEGEND_HEIGHT, 14 * 68, 3)
    legend = grid[26 + 2 * 68 :].reshape(-1, 3)
    for colour, _ in demo.LEGEND:  # every colour of the overlays has its swatch
        assert (legend == colour).all(axis=1).sum() >= 100, colour
    # the frozen features were precomputed once for all rows: the SAM embeddings of both
    # splits and the backbone stages VRP-SAM, ProSAM and GP-SAM read
    stores = {p.name.rsplit("_", 1)[0] for p in (out / "features").iterdir()}
    for split in ("train", "test"):
        assert f"sam_procedural_{split}" in stores
        assert {f"backbone_layer{n}_procedural_{split}" for n in (2, 3, 4)} <= stores
    for learner in ("vrp_sam", "prosam", "hsnet", "samic"):
        ckpt = checkpoint.load(out / learner / "learner")
        assert ckpt.learner.name == learner and ckpt.image_size == 64
        assert ckpt.backbone_params is None  # the SAM's own encoder

    sample = procedural.generate_image(5, "test", 0, 96)
    c = int(sample.classes[0])
    Image.fromarray(sample.image).save(tmp_path / "ref.png")
    Image.fromarray(((sample.mask == c) * 255).astype(np.uint8)).save(tmp_path / "ref_mask.png")
    targets = tmp_path / "targets"
    targets.mkdir()
    for i in (1, 2):
        img = procedural.generate_image(5, "test", i, 80 + 8 * i).image
        Image.fromarray(img).save(targets / f"t{i}.png")
    code = segment.main(
        [
            "--learner",
            str(out / "vrp_sam" / "learner"),
            "--reference",
            str(tmp_path / "ref.png"),
            "--reference-mask",
            str(tmp_path / "ref_mask.png"),
            "--targets",
            str(targets),
            "--out",
            str(tmp_path / "seg"),
        ]
    )  # --sam defaults to the embedded SAM
    assert code == 0
    for i in (1, 2):
        mask = np.asarray(Image.open(tmp_path / "seg" / f"t{i}_mask.png"))
        assert mask.shape == (80 + 8 * i,) * 2 and set(np.unique(mask)) <= {0, 255}
        assert (tmp_path / "seg" / f"t{i}_overlay.png").is_file()
    assert assets.default_sam_dir().is_dir()
