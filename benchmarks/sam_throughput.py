"""SAM throughput, jaxvrp vs the official PyTorch model, in the same run on the same device.

    python benchmarks/sam_throughput.py --variant vit_b --batch 1 --iters 3

Measures image-encoder images/s and decoder prompt sets/s (prompt encoder + mask decoder,
one point and one box per set, all on one image embedding) for both implementations with the
same random weights, and prints the ratio jaxvrp / official. On a GPU, `--dtype bfloat16`
runs jaxvrp in bf16 and the official model under bf16 autocast, and utilisation is reported
against the peak given by `--peak-tflops` using the encoder FLOP counts of DESIGN.md §4.
"""

import argparse
import json
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from conversion.official import build_official_sam, randomize_
from conversion.sam import convert_sam_state_dict
from jaxvrp.sam import encode_image, get_config, predict_masks

# Encoder cost per 1024x1024 image (DESIGN.md §4).
ENCODER_TFLOP = {"vit_b": 0.97, "vit_l": 2.99, "vit_h": 5.96}


def timeit(fn, warmup: int, iters: int) -> float:
    """Median seconds per call after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="vit_b")
    p.add_argument("--batch", type=int, default=1, help="images per encoder call")
    p.add_argument("--prompts", type=int, default=64, help="prompt sets per decoder call")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for utilisation")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    import torch

    torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    config = get_config(args.variant, dtype=args.dtype)
    ref = randomize_(build_official_sam(config), seed=0)
    params = convert_sam_state_dict({k: v.numpy() for k, v in ref.state_dict().items()}, config)
    params = jax.device_put(params)
    ref = ref.to(torch_device)

    rs = np.random.RandomState(0)
    s, b, n = config.image_size, args.batch, args.prompts
    images = rs.randn(b, s, s, 3).astype(np.float32)
    points = (rs.rand(n, 1, 2) * s).astype(np.float32)
    labels = np.ones((n, 1), np.int32)
    boxes = np.sort(rs.rand(n, 2, 2) * s, axis=1).reshape(n, 4).astype(np.float32)

    # jaxvrp
    enc = jax.jit(partial(encode_image, config=config))
    x = jax.device_put(images)
    jax_enc = timeit(lambda: enc(params, x).block_until_ready(), args.warmup, args.iters)
    emb = enc(params, x)[:1]
    dec = jax.jit(partial(predict_masks, config=config, multimask_output=True))
    pts, lab, bxs = (jax.device_put(a) for a in (points, labels, boxes))
    jax_dec = timeit(
        lambda: dec(params, emb, points=pts, point_labels=lab, boxes=bxs)[0].block_until_ready(),
        args.warmup,
        args.iters,
    )

    # official PyTorch
    autocast = torch.autocast(torch_device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    sync = torch.cuda.synchronize if torch_device == "cuda" else (lambda: None)
    tx = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch_device)

    def torch_encode():
        with torch.no_grad(), autocast:
            out = ref.image_encoder(tx)
        sync()
        return out

    torch_enc = timeit(torch_encode, args.warmup, args.iters)
    temb = torch_encode()[:1]
    tp, tl, tb = (torch.from_numpy(a).to(torch_device) for a in (points, labels, boxes))

    def torch_decode():
        with torch.no_grad(), autocast:
            sparse, dense = ref.prompt_encoder((tp, tl), tb, None)
            out = ref.mask_decoder(temb, ref.prompt_encoder.get_dense_pe(), sparse, dense, True)
        sync()
        return out

    torch_dec = timeit(torch_decode, args.warmup, args.iters)

    result = {
        "variant": args.variant,
        "dtype": args.dtype,
        "jax_device": str(jax.devices()[0].device_kind),
        "torch_device": torch_device,
        "torch_threads": torch.get_num_threads(),
        "batch": b,
        "prompts": n,
        "encoder_images_per_s": {"jaxvrp": b / jax_enc, "official": b / torch_enc},
        "decoder_prompts_per_s": {"jaxvrp": n / jax_dec, "official": n / torch_dec},
        "encoder_ratio_jaxvrp_over_official": torch_enc / jax_enc,
        "decoder_ratio_jaxvrp_over_official": torch_dec / jax_dec,
    }
    if args.peak_tflops and args.variant in ENCODER_TFLOP:
        tflop = ENCODER_TFLOP[args.variant]
        result["encoder_utilisation"] = {
            k: v * tflop / args.peak_tflops for k, v in result["encoder_images_per_s"].items()
        }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    jnp.zeros(())  # initialise the JAX backend before torch spawns its threads
    main()
