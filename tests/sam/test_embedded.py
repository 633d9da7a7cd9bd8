"""The embedded default SAM: loads, is small, and is as good as its metadata says."""

import json

from jaxvrp import assets
from jaxvrp import sam as sam_lib
from jaxvrp.sam import evaluate


def test_embedded_sam_reproduces_its_stated_quality():
    directory = assets.default_sam_dir()
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    assert size < 4 * 2**20, f"the embedded SAM takes {size / 2**20:.1f} MiB"
    params, config = sam_lib.load(directory)
    assert config == sam_lib.config.get_config("tiny_128")
    meta = json.loads((directory / "metadata.json").read_text())
    stated = meta["training"]["quality"]
    ev = meta["training"]["config"]["eval"]
    images, masks, _ = evaluate.procedural_targets(
        ev["num_images"], ev["seed"], meta["training"]["config"]["data"]["image_size"], config
    )
    got = evaluate.evaluate_oracle_prompts(params, config, images, masks, batch_size=25)
    assert got["num_targets"] == stated["num_targets"]
    for key in ("point_miou", "point_best_miou", "box_miou"):
        assert abs(got[key] - stated[key]) < 5e-3, (key, got[key], stated[key])
    assert got["box_miou"] > 0.7  # a usable SAM: the demo's upper bound rests on it
