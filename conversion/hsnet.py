"""Convert an official HSNet checkpoint (juhongm999/hsnet `train.py`) to jaxvrp.

    python -m conversion.hsnet --checkpoint best_model.pt --out ckpt/hsnet_pascal_fold0

The official file is the state dict of the `nn.DataParallel`-wrapped
`HypercorrSqueezeNetwork` (`Logger.save_model_miou`): keys prefixed `module.` (accepted
with or without), holding the learner (`hpn_learner.encoder_layer{4,3,2}`,
`encoder_layer4to3`, `encoder_layer3to2`, `decoder1`, `decoder2`) and the frozen torchvision
backbone it was trained with (`backbone.*`: resnet50, resnet101 or vgg16, found from the
keys unless `--backbone` names it; its classifier `fc.*` / `classifier.*` and BN's
`num_batches_tracked` are dropped). Both are converted strictly (every key used once, every
parameter produced once with its shape; otherwise every problem is listed, the exit status
is 2 and nothing is written) into one learner checkpoint: params `{"learner": ...,
"backbone": ...}`, metadata `kind="hsnet"`, `config` (the `hsnet.make_config` arguments),
`image_size` 400 (the official training size), `module`, the source name and sha256.
"""

import re
import sys
from pathlib import Path

import numpy as np

from conversion.backbone import convert_backbone_state_dict
from conversion.common import (
    ConversionError,
    check_output,
    cli_parser,
    convert_state_dict,
    load_torch_state_dict,
    output_path,
    run_cli,
    save_converted,
    torch_key,
)
from jaxvrp import backbones
from jaxvrp.backbones.resnet import ResNetConfig
from jaxvrp.backbones.vgg import VGGConfig
from jaxvrp.learners import hsnet

KIND = hsnet.NAME
# Conv2d weights (OIHW -> HWIO): the two branches of each center-pivot conv and the decoder.
_CONV = re.compile(r"(\.conv[12]|\.decoder[12]\.\d+)\.weight$")
_BLOCK_CONV = re.compile(r"^hpn_learner\.encoder_layer4\.(\d+)\.conv1\.weight$")
_LEARNER, _BACKBONE = "hpn_learner.", "backbone."


def infer_backbone(backbone_sd: dict[str, np.ndarray]) -> str:
    """The torchvision arch (`jaxvrp.backbones` name) of HSNet's `backbone.*` keys."""
    if "features.0.weight" in backbone_sd:  # VGG: conv widths in `features` order
        widths = [
            v.shape[0]
            for k, v in sorted(
                ((k, v) for k, v in backbone_sd.items() if re.match(r"^features\.\d+\.weight$", k)),
                key=lambda kv: int(kv[0].split(".")[1]),
            )
        ]
        for name, c in backbones.ARCHS.items():
            if isinstance(c, VGGConfig) and not c.batch_norm:
                if [v for v in c.cfg if v != "M"] == widths:
                    return name
        raise ConversionError(f"VGG with conv widths {widths}: not torchvision's vgg16")
    if "conv1.weight" in backbone_sd and "layer1.0.conv1.weight" in backbone_sd:
        blocks = tuple(
            len({k.split(".")[1] for k in backbone_sd if k.startswith(f"layer{i}.")})
            for i in (1, 2, 3, 4)
        )
        width = backbone_sd["conv1.weight"].shape[0]
        for name, c in backbones.ARCHS.items():
            if isinstance(c, ResNetConfig) and not c.deep_stem:
                if c.layers == blocks and c.width == width:
                    return name
        raise ConversionError(f"ResNet with blocks {blocks} and width {width}: not 50 or 101")
    raise ConversionError(
        "cannot tell the backbone from the backbone.* keys (expected torchvision's resnet50, "
        "resnet101 or vgg16); pass --backbone"
    )


def infer_num_4d_layers(learner_sd: dict[str, np.ndarray]) -> int:
    """Center-pivot layers per block (3 in the official code), from encoder_layer4's keys."""
    found = [int(m.group(1)) for k in learner_sd if (m := _BLOCK_CONV.match(k))]
    return max(found) // 3 + 1 if found else 3


def split_state_dict(state_dict: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """(the `hpn_learner.*` keys, the `backbone.*` keys without their prefix), after dropping
    DataParallel's `module.`; any other key is an error."""
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    learner = {k: v for k, v in sd.items() if k.startswith(_LEARNER)}
    backbone = {k.removeprefix(_BACKBONE): v for k, v in sd.items() if k.startswith(_BACKBONE)}
    other = sorted(k for k in sd if not k.startswith((_LEARNER, _BACKBONE)))
    if other:
        raise ConversionError(
            f"keys that are neither hpn_learner.* nor backbone.* ({len(other)}): {other}"
        )
    return learner, backbone


def convert_learner_state_dict(learner_sd: dict[str, np.ndarray], config: hsnet.HSNetConfig):
    """The `hpn_learner.*` keys (prefix included) -> the learner's params (strict)."""
    return convert_state_dict(
        learner_sd,
        hsnet.param_shapes(config),
        lambda k: "conv" if _CONV.search(k) else "identity",
        source_key_of=lambda path: _LEARNER + torch_key(path),
    )


def convert_hsnet_state_dict(state_dict: dict[str, np.ndarray], config: hsnet.HSNetConfig) -> dict:
    """Official HSNet state dict -> {"learner": ..., "backbone": ...} (strict; the problems
    of both parts are reported together)."""
    learner_sd, backbone_sd = split_state_dict(state_dict)
    errors, out = [], {}
    try:
        out["learner"] = convert_learner_state_dict(learner_sd, config)
    except ConversionError as e:
        errors.append(f"learner (hpn_learner.*): {e}")
    try:
        out["backbone"] = convert_backbone_state_dict(backbone_sd, config.backbone)
    except ConversionError as e:
        errors.append(f"backbone (keys below without their 'backbone.' prefix): {e}")
    if errors:
        raise ConversionError("\n".join(errors))
    return out


def convert(
    checkpoint: str | Path,
    out: str | Path,
    *,
    backbone: str | None = None,
    overwrite: bool = False,
) -> Path:
    checkpoint, out = Path(checkpoint), output_path(out)
    check_output(out, overwrite)
    sd = load_torch_state_dict(checkpoint)
    if not any(k.removeprefix("module.").startswith(_LEARNER) for k in sd):
        raise ConversionError(f"not an HSNet checkpoint: no hpn_learner.* keys in {checkpoint}")
    learner_sd, backbone_sd = split_state_dict(sd)
    if backbone is not None and backbone not in backbones.ARCHS:
        raise ConversionError(f"unknown --backbone {backbone!r}; known: {sorted(backbones.ARCHS)}")
    arch = backbone or infer_backbone(backbone_sd)
    try:
        config = hsnet.make_config(arch, num_4d_layers=infer_num_4d_layers(learner_sd))
    except ValueError as e:
        raise ConversionError(f"backbone {arch!r}: {e}") from e
    params = convert_hsnet_state_dict(sd, config)
    metadata = {
        "kind": KIND,
        "config": hsnet.config_to_dict(config, backbone=arch),
        "image_size": hsnet.IMAGE_SIZE,
        "module": hsnet.__name__,
    }
    return save_converted(out, params, metadata, checkpoint, overwrite)


def main(argv: list[str] | None = None, prog: str = "python -m conversion.hsnet") -> int:
    parser = cli_parser(prog, __doc__, "official HSNet state dict")
    parser.add_argument("--backbone", help="backbone arch (default: from the keys)")
    args = parser.parse_args(argv)
    return run_cli(
        lambda: convert(args.checkpoint, args.out, backbone=args.backbone, overwrite=args.overwrite)
    )


if __name__ == "__main__":
    sys.exit(main())
