"""How high SAMIC's predicted heat maps peak, and its mIoU at other peak thresholds, on the
demo's trained SAMIC: `python benchmarks/samic_heat_level.py --out OUT [--episodes 120]`.

`OUT` is a finished `python -m jaxvrp.demo --out OUT` (its `OUT/samic` checkpoints, its
data and precomputed features). Prints JSON lines: the quantiles of each episode's heat-map
maximum over the first `--episodes` evaluation episodes, the fraction reaching the config's
threshold, the mean heat inside and outside the target mask; then the mIoU of the same
params on those episodes with `model.threshold` 0.5 / 0.3 / 0.1 and with the other
`model.heatmap` mode (the mode trained is read from `OUT/samic/learner`). The diagnosis
behind docs/samic.md "Heat-map level".
"""

import argparse
import json
from pathlib import Path

import jax
import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="a finished demo's --out")
    p.add_argument("--episodes", type=int, default=120)
    args = p.parse_args()

    from configs import demo as demo_config
    from jaxvrp import assets, demo, evaluate, precompute, trainer
    from jaxvrp import frozen as frozen_lib
    from jaxvrp.data import datasets
    from jaxvrp.learners import samic

    out = Path(args.out)
    cfgs = demo.method_configs(demo_config.get_config(), out, assets.default_sam_dir(), steps=None)
    config = cfgs["SAMIC"].copy_and_resolve_references()
    # the heat-map mode the params were trained with (the exported learner's config), which
    # may differ from today's configs/demo.py
    trained = json.loads((out / "samic" / "learner" / "metadata.json").read_text())["config"]
    config.unlock()
    config.model.heatmap = trained["heatmap"]
    params, step = evaluate.restore_params(config, out / "samic" / "checkpoints")
    learner = trainer.learner_of(config)
    lconfig = learner.make_config(**config.model.to_dict())
    frozen = frozen_lib.load(config, learner.frozen(lconfig))
    features = precompute.reader(config, learner, lconfig, 1, frozen=frozen)
    heat_of = jax.jit(lambda p, f, b: samic.heatmap(p, f, b, config=lconfig))

    maxima, inside, outside, seen = [], [], [], 0
    for batch in datasets.eval_episodes(config, 0, 1, config.batch_size):
        if seen >= args.episodes:
            break
        batch = features(batch) if features is not None else batch
        heat = np.asarray(heat_of(params, frozen, trainer.model_inputs(batch, learner, lconfig)))
        mask = batch["query_mask"] > 0
        for h, m, v in zip(heat, mask, batch["valid"], strict=True):
            if v and seen < args.episodes:
                seen += 1
                maxima.append(float(h.max()))
                outside.append(float(h[~m].mean()))
                if m.any():
                    inside.append(float(h[m].mean()))
    print(
        json.dumps(
            {
                "step": int(step),
                "heatmap": lconfig.heatmap,
                "episodes": seen,
                "max_quantiles_10_25_50_75_90": np.quantile(maxima, [0.1, 0.25, 0.5, 0.75, 0.9])
                .round(3)
                .tolist(),
                "fraction_max_over_threshold": float(np.mean(np.array(maxima) > lconfig.threshold)),
                "mean_heat_in_mask": float(np.mean(inside)),
                "mean_heat_outside": float(np.mean(outside)),
            }
        ),
        flush=True,
    )
    other = {"channel_softmax": "spatial_softmax", "spatial_softmax": "channel_softmax"}
    for override in (
        {"threshold": 0.5},
        {"threshold": 0.3},
        {"threshold": 0.1},
        {"heatmap": other[lconfig.heatmap]},
    ):
        c = config.copy_and_resolve_references()
        c.unlock()
        for k, v in override.items():
            c.model[k] = v
        c.data.num_eval_episodes = args.episodes
        r = evaluate.evaluate(c, params, name=str(override), frozen=frozen)
        print(json.dumps({**override, "miou": round(100 * r["miou"], 1)}), flush=True)


if __name__ == "__main__":
    main()
