"""Official DINOv2 state dicts (`dinov2_vit{s,b,l}14[_reg4]_pretrain.pth`) -> jaxvrp params.

The official checkpoints are flat state dicts of the hub models (`block_chunks=0`), keyed
`cls_token`, `pos_embed`, `mask_token`, `register_tokens` (the `_reg` models only),
`patch_embed.proj.{weight,bias}`, `blocks.N.{norm1,norm2}.{weight,bias}`,
`blocks.N.attn.{qkv,proj}.{weight,bias}`, `blocks.N.ls{1,2}.gamma`,
`blocks.N.mlp.{fc1,fc2}.{weight,bias}` and `norm.{weight,bias}`. Those are the jaxvrp names
under `conversion.common.torch_key`; only the layouts change (linear: W.T, conv:
OIHW -> HWIO). Conversion is strict: every key used once, every parameter produced once.
"""

import re
from typing import Any

import numpy as np

from conversion.common import ConversionError, convert_state_dict
from jaxvrp.backbones import param_shapes
from jaxvrp.backbones.dinov2 import DINOV2_VARIANTS, Dinov2Config

DINOV2_ARCHS = ("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14")

_CONV = re.compile(r"^patch_embed\.proj\.weight$")
_LINEAR = re.compile(r"^blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc[12])\.weight$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def transform_of(key: str) -> str:
    if _CONV.match(key):
        return "conv"
    if _LINEAR.match(key):
        return "linear"
    return "identity"  # biases, LayerNorm weights, layer-scale gammas, tokens, pos_embed


def convert_dinov2_state_dict(
    state_dict: dict[str, np.ndarray], config: Dinov2Config
) -> dict[str, Any]:
    """Official DINOv2 state dict -> jaxvrp `Dinov2` params for `config` (strict).

    Raises `ConversionError` listing every missing key, unexpected key and shape mismatch.
    """
    return convert_state_dict(state_dict, param_shapes(config), transform_of)


def infer_dinov2_variant(state_dict: dict[str, np.ndarray]) -> str:
    """The registered variant whose width, depth, registers and grid match the state dict."""
    key = "patch_embed.proj.weight"
    if key not in state_dict or "pos_embed" not in state_dict:
        raise ConversionError(f"not a DINOv2 state dict: no {key!r} or 'pos_embed'")
    dim = state_dict[key].shape[0]
    depth = len({m.group(1) for k in state_dict if (m := _BLOCK.match(k))})
    registers = state_dict["register_tokens"].shape[1] if "register_tokens" in state_dict else 0
    positions = state_dict["pos_embed"].shape[1] - 1
    found = (dim, depth, registers, positions)
    for name, c in DINOV2_VARIANTS.items():
        if (c.embed_dim, c.depth, c.num_register_tokens, c.grid_size**2) == found:
            return name
    known = {
        n: (c.embed_dim, c.depth, c.num_register_tokens, c.grid_size**2)
        for n, c in DINOV2_VARIANTS.items()
    }
    raise ConversionError(
        f"no DINOv2 variant has width {dim}, depth {depth}, {registers} register tokens and "
        f"{positions} patch positions; known (width, depth, registers, positions): {known}"
    )
