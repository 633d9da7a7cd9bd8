"""`jaxvrp convert KIND --checkpoint FILE --out DIR`: the PyTorch -> jaxvrp converters of
`conversion/` for installed users (the same as `python -m conversion.KIND`).

    jaxvrp convert sam --checkpoint sam_vit_h_4b8939.pth --out ckpt/sam_vit_h
    jaxvrp convert backbone --arch resnet50_deepstem --checkpoint r50.pth --out ckpt/r50
    jaxvrp convert vrp_sam --checkpoint best_model.pt --out ckpt/vrp_sam
    jaxvrp convert hsnet --checkpoint best_model.pt --out ckpt/hsnet
    jaxvrp convert KIND --help

Every converter is strict: a key that does not map exits 2, lists every problem and writes
nothing. They need torch (`pip install "jaxvrp[convert]"`).
"""

import argparse
import importlib
import sys
from collections.abc import Sequence

PROG = "jaxvrp convert"
# kind -> (module with `main(argv, prog) -> int`, what it converts)
CONVERTERS = {
    "sam": ("conversion.sam", "official SAM checkpoints (vit_b / vit_l / vit_h)"),
    "backbone": ("conversion.backbone", "ResNet / VGG / DINOv2 backbones"),
    "vrp_sam": ("conversion.vrp_sam", "official VRP-SAM learner checkpoints (with backbone)"),
    "hsnet": ("conversion.hsnet", "official HSNet learner checkpoints (with backbone)"),
}


def _parser() -> argparse.ArgumentParser:
    width = max(map(len, CONVERTERS))
    listing = "\n".join(f"  {k:<{width}}  {d}" for k, (_, d) in CONVERTERS.items())
    return argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [-h] KIND --checkpoint FILE --out DIR [...]",
        description="Convert a PyTorch checkpoint into a jaxvrp checkpoint.",
        epilog=f"kinds:\n{listing}\n\n'{PROG} KIND --help' describes a converter.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`jaxvrp convert` with `argv` (default: sys.argv[1:]); the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        if not argv or argv[0].startswith("-"):
            parser.parse_args(argv)
            parser.error("a KIND is required")
        if argv[0] not in CONVERTERS:
            parser.error(f"unknown kind {argv[0]!r} (choose from {', '.join(CONVERTERS)})")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        module = importlib.import_module(CONVERTERS[argv[0]][0])
    except ImportError as e:
        print(f"{PROG}: error: {e}; install the converters' needs: pip install 'jaxvrp[convert]'")
        return 2
    try:
        return module.main(argv[1:], prog=f"{PROG} {argv[0]}")
    except SystemExit as e:  # the converter's own usage errors and --help
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
