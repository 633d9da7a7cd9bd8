"""The `jaxvrp` console script: `jaxvrp COMMAND [ARGS]`.

    jaxvrp --help
    jaxvrp segment --help        # or: python -m jaxvrp.cli segment --help
    jaxvrp convert --help        # the converters of conversion/

Commands are imported only when run, so `jaxvrp --help` and usage errors return at once.
`main` returns the exit status: 0 on success, 2 on a usage error or a bad input.
"""

import argparse
import importlib
import sys
from collections.abc import Sequence

from jaxvrp import __version__

# command -> (module with `main(argv) -> int`, one-line description)
COMMANDS = {
    "segment": (
        "jaxvrp.segment",
        "segment target images like annotated reference images, with a trained learner",
    ),
    "convert": (
        "jaxvrp.convert",
        "convert a PyTorch checkpoint (SAM, backbone, VRP-SAM, ...) for jaxvrp",
    ),
}


def _parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {c:<{width}}  {d}" for c, (_, d) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="jaxvrp",
        usage="jaxvrp [-h] [--version] COMMAND [ARGS ...]",
        description="Visual-reference segmentation with a frozen Segment Anything model.",
        epilog=f"commands:\n{listing}\n\n'jaxvrp COMMAND --help' describes a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"jaxvrp {__version__}")
    parser.add_argument("command", nargs="?", metavar="COMMAND", help="one of the commands below")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `jaxvrp` with `argv` (default: sys.argv[1:]); the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        if not argv or argv[0].startswith("-"):  # --help, --version, or a usage error
            parser.parse_args(argv)
            parser.error("a COMMAND is required")
        if argv[0] not in COMMANDS:
            parser.error(f"unknown command {argv[0]!r} (choose from {', '.join(COMMANDS)})")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
