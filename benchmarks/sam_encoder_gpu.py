"""SAM image-encoder throughput on one GPU: jaxvrp's attention options vs PyTorch recipes.

    PYTHONPATH=. python benchmarks/sam_encoder_gpu.py                 # ViT-B, ViT-H; batch 8, 32
    PYTHONPATH=. python benchmarks/sam_encoder_gpu.py --smoke         # tiny_128 on CPU, < 2 min

Needs only jax, flax, numpy, torch and `segment-anything` (from a source checkout). Every
row encodes random 1024x1024 images in bf16 with the same random weights and reports
images/s (median of `--iters` timed calls after `--warmup`, compilation excluded):

- `jaxvrp xla`: `jaxvrp.sam.encode_image`, bf16 compute (float32 params), the official
  attention formulation in XLA ops.
- `jaxvrp dot_product`: the same with `attention="dot_product"`: relative positions folded
  into q/k, `jax.nn.dot_product_attention` (cuDNN flash attention where it applies).
- `torch autocast`: the official `segment_anything` encoder under `torch.autocast(bf16)`.
- `torch fast`: a segment-anything-fast-style recipe: bf16 weights, each `Attention` computed
  by `F.scaled_dot_product_attention` with the relative positions as `attn_mask`, the encoder
  under `torch.compile` (inductor, max-autotune; `--smoke` uses the aot_eager backend).

Utilisation is against `--peak-tflops` (default 989, H100/H200 SXM bf16 dense) with the
encoder FLOP counts of DESIGN.md §4.
"""

import argparse
import copy
import os
import sys
from functools import partial

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with torch

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.sam_throughput import ENCODER_TFLOP, timeit  # noqa: E402
from conversion.official import build_official_sam, import_segment_anything, randomize_  # noqa: E402
from conversion.sam import convert_sam_state_dict  # noqa: E402
from jaxvrp.sam import get_config  # noqa: E402
from jaxvrp.sam.model import encode_image  # noqa: E402


def sdpa_attention_forward(self, x):
    """The official `Attention.forward` (segment_anything/modeling/image_encoder.py) with
    the softmax(q k^T * scale + rel) v product done by `F.scaled_dot_product_attention`:
    x (B, H, W, C) -> (B, H, W, C)."""
    import torch
    import torch.nn.functional as F

    ie = import_segment_anything().modeling.image_encoder
    b, h, w, _ = x.shape
    n = self.num_heads
    qkv = self.qkv(x).reshape(b, h * w, 3, n, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, heads, N, d)
    mask = None
    if self.use_rel_pos:
        rh = ie.get_rel_pos(h, h, self.rel_pos_h)  # (H, H, d)
        rw = ie.get_rel_pos(w, w, self.rel_pos_w)
        r_q = q.reshape(b, n, h, w, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)
        mask = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, n, h * w, h * w)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
    out = out.view(b, n, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return self.proj(out)


def use_sdpa(encoder):
    """Every official `Attention` of the encoder computed by `sdpa_attention_forward`."""
    ie = import_segment_anything().modeling.image_encoder
    for m in encoder.modules():
        if isinstance(m, ie.Attention):
            m.forward = partial(sdpa_attention_forward, m)
    return encoder


def fast_encoder(encoder, backend: str, mode: str | None):
    """bf16 weights, SDPA attention, `torch.compile` (the segment-anything-fast recipe)."""
    import torch

    encoder = use_sdpa(encoder.to(torch.bfloat16))
    return torch.compile(encoder, backend=backend, mode=mode)


def sdpa_parity(encoder, size: int, device: str) -> float:
    """Relative L2 of the SDPA-patched encoder vs the official one, float32, one image."""
    import torch

    x = torch.randn(1, 3, size, size, device=device, generator=None)
    with torch.no_grad():
        want = encoder.float()(x)
        got = use_sdpa(copy.deepcopy(encoder))(x)
    return float((got - want).norm() / want.norm())


def bench_variant(variant: str, args, dev: str, row) -> None:
    """Every row of one variant: `row(variant, batch, name, fn)` times `fn`."""
    import torch

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    config = get_config(variant, dtype="bfloat16")
    official = randomize_(build_official_sam(config), seed=0)
    sd = {k: v.numpy() for k, v in official.state_dict().items()}
    params = jax.device_put(convert_sam_state_dict(sd, config))
    encoder = official.image_encoder.to(dev).eval()
    s = config.image_size
    torch.manual_seed(0)
    err = sdpa_parity(encoder, s, dev)
    print(f"{variant}: SDPA recipe vs official, float32: rel L2 {err:.1e}", file=sys.stderr)
    for batch in args.batches:
        images = np.random.RandomState(0).randn(batch, s, s, 3).astype(np.float32)
        x = jax.device_put(images)
        for attention in ("xla", "dot_product"):
            cfg = get_config(variant, dtype="bfloat16", attention=attention)
            enc = jax.jit(partial(encode_image, config=cfg))
            row(variant, batch, f"jaxvrp {attention}", partial(_run_jax, enc, params, x))
        tx = torch.from_numpy(images).permute(0, 3, 1, 2).to(dev)
        row(variant, batch, "torch autocast", partial(_run_torch, encoder, tx, sync, dev))
    # the fast recipe converts the weights to bf16: last for this variant
    fast = fast_encoder(encoder, args.compile_backend, args.compile_mode)
    for batch in args.batches:
        tx = torch.randn(batch, 3, s, s, device=dev, dtype=torch.bfloat16)
        name = f"torch fast ({args.compile_backend} {args.compile_mode or ''})".replace(" )", ")")
        row(variant, batch, name, partial(_run_torch, fast, tx, sync, None))


def _run_jax(fn, params, x):
    return fn(params, x).block_until_ready()


def _run_torch(module, x, sync, autocast_device):
    import torch

    with (
        torch.no_grad(),
        torch.autocast(
            autocast_device or "cpu", dtype=torch.bfloat16, enabled=autocast_device is not None
        ),
    ):
        out = module(x)
    sync()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", default=["vit_b", "vit_h"])
    p.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    p.add_argument("--compile-mode", default="max-autotune", help="torch.compile mode")
    p.add_argument("--smoke", action="store_true", help="tiny_128, batch 1, 1 iteration")
    args = p.parse_args()
    if args.smoke:
        args.variants, args.batches, args.warmup, args.iters = ["tiny_128"], [1], 1, 1
        # dynamo + AOT autograd without inductor's C++ code generation, which alone takes
        # minutes on a small CPU (and is not the code a GPU runs anyway)
        args.compile_backend, args.compile_mode = "aot_eager", None

    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__} "
        f"on {torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'}"
    )
    rows = []

    def row(variant, batch, name, fn):
        try:
            sec = timeit(fn, args.warmup, args.iters)
            ips = batch / sec
            tflop = ENCODER_TFLOP.get(variant)
            util = f"{100 * ips * tflop / args.peak_tflops:.1f} %" if tflop else "-"
            rows.append((variant, batch, name, f"{ips:.2f}", util))
        except Exception as e:  # one failing recipe must not hide the others
            rows.append((variant, batch, name, f"failed: {type(e).__name__}: {e}"[:120], "-"))
        print(" | ".join(str(c) for c in rows[-1]), flush=True, file=sys.stderr)

    for variant in args.variants:
        bench_variant(variant, args, dev, row)
        if dev == "cuda":
            torch.cuda.empty_cache()

    print("| variant | batch | implementation | images/s | utilisation |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


if __name__ == "__main__":
    jnp.zeros(())  # initialise the JAX backend before torch spawns its threads
    main()
