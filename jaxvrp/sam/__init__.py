"""Segment Anything in Flax, numerically equal to the official PyTorch model."""

from jaxvrp.sam.config import VARIANTS, SamConfig, get_config
from jaxvrp.sam.model import (
    Sam,
    decode_masks,
    encode_image,
    encode_prompts,
    init,
    load,
    param_shapes,
    predict_masks,
)
from jaxvrp.sam.predictor import Predictor
from jaxvrp.sam.transforms import ResizeLongestSide, postprocess_masks, preprocess

__all__ = [
    "VARIANTS",
    "Predictor",
    "ResizeLongestSide",
    "Sam",
    "SamConfig",
    "decode_masks",
    "encode_image",
    "encode_prompts",
    "get_config",
    "init",
    "load",
    "param_shapes",
    "postprocess_masks",
    "predict_masks",
    "preprocess",
]
