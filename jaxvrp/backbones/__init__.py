"""Frozen semantic backbones (ResNet, VGG-16-BN, DINOv2, SAM's encoder) as NHWC features.

Architectures (`ARCHS`): resnet50, resnet101 (torchvision), resnet50_deepstem,
resnet101_deepstem (VRP-SAM / PSPNet), vgg16_bn, dinov2_vit{s,b,l}14 (and `_reg` with
registers), sam_<SAM variant> (the frozen SAM's own image encoder, `sam_vit.py`; its params
are the SAM checkpoint's), plus small `*_test*` variants for tests.

    config = get_config("resnet50_deepstem")
    params = init(jax.random.key(0), config)       # or load(dir) after conversion
    feats = apply(params, images, config=config)   # {"layer0": ..., "layer4": ..., ...}

Every backbone takes ImageNet-normalised images (B, H, W, 3) (`jaxvrp.image.normalize` with
`IMAGENET_MEAN` / `IMAGENET_STD` on [0, 1] pixels) and returns a dict with VRP-SAM's split
`layer0` ... `layer4`; ResNets also return every bottleneck of layer2-4 before its final
ReLU (`layer{L}_{i}`), the features of HSNet/SAMIC.
"""

import dataclasses
from functools import partial
from typing import Any

import flax.linen as nn
import jax

from jaxvrp import params_io
from jaxvrp.backbones.dinov2 import DINOV2_VARIANTS, Dinov2, Dinov2Config
from jaxvrp.backbones.resnet import RESNET_ARCHS, ResNet, ResNetConfig
from jaxvrp.backbones.sam_vit import SAM_VIT_ARCHS, SamViT, SamViTConfig
from jaxvrp.backbones.vgg import VGG, VGG_ARCHS, VGGConfig

KIND = "backbone"
ARCHS: dict[str, Any] = {**RESNET_ARCHS, **VGG_ARCHS, **DINOV2_VARIANTS, **SAM_VIT_ARCHS}
_MODULES: dict[type, type[nn.Module]] = {
    ResNetConfig: ResNet,
    VGGConfig: VGG,
    Dinov2Config: Dinov2,
    SamViTConfig: SamViT,
}


def get_config(arch: str, **overrides: Any):
    """The config of a named architecture, with optional field overrides."""
    if arch not in ARCHS:
        raise ValueError(f"unknown backbone {arch!r}; known: {sorted(ARCHS)}")
    return dataclasses.replace(ARCHS[arch], **overrides)


def build(config) -> nn.Module:
    return _MODULES[type(config)](config)


@partial(jax.jit, static_argnames=("config",))
def init(rng: jax.Array, config) -> dict:
    """Fresh parameters (float32) for `config` (real weights come from `conversion.backbone`)."""
    # Any input creates every parameter; a ViT's tables take their shapes from the config.
    size = config.patch_size if isinstance(config, Dinov2Config) else 32
    if isinstance(config, SamViTConfig):  # position tables fixed to SAM's input size
        size = config.image_size
    return build(config).init(rng, jax.numpy.zeros((1, size, size, 3)))["params"]


def param_shapes(config) -> dict:
    return jax.eval_shape(partial(init, config=config), jax.random.key(0))


def apply(
    params: dict,
    images: jax.Array,
    *,
    config,
    start: str = "layer0",
    stop: str = "layer4",
    prefix: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Normalised images (B, H, W, 3) -> dict of NHWC feature maps, float32.

    `start` / `stop` run only the stages from `start` to `stop` (of layer0 ... layer4); with
    `start` after layer0 the input is the previous stage's output (VRP-SAM runs the reference
    image's layer4 on its masked layer3). A ViT also needs that stage's class/register
    tokens as `prefix` (its "<layer>_prefix" output).
    """
    extra = {} if prefix is None else {"prefix": prefix}
    out = build(config).apply({"params": params}, images, start, stop, **extra)
    return {k: v.astype(jax.numpy.float32) for k, v in out.items()}


def config_to_dict(config) -> dict[str, Any]:
    return {"family": type(config).__name__, **dataclasses.asdict(config)}


def config_from_dict(d: dict[str, Any]):
    d = dict(d)
    family = d.pop("family", None)
    types = {t.__name__: t for t in _MODULES}
    if family not in types:
        raise ValueError(f"unknown backbone family {family!r}; known: {sorted(types)}")
    t = types[family]
    return t(**{k: _tuples(v) for k, v in d.items()})


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def load(directory: str) -> tuple[dict, Any]:
    """(params, config) from a backbone checkpoint written by `conversion.backbone`."""
    params, metadata = params_io.load_params(directory, expected_kind=KIND)
    return params, config_from_dict(metadata["config"])
