"""One training-free row of the demo, evaluated alone: its metrics and wall time.

    python benchmarks/demo_row.py --title "Matcher (SAM feat., no filters)" [--out DIR] [--runlocal]

The row's config is the demo's (`configs/demo.py` via `jaxvrp.demo.method_configs`): the same
embedded SAM, data, episodes and evaluation as `python -m jaxvrp.demo`, so the numbers stand
in the demo's table (evaluation is deterministic: fixed episodes, per-episode keys). Use it to
measure a row without rerunning the whole demo. Prints JSON: the metrics and
`evaluate_s` (wall seconds of the evaluation, compile included).
"""

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--title", required=True, help="a training-free row of configs/demo.py")
    p.add_argument("--out", default="out/demo", help="the demo's output directory (its data)")
    p.add_argument("--runlocal", action="store_true", help="the demo's tiny sizes")
    args = p.parse_args()

    from configs import demo as demo_config
    from jaxvrp import assets, demo, evaluate, trainer

    cfgs = demo.method_configs(
        demo_config.get_config("runlocal" if args.runlocal else None),
        Path(args.out),
        assets.default_sam_dir(),
        steps=None,
    )
    if args.title not in cfgs:
        raise SystemExit(f"--title {args.title!r} is not a row of configs/demo.py: {list(cfgs)}")
    config = cfgs[args.title]
    if trainer.learner_of(config).trainable:
        raise SystemExit(f"{args.title!r} is trained: run python -m jaxvrp.demo")
    t = time.perf_counter()
    result = evaluate.evaluate(config, name=args.title, progress=True)
    result["evaluate_s"] = time.perf_counter() - t
    print(json.dumps({args.title: result}, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
