"""Convert an official SAM checkpoint (`sam_vit_{b,l,h}_*.pth`) to a jaxvrp params checkpoint.

    python -m conversion.sam --checkpoint sam_vit_b_01ec64.pth --out ckpt/sam_vit_b

Writes `ckpt/sam_vit_b/params/` (orbax) and `ckpt/sam_vit_b/metadata.json` (kind, variant,
config, source file name and sha256). The variant is inferred from the tensor shapes when
`--variant` is not given. Any mismatch between the file and the model is an error that lists
the offending keys, and then nothing is written.
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
from jaxvrp.sam.config import VARIANTS, SamConfig, get_config
from jaxvrp.sam.model import param_shapes

KIND = "sam"

# Layer type of each `.weight` in the official module tree; everything else is copied as is.
_CONV_TRANSPOSE = re.compile(r"^mask_decoder\.output_upscaling\.[03]\.weight$")
_CONV = re.compile(
    r"^(image_encoder\.(patch_embed\.proj|neck\.[02])|prompt_encoder\.mask_downscaling\.[036])"
    r"\.weight$"
)
_LINEAR = re.compile(
    r"^(image_encoder\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.lin[12])"
    r"|mask_decoder\.transformer\..*_proj|mask_decoder\.transformer\..*mlp\.lin[12]"
    r"|mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.\d+)\.weight$"
)


def transform_of(key: str) -> str:
    if _CONV_TRANSPOSE.match(key):
        return "conv_transpose"
    if _CONV.match(key):
        return "conv"
    if _LINEAR.match(key):
        return "linear"
    return "identity"  # biases, LayerNorm weights, embeddings, pos_embed, rel_pos, PE matrix


def infer_variant(state_dict: dict[str, np.ndarray]) -> str:
    """The registered variant whose encoder width and depth match the state dict."""
    key = "image_encoder.patch_embed.proj.weight"
    if key not in state_dict:
        raise ConversionError(f"not a SAM checkpoint: no {key!r}")
    dim = state_dict[key].shape[0]
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
    for name, cfg in VARIANTS.items():
        if (cfg.encoder_embed_dim, cfg.encoder_depth) == (dim, depth):
            return name
    known = {n: (c.encoder_embed_dim, c.encoder_depth) for n, c in VARIANTS.items()}
    raise ConversionError(
        f"no SAM variant has encoder width {dim} and depth {depth}; known (width, depth): {known}"
    )


def convert_sam_state_dict(state_dict: dict[str, np.ndarray], config: SamConfig) -> dict[str, Any]:
    """Official SAM state dict -> jaxvrp SAM params for `config` (strict)."""
    return convert_state_dict(state_dict, param_shapes(config), transform_of)


def convert(
    checkpoint: str | Path,
    out: str | Path,
    variant: str | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Convert `checkpoint` and write the params checkpoint to `out`. Returns `out`."""
    checkpoint = Path(checkpoint)
    out = output_path(out)
    check_output(out, overwrite)
    state_dict = load_torch_state_dict(checkpoint)
    inferred = infer_variant(state_dict)
    if variant is None:
        variant = inferred
    elif variant not in VARIANTS:
        raise ConversionError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
    elif variant != inferred:
        c = VARIANTS[inferred]
        raise ConversionError(
            f"--variant {variant} does not fit {checkpoint.name}: its image encoder has width "
            f"{c.encoder_embed_dim} and depth {c.encoder_depth}, which is {inferred}"
        )
    config = get_config(variant)
    params = convert_sam_state_dict(state_dict, config)
    metadata = {"kind": KIND, "variant": variant, "config": config.to_dict()}
    return save_converted(out, params, metadata, checkpoint, overwrite)


def main(argv: list[str] | None = None, prog: str = "python -m conversion.sam") -> int:
    parser = cli_parser(prog, __doc__, "official SAM .pth state dict")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="default: from shapes")
    args = parser.parse_args(argv)
    return run_cli(
        lambda: convert(args.checkpoint, args.out, args.variant, overwrite=args.overwrite)
    )


if __name__ == "__main__":
    sys.exit(main())
