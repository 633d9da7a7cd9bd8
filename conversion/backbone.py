"""Convert a PyTorch backbone checkpoint to a jaxvrp params checkpoint.

    python -m conversion.backbone --arch resnet50_deepstem --checkpoint resnet50_v2.pth --out r50

Sources: torchvision state dicts (`resnet50`, `resnet101`, `vgg16_bn`, `vgg16`), the
deep-stem layout VRP-SAM loads (`resnet50_v2.pth`: conv1, bn1, conv2, bn2, conv3, bn3,
layer1, ...), and the official DINOv2 state dicts (facebookresearch/dinov2 key names).
Classifier heads (`fc.*`, `classifier.*`) and BatchNorm's `num_batches_tracked` are dropped
by name; any other key that does not map onto the model, or a missing key, or a wrong
shape, is an error listing them all, and then nothing is written.
"""

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from conversion.common import (
    ConversionError,
    check_output,
    cli_parser,
    convert_state_dict,
    load_torch_state_dict,
    output_path,
    run_cli,
    save_converted,
)
from conversion.dinov2 import convert_dinov2_state_dict
from jaxvrp import backbones
from jaxvrp.backbones.dinov2 import Dinov2Config
from jaxvrp.backbones.resnet import ResNetConfig
from jaxvrp.backbones.vgg import VGGConfig

_RESNET_CONV = re.compile(r"^(conv[123]|layer\d+\.\d+\.(conv[123]|downsample\.0))\.weight$")
_DROPPED = re.compile(r"(^fc\.|^classifier\.|\.num_batches_tracked$)")


def _vgg_conv_indices(config: VGGConfig) -> set[int]:
    indices, i = set(), 0
    for v in config.cfg:
        if v != "M":
            indices.add(i)
        i += 1 if v == "M" else 3 if config.batch_norm else 2
    return indices


def _resnet_hint(state_dict: dict[str, np.ndarray], config: ResNetConfig) -> str:
    """A sentence naming the other stem when the file has it."""
    deep = "conv2.weight" in state_dict or "conv3.weight" in state_dict
    if deep and not config.deep_stem:
        return " (the file has a deep stem: try --arch resnet50_deepstem or resnet101_deepstem)"
    if not deep and "conv1.weight" in state_dict and config.deep_stem:
        return " (the file has torchvision's 7x7 stem: try --arch resnet50 or resnet101)"
    return ""


def convert_backbone_state_dict(state_dict: dict[str, np.ndarray], config: Any) -> dict:
    """PyTorch state dict -> jaxvrp params for a backbone `config` (strict)."""
    shapes = backbones.param_shapes(config)
    if isinstance(config, ResNetConfig):
        try:
            return convert_state_dict(
                state_dict,
                shapes,
                lambda k: "conv" if _RESNET_CONV.match(k) else "identity",
                ignored=_DROPPED.search,
            )
        except ConversionError as e:
            raise ConversionError(f"{e}{_resnet_hint(state_dict, config)}") from None
    if isinstance(config, VGGConfig):
        convs = _vgg_conv_indices(config)
        conv_key = re.compile(r"^features\.(\d+)\.weight$")

        def transform_of(key: str) -> str:
            m = conv_key.match(key)
            return "conv" if m and int(m.group(1)) in convs else "identity"

        return convert_state_dict(state_dict, shapes, transform_of, ignored=_DROPPED.search)
    if isinstance(config, Dinov2Config):
        return convert_dinov2_state_dict(state_dict, config)
    raise ConversionError(f"no converter for backbone config {type(config).__name__}")


def convert(arch: str, checkpoint: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Convert `checkpoint` as `arch` and write the params checkpoint to `out`."""
    checkpoint, out = Path(checkpoint), output_path(out)
    if arch not in backbones.ARCHS:
        raise ConversionError(f"unknown --arch {arch!r}; known: {sorted(backbones.ARCHS)}")
    check_output(out, overwrite)
    config = backbones.get_config(arch)
    params = convert_backbone_state_dict(load_torch_state_dict(checkpoint), config)
    metadata = {"kind": backbones.KIND, "arch": arch, "config": backbones.config_to_dict(config)}
    return save_converted(out, params, metadata, checkpoint, overwrite)


def main(argv: list[str] | None = None, prog: str = "python -m conversion.backbone") -> int:
    parser = cli_parser(prog, __doc__, "PyTorch state dict (.pth)")
    parser.add_argument("--arch", required=True, choices=sorted(backbones.ARCHS))
    args = parser.parse_args(argv)
    return run_cli(lambda: convert(args.arch, args.checkpoint, args.out, overwrite=args.overwrite))


if __name__ == "__main__":
    sys.exit(main())
