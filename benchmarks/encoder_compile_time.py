"""Compile time of SAM's image encoder, unrolled blocks vs `scan_blocks=True`.

    python benchmarks/encoder_compile_time.py --variant vit_b --batch 1
    python benchmarks/encoder_compile_time.py --variant vit_b --depth 8   # ViT-B width, 8 blocks

Lowers and compiles `jaxvrp.sam.encode_image` for abstract params and images (nothing is
allocated or run) and prints the seconds spent tracing + lowering and compiling, for each
combination of `--attention` and unrolled / scanned blocks.
"""

import argparse
import dataclasses
import time
from functools import partial

import jax
import jax.numpy as jnp

from jaxvrp.sam import config as sam_config
from jaxvrp.sam.model import encode_image, param_shapes


def compile_seconds(config: sam_config.SamConfig, batch: int) -> tuple[float, float]:
    """(trace + lower seconds, compile seconds) of the jitted encoder."""
    params = param_shapes(config)
    s = config.image_size
    images = jax.ShapeDtypeStruct((batch, s, s, 3), jnp.float32)
    fn = jax.jit(partial(encode_image, config=config))
    t0 = time.perf_counter()
    lowered = fn.lower(params, images)
    t1 = time.perf_counter()
    lowered.compile()
    return t1 - t0, time.perf_counter() - t1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="vit_b")
    p.add_argument("--depth", type=int, help="override the depth (global every depth/4)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--attention", nargs="+", default=["xla"])
    p.add_argument("--scan", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--repeat", type=int, default=2, help="rounds; the table shows the minimum")
    args = p.parse_args()
    config = sam_config.get_config(args.variant, dtype=args.dtype)
    name = args.variant
    if args.depth:
        d = args.depth
        period = d // 4
        config = dataclasses.replace(
            config,
            encoder_depth=d,
            encoder_global_attn_indexes=tuple(range(period - 1, d, period)),
        )
        name = f"{args.variant} depth {d}"
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, {name}, batch {args.batch}")
    print("| attention | scan_blocks | trace + lower (s) | compile (s) |")
    print("| --- | --- | --- | --- |")
    cases = [(a, s) for a in args.attention for s in args.scan]
    best: dict = {}
    # Rounds over all cases, so one-time start-up costs do not land on the first case.
    for _ in range(args.repeat):
        for attention, scan in cases:
            cfg = dataclasses.replace(config, attention=attention, scan_blocks=scan == "on")
            times = compile_seconds(cfg, args.batch)
            prev = best.get((attention, scan), times)
            best[(attention, scan)] = tuple(min(a, b) for a, b in zip(prev, times, strict=True))
    for (attention, scan), (lower, comp) in best.items():
        print(f"| {attention} | {scan} | {lower:.1f} | {comp:.1f} |", flush=True)


if __name__ == "__main__":
    main()
