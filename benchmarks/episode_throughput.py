"""Episodes per second of the data pipeline (decode, resize, normalise, annotate, batch).

    python benchmarks/episode_throughput.py --data-dir /tmp/tfds --workers 0 2

Builds the procedural benchmark ("default": 128x128 images) if needed, then times training
batches of the VRP-SAM set-up (512x512, 1 shot, scribble references: the most expensive
annotation) with 0 (in-process) and N worker processes.
"""

import argparse
import json
import time

from jaxvrp.data import episodes, procedural
from jaxvrp.data.builders.procedural import ProceduralFss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="/tmp/tfds")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--annotation", default="scribble")
    args = p.parse_args()
    builder = ProceduralFss(config="default", data_dir=args.data_dir, file_format="array_record")
    builder.download_and_prepare()
    source = builder.as_data_source(split="train")
    index = episodes.ClassIndex.build(source)
    base, _ = procedural.procedural_classes(0)
    cfg = episodes.EpisodeConfig(shots=1, image_size=args.image_size, annotation=args.annotation)
    results = {}
    for workers in args.workers:
        ds = episodes.episode_dataset(
            source,
            index,
            list(base),
            config=cfg,
            train=True,
            batch_size=args.batch_size,
            num_workers=workers,
        )
        it = iter(ds)
        next(it)  # start-up (worker processes, first decode)
        t = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        results[f"workers={workers}"] = args.batches * args.batch_size / (time.perf_counter() - t)
    print(
        json.dumps(
            {
                "episodes_per_s": results,
                "image_size": args.image_size,
                "annotation": args.annotation,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
