"""The strict conversion engine shared by every converter.

A converter names, for each target parameter, the source key it comes from and the layout
transform to apply. The engine checks that every source key is used exactly once and every
target leaf is produced exactly once with the expected shape; any difference is collected and
reported together, and nothing is written.
"""

import argparse
import hashlib
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util


class ConversionError(ValueError):
    """The source checkpoint does not match the target model; the message lists why."""


# PyTorch layout -> Flax layout, per layer type (DESIGN.md §2).
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda w: w,
    "linear": lambda w: w.T,  # (out, in) -> (in, out)
    "conv": lambda w: w.transpose(2, 3, 1, 0),  # OIHW -> HWIO
    # (in, out, kh, kw) -> (kh, kw, out, in), used with `transpose_kernel=True`
    "conv_transpose": lambda w: w.transpose(2, 3, 1, 0),
}

_INDEXED = re.compile(r"^(.*)_(\d+)$")
_LEAF_NAMES = {
    "kernel": "weight",
    "scale": "weight",
    "embedding": "weight",
    "mean": "running_mean",  # FrozenBatchNorm statistics
    "var": "running_var",
}


def torch_key(path: Sequence[str]) -> str:
    """Flax param path -> the PyTorch state-dict key of the same module tree.

    `('blocks_3', 'attn', 'qkv', 'kernel')` -> `'blocks.3.attn.qkv.weight'`: list indices
    joined by `_` become `.N`, Flax leaf names become PyTorch's.
    """
    parts = []
    for name in path[:-1]:
        m = _INDEXED.match(name)
        parts.extend([m.group(1), m.group(2)] if m else [name])
    parts.append(_LEAF_NAMES.get(path[-1], path[-1]))
    return ".".join(parts)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A flat `{key: tensor}` state dict from a `.pth` file as float32 numpy arrays.

    Loads with `weights_only=True` (no arbitrary pickled code). Any read failure (missing,
    truncated or non-PyTorch file, not a flat dict of tensors) is a `ConversionError` that
    names the file.
    """
    import torch  # noqa: PLC0415 -- torch is an optional dependency

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise ConversionError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict")
    bad = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise ConversionError(
            f"{path} is not a flat state dict of tensors; non-tensor entries: {bad[:10]}"
            " (a training checkpoint? extract its model state dict first)"
        )
    return {k: v.detach().to(torch.float32).numpy() for k, v in obj.items()}


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    target_shapes: Any,
    transform_of: Callable[[str], str],
    source_key_of: Callable[[tuple[str, ...]], str] = torch_key,
    ignored: Callable[[str], bool] = lambda key: False,
) -> dict[str, Any]:
    """Build the target param tree from `state_dict`, strictly.

    Args:
      state_dict: source key -> array (PyTorch layout).
      target_shapes: nested dict whose leaves have `.shape` (e.g. from `jax.eval_shape`).
      transform_of: source key -> name in `TRANSFORMS`.
      source_key_of: target path -> source key.
      ignored: source keys the model deliberately drops (e.g. a classifier head or BN's
        `num_batches_tracked`); they count as used, and may be absent.

    Raises:
      ConversionError listing every missing key, unused key and shape mismatch.
    """
    flat_target = traverse_util.flatten_dict(target_shapes)
    out: dict[tuple[str, ...], np.ndarray] = {}
    used: set[str] = set()
    missing, mismatched = [], []
    for path, leaf in flat_target.items():
        key = source_key_of(path)
        if key in used:
            raise ConversionError(f"two target parameters map to the same source key {key!r}")
        if key not in state_dict:
            missing.append(f"{key} (for {'/'.join(path)}, shape {tuple(leaf.shape)})")
            continue
        used.add(key)
        value = np.ascontiguousarray(TRANSFORMS[transform_of(key)](np.asarray(state_dict[key])))
        if value.shape != tuple(leaf.shape):
            mismatched.append(
                f"{key}: source {tuple(state_dict[key].shape)} -> {value.shape}, "
                f"expected {tuple(leaf.shape)} for {'/'.join(path)}"
            )
            continue
        out[path] = value.astype(np.float32)
    unexpected = sorted(k for k in set(state_dict) - used if not ignored(k))
    if missing or unexpected or mismatched:
        lines = ["checkpoint does not match the model:"]
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {item}" for item in items)
        raise ConversionError("\n".join(lines))
    return traverse_util.unflatten_dict(out)


def output_path(out: str | os.PathLike):
    """The output directory as an `etils.epath.Path`: local, or remote (`gs://...`), which
    `pathlib` would turn into a local `gs:/...` directory."""
    from etils import epath  # noqa: PLC0415 -- keeps this module light to import

    return epath.Path(out)


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless asked (checked before any work)."""
    if out.exists() and not overwrite:
        raise ConversionError(f"output {out} already exists (use --overwrite to replace it)")


def save_converted(
    out: Path, params: Any, metadata: dict[str, Any], checkpoint: Path, overwrite: bool
) -> Path:
    """Write a params checkpoint whose metadata also names the source file and its sha256."""
    from jaxvrp import params_io  # noqa: PLC0415 -- keeps this module light to import

    source = {"source_file": checkpoint.name, "source_sha256": sha256_file(checkpoint)}
    return params_io.save_params(out, params, {**metadata, **source}, overwrite=overwrite)


def cli_parser(prog: str, doc: str, checkpoint_help: str) -> argparse.ArgumentParser:
    """The arguments every converter takes: --checkpoint, --out, --overwrite."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help=checkpoint_help)
    parser.add_argument("--out", required=True, help="output directory (must not exist)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser


def run_cli(convert: Callable[[], Path]) -> int:
    """Run a conversion: 0 and the output path, or 2 and the error on stderr."""
    try:
        out = convert()
    except (ConversionError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
