"""The whole system on a CPU in minutes: `python -m jaxvrp.demo --out out/demo`.

Stages (each timed and logged; training shows a progress bar):

1. data: builds the procedural benchmark (`procedural_fss`, "default": 2000 train / 500 test
   images of 128 px) under `OUT/tfds`.
2. SAM: the embedded default SAM (`jaxvrp/assets/sam_tiny_128`, trained by
   `python -m jaxvrp.sam.train --config configs/sam.py`), frozen.
3. VRP-SAM, ProSAM, HSNet and SAMIC: trained on fold 0's base classes (15 of the 20
   classes), mask references, 1 shot. The frozen SAM embedding of every image, and the
   backbone stages VRP-SAM, ProSAM and GP-SAM read, are computed once by `jaxvrp.precompute`
   (`OUT/features`) before the first training and evaluation that need them, and read by
   every row's steps instead of running the frozen encoder. The semantic backbone is the
   embedded SAM's own image encoder (arch "sam_tiny_128"): it is the only model on the
   machine that has seen these images' kind, so it needs no download and no extra
   training, and it costs no extra parameters.
4. evaluation on fold 0's 5 novel classes (fixed episodes of the test split), next to
   GP-SAM (points / box / both sampled from the pseudo-mask, VRP-SAM paper §5.3) and SAM
   with the oracle box (the upper bound: perfect localisation).
5. `OUT/results.md` / `results.json` (the table, also printed) and `OUT/examples.png`: per
   row a reference (annotation outlined), the target with its ground truth outlined, and each
   method's prediction (green: correct, red: false positive, blue: missed), with that legend
   drawn under the grid.

The methods and every setting are `configs/demo.py`: each method is a learner config of
`configs/` (any registered learner, `jaxvrp.learners.registry`) with the demo's shared
settings on top; trainable ones are trained, training-free ones only evaluated. The
trained learners are exported to `OUT/<config>/learner` (e.g. `OUT/vrp_sam/learner`); with
the embedded SAM they run on one's own images with `jaxvrp segment`. `--runlocal` runs
every stage at a tiny size (the tests). A rerun with the same OUT resumes finished training.
"""

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np
from absl import logging
from PIL import Image

from jaxvrp import assets, configs, evaluate, metrics, paths, precompute, trainer
from jaxvrp import frozen as frozen_lib
from jaxvrp import train as train_lib
from jaxvrp.data import datasets
from jaxvrp.masks import erode


def _parse_overrides(config, text: str) -> dict:
    """ "a.b=v,c=w" -> {"a.b": v, ...}, each value of the type the config has there."""
    out = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=", 1)
        node = config
        for part in key.split(".")[:-1]:
            node = node[part]
        leaf = key.split(".")[-1]
        if leaf not in node:
            raise KeyError(f"config has no key {key!r}")
        old = node[leaf]
        out[key] = value == "True" if isinstance(old, bool) else type(old)(value)
    return out


def method_configs(demo, out: Path, sam_dir: Path, *, steps: int | None) -> dict:
    """{title: the ml-collections config of that method in the demo} (`configs/demo.py`)."""
    cfgs = {}
    for m in demo.methods:
        c = importlib.import_module(f"configs.{m.config}").get_config(m.arg)
        c.unlock()
        configs.override(c, demo.shared.to_dict(), where=f"configs/{m.config}.py")
        configs.override(c, _parse_overrides(c, m.overrides), where=f"configs/{m.config}.py")
        c.frozen.sam_checkpoint = str(sam_dir)
        c.data.data_dir = str(out / "tfds")
        # the frozen SAM's embeddings (and the backbone's stages, for the learners that read
        # them) of every image, computed once by `jaxvrp.precompute` and shared by all rows
        c.data.feature_cache = str(out / "features")
        c.data.precompute = True
        learner = trainer.learner_of(c)
        lconfig = learner.make_config(**c.model.to_dict())
        c.data.backbone_features = precompute.serves_backbone_stages(learner, lconfig)
        if steps is not None:
            c.steps_per_epoch = steps
        c.lock()
        cfgs[m.title] = c
    trained = [m.workdir for m in demo.methods if trainer.learner_of(cfgs[m.title]).trainable]
    for w in trained:
        if trained.count(w) > 1:
            raise ValueError(f"configs/demo.py: two trained methods share workdir {w!r}")
    return cfgs


class Stage:
    """Logs a stage's start and its duration since the demo began."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0

    def __call__(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.0f} s] {text}", file=sys.stderr, flush=True)


# The colours of `examples.png`, named once for the overlay, the outline and the legend.
CORRECT, FALSE_POSITIVE, MISSED = (40, 210, 40), (235, 30, 30), (40, 110, 255)
OUTLINE = (255, 230, 0)
LEGEND = [
    (CORRECT, "green: predicted and true"),
    (FALSE_POSITIVE, "red: predicted, not true"),
    (MISSED, "blue: true, missed"),
    (OUTLINE, "yellow: reference annotation / target truth"),
]
LEGEND_HEIGHT = 18


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) on a dimmed grey copy of the image: green = predicted and true, red =
    predicted only, blue = missed."""
    grey = image.astype(np.float32).mean(axis=-1, keepdims=True)
    out = np.repeat(0.35 * grey + 40.0, 3, axis=-1)
    pred, truth = pred.astype(bool), truth.astype(bool)
    layers = [(pred & truth, CORRECT), (pred & ~truth, FALSE_POSITIVE), (~pred & truth, MISSED)]
    for where, colour in layers:
        out[where] = 0.3 * out[where] + 0.7 * np.array(colour, np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image in colour with the mask's boundary (2 px inside it) in yellow."""
    m = mask.astype(bool)
    inner = erode(erode(m))
    out = image.copy()
    out[m & ~inner] = OUTLINE
    return out


def _header(names: list[str], tile: int, pad: int) -> np.ndarray:
    """A white strip with each column's name (PIL's default font, wrapped to the tile)."""
    from PIL import ImageDraw

    strip = Image.new("RGB", (len(names) * (tile + 2 * pad), 26), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, name in enumerate(names):
        words, lines = name.split(), [""]
        for w in words:
            if len(lines[-1]) + len(w) + 1 > tile // 6:
                lines.append("")
            lines[-1] = f"{lines[-1]} {w}".strip()
        draw.text((i * (tile + 2 * pad) + 4, 1), "\n".join(lines[:2]), fill=(0, 0, 0))
    return np.asarray(strip)


def _legend(width: int) -> np.ndarray:
    """A white strip, `LEGEND_HEIGHT` px high, with a swatch and the meaning of each colour;
    the entries wrap to a second strip if the grid is narrow."""
    from PIL import ImageDraw

    strips, x = [[]], 4
    for colour, text in LEGEND:
        w = 14 + 6 * len(text) + 12
        if x + w > width and strips[-1]:
            strips.append([])
            x = 4
        strips[-1].append((x, colour, text))
        x += w
    img = Image.new("RGB", (width, LEGEND_HEIGHT * len(strips)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for row, strip in enumerate(strips):
        y = row * LEGEND_HEIGHT
        for x, colour, text in strip:
            draw.rectangle([x, y + 4, x + 10, y + 14], fill=colour)
            draw.text((x + 14, y + 3), text, fill=(0, 0, 0))
    return np.asarray(img)


def to_uint8(normalised: np.ndarray) -> np.ndarray:
    from jaxvrp.image import IMAGENET_MEAN, IMAGENET_STD

    x = normalised * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def example_grid(batch: dict, predictions: dict[str, np.ndarray], num_rows: int) -> np.ndarray:
    """A header, rows of reference | target | each method's prediction from one evaluation
    batch, and a legend of the colours."""
    tile = batch["query_image"].shape[1]
    names = ["reference", "target, truth", *predictions]
    rows = [_header(names, tile, 2)]
    for i in range(min(num_rows, len(batch["query_image"]))):
        ref = to_uint8(batch["support_images"][i, 0])
        target = to_uint8(batch["query_image"][i])
        truth = batch["query_mask"][i] > 0
        tiles = [outline(ref, batch["support_annotations"][i, 0] > 0), outline(target, truth)]
        tiles += [overlay(target, p[i] > 0, truth) for p in predictions.values()]
        pad = ((2, 2), (2, 2), (0, 0))
        rows.append(np.concatenate([np.pad(t, pad, constant_values=255) for t in tiles], 1))
    rows.append(_legend(rows[0].shape[1]))
    return np.concatenate(rows, axis=0)


class FirstBatch:
    """`on_batch` callback of `evaluate` keeping the first batch and its logits."""

    def __init__(self) -> None:
        self.batch, self.logits = None, None

    def __call__(self, batch, logits) -> None:
        if self.batch is None:
            self.batch, self.logits = batch, logits


def run(out: Path, *, runlocal: bool = False, steps: int | None = None, sam_dir=None) -> dict:
    """Every stage of the demo; returns {method: metrics}."""
    from configs import demo as demo_config

    t0 = time.perf_counter()
    stage = Stage(t0)
    out = paths.as_path(out)  # gs://... stays remote
    out.mkdir(parents=True, exist_ok=True)
    sam_dir = paths.as_path(sam_dir) if sam_dir else assets.default_sam_dir()
    demo = demo_config.get_config("runlocal" if runlocal else None)
    cfgs = method_configs(demo, out, sam_dir, steps=steps)
    base = next(iter(cfgs.values()))

    stage("1/5 data: the procedural benchmark (built on first use)")
    for which in (0, 1):
        dataset, split, classes = datasets.plan(base)[which]
        datasets.source(base, dataset, split)
    _, _, novel = datasets.plan(base)[1]
    _, _, known = datasets.plan(base)[0]
    stage(f"    fold 0: train on base classes {known}, evaluate on novel classes {novel}")

    stage(f"2/5 SAM: {sam_dir}")
    meta = json.loads((sam_dir / "metadata.json").read_text())
    quality = meta.get("training", {}).get("quality")
    if quality:
        stage(
            f"    held-out mIoU with an oracle point {100 * quality['point_miou']:.1f}, "
            f"with an oracle box {100 * quality['box_miou']:.1f}"
        )

    trained = {}
    for m in demo.methods:
        c = cfgs[m.title]
        if not trainer.learner_of(c).trainable:
            continue
        stage(f"3/5 train {m.title} ({c.total_steps} steps of {c.batch_size} episodes)")
        workdir = out / m.workdir
        if (workdir / "learner" / "metadata.json").is_file():
            stage(f"    already trained in {workdir}; reusing it")
        else:
            train_lib.train(c, workdir)
        params, _ = evaluate.restore_params(c, workdir / "checkpoints")
        trained[m.title] = params

    stage("4/5 evaluate on the novel classes")
    frozen = {}  # one frozen tree for all: every method has the same SAM and backbone
    results, examples = {}, {}
    for m in demo.methods:
        c = cfgs[m.title]
        learner = trainer.learner_of(c)
        spec = learner.frozen(learner.make_config(**c.model.to_dict()))
        missing = [k for k in spec.keys if k not in frozen]
        if missing:
            frozen.update({k: v for k, v in frozen_lib.load(c, spec).items() if k in missing})
        keep = examples[m.title] = FirstBatch()
        results[m.title] = evaluate.evaluate(
            c,
            trained.get(m.title),
            name=m.title,
            frozen=frozen,
            progress=True,
            on_batch=keep,
        )
        stage(f"    evaluated {m.title}: mIoU {100 * results[m.title]['miou']:.1f}")

    stage("5/5 results")
    table = metrics.markdown_table(results)
    header = (
        f"Procedural benchmark, fold 0, {base.data.shots}-shot, {base.data.annotation} "
        f"references, {base.data.num_eval_episodes} episodes on the novel classes "
        f"{novel}; SAM: {sam_dir.name}; backbone: {base.model.backbone}."
    )
    (out / "results.md").write_text(header + "\n\n" + table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    first = next(iter(examples.values())).batch  # the same episodes for every method
    grid = example_grid(first, {k: v.logits for k, v in examples.items()}, demo.examples)
    with (out / "examples.png").open("wb") as f:  # PIL alone would write gs:// locally
        Image.fromarray(grid).save(f, format="PNG")
    print(header + "\n\n" + table)
    columns = ["reference", "target, truth", *examples]
    print(f"\nexamples: {out / 'examples.png'} (columns: {', '.join(columns)})")
    learners = [out / m.workdir / "learner" for m in demo.methods if m.title in trained]
    if learners:
        print(
            f"segment your own images: jaxvrp segment --learner {learners[0]} "
            f"--reference REF.png --reference-mask MASK.png --targets DIR --out {out / 'segment'}"
        )
    stage("done")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxvrp.demo", description=__doc__)
    parser.add_argument("--out", default="out/demo", help="output directory (local or gs://...)")
    parser.add_argument("--runlocal", action="store_true", help="tiny sizes (tests)")
    parser.add_argument("--steps", type=int, help="training steps per learner")
    parser.add_argument("--sam", help="SAM checkpoint (default: the embedded one)")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    run(args.out, runlocal=args.runlocal, steps=args.steps, sam_dir=args.sam)
    return 0


if __name__ == "__main__":
    sys.exit(main())
