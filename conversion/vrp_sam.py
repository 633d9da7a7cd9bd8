"""Convert an official VRP-SAM checkpoint (syp2ysy/VRP-SAM `train.py`) to jaxvrp.

    python -m conversion.vrp_sam --checkpoint best_model.pt --out ckpt/vrp_sam_coco_fold0

The official file is the state dict of the `DistributedDataParallel`-wrapped `VRP_encoder`:
keys prefixed `module.` (accepted with or without), holding the learner
(`downsample_query.0`, `merge_1.0`, `transformer_decoder.*`, with `nn.MultiheadAttention`'s
q, k, v packed in `in_proj_weight` / `in_proj_bias`) and the frozen backbone it was trained
with (`layer0` ... `layer4`: VRP-SAM's split of the deep-stem ResNet or of VGG-16-BN's
`features`). Both are converted strictly (every key used once, every parameter produced
once with its shape) into one checkpoint: params `{"learner": ..., "backbone": ...}`,
metadata `kind="vrp_sam"`, the backbone arch, the SAM variant the learner was trained
against (`--sam`, default vit_h as the official `SAM2pred`), the source name and sha256.
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
)
from jaxvrp.learners import vrp
from jaxvrp.sam.config import VARIANTS as SAM_VARIANTS

KIND = vrp.CHECKPOINT_KIND
_LEARNER = ("downsample_query.", "merge_1.", "transformer_decoder.")
_CONV = re.compile(r"^(downsample_query|merge_1)\.0\.weight$")
_LINEAR = re.compile(r"\.(q|k|v|out)_proj\.weight$")
# Where each of VRP-SAM's VGG stages starts in torchvision's `features`.
_VGG_OFFSETS = {"layer0": 0, "layer1": 7, "layer2": 14, "layer3": 24, "layer4": 34}
# VRP-SAM's deep-stem `layer0` Sequential: conv1, bn1, relu, conv2, bn2, relu, conv3, bn3, ...
_DEEP_STEM = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}


def unpack_in_proj(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`*.in_proj_weight` (3C, C) / `*.in_proj_bias` (3C,) -> `*.{q,k,v}_proj.weight|bias`."""
    out = {}
    for key, value in state_dict.items():
        m = re.match(r"^(.*)\.in_proj_(weight|bias)$", key)
        if not m:
            out[key] = value
            continue
        if value.shape[0] % 3:
            raise ConversionError(f"{key} has shape {value.shape}: not three stacked projections")
        for name, part in zip(("q", "k", "v"), np.split(value, 3, axis=0), strict=True):
            out[f"{m.group(1)}.{name}_proj.{m.group(2)}"] = part
    return out


def infer_backbone(backbone_sd: dict[str, np.ndarray]) -> str:
    """The backbone arch of VRP-SAM's `layer0..4` keys."""
    if "layer0.6.weight" in backbone_sd and "layer1.0.conv1.weight" in backbone_sd:
        blocks = len({k.split(".")[1] for k in backbone_sd if k.startswith("layer3.")})
        arch = {6: "resnet50_deepstem", 23: "resnet101_deepstem"}.get(blocks)
        if arch:
            return arch
        raise ConversionError(f"deep-stem ResNet with {blocks} blocks in layer3: not 50 or 101")
    if "layer0.0.weight" in backbone_sd and "layer4.7.running_var" in backbone_sd:
        return "vgg16_bn"
    raise ConversionError(
        "cannot tell the backbone from the layer0..layer4 keys (expected VRP-SAM's deep-stem "
        "ResNet-50/101 or VGG-16-BN); pass --backbone"
    )


def backbone_to_torchvision(backbone_sd: dict[str, np.ndarray], arch: str) -> dict:
    """VRP-SAM's `layer0..4` names -> the names `conversion.backbone` reads."""
    out = {}
    for key, value in backbone_sd.items():
        stage, index, rest = key.split(".", 2)
        if arch.startswith("vgg"):
            out[f"features.{_VGG_OFFSETS[stage] + int(index)}.{rest}"] = value
        elif stage == "layer0":
            if index not in _DEEP_STEM:
                raise ConversionError(f"unexpected key {key!r} in the deep stem")
            out[f"{_DEEP_STEM[index]}.{rest}"] = value
        else:
            out[key] = value
    return out


def convert_vrp_sam_state_dict(
    state_dict: dict[str, np.ndarray], config: vrp.VRPConfig, arch: str
) -> dict:
    """Official VRP-SAM state dict -> {"learner": ..., "backbone": ...} (strict)."""
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    learner = {k: v for k, v in sd.items() if k.startswith(_LEARNER)}
    backbone = {k: v for k, v in sd.items() if re.match(r"^layer[0-4]\.", k)}
    other = sorted(set(sd) - set(learner) - set(backbone))
    if other:
        raise ConversionError(f"keys that are neither learner nor backbone: {other}")
    learner_params = convert_state_dict(
        unpack_in_proj(learner),
        vrp.param_shapes(config),
        lambda k: "conv" if _CONV.match(k) else "linear" if _LINEAR.search(k) else "identity",
    )
    backbone_params = convert_backbone_state_dict(
        backbone_to_torchvision(backbone, arch), config.backbone
    )
    return {"learner": learner_params, "backbone": backbone_params}


def convert(
    checkpoint: str | Path,
    out: str | Path,
    *,
    backbone: str | None = None,
    sam: str = "vit_h",
    num_queries: int | None = None,
    overwrite: bool = False,
) -> Path:
    checkpoint, out = Path(checkpoint), output_path(out)
    check_output(out, overwrite)
    if sam not in SAM_VARIANTS:
        raise ConversionError(f"unknown --sam {sam!r}; known: {sorted(SAM_VARIANTS)}")
    sd = {k.removeprefix("module."): v for k, v in load_torch_state_dict(checkpoint).items()}
    arch = backbone or infer_backbone({k: v for k, v in sd.items() if k.startswith("layer")})
    q_key = "transformer_decoder.supp_q_feat.weight"
    if q_key not in sd:
        raise ConversionError(f"not a VRP-SAM checkpoint: no {q_key!r}")
    queries = sd[q_key].shape[0] if num_queries is None else num_queries
    config = vrp.make_config(arch, sam, num_queries=queries)
    params = convert_vrp_sam_state_dict(sd, config, arch)
    metadata = {"kind": KIND, "config": vrp.config_to_dict(config, backbone=arch, sam=sam)}
    return save_converted(out, params, metadata, checkpoint, overwrite)


def main(argv: list[str] | None = None, prog: str = "python -m conversion.vrp_sam") -> int:
    parser = cli_parser(prog, __doc__, "official VRP-SAM state dict")
    parser.add_argument("--backbone", help="backbone arch (default: from the keys)")
    parser.add_argument("--sam", default="vit_h", help="SAM variant it was trained with")
    args = parser.parse_args(argv)
    return run_cli(
        lambda: convert(
            args.checkpoint,
            args.out,
            backbone=args.backbone,
            sam=args.sam,
            overwrite=args.overwrite,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
