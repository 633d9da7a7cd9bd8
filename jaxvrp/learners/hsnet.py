"""HSNet (Min et al., "Hypercorrelation Squeeze for Few-Shot Segmentation", ICCV 2021) as a
learner over a frozen backbone, ported from the official code (`juhongm999/hsnet`:
`model/hsnet.py`, `model/learner.py`, `model/base/{conv4d,correlation,feature}.py`).

    config = hsnet.make_config(backbone="resnet50")       # the paper's R50 set-up
    params = hsnet.init(jax.random.key(0), config)        # 2,573,794 parameters
    two = hsnet.logits(params, frozen, batch, config=config)   # (B, H, W, 2)
    fg = hsnet.apply(params, frozen, batch, config=config)     # (B, H, W)

HSNet needs no SAM: `frozen = {"backbone": ...}` (`FrozenSpec(sam=None, backbone=...)`),
except with the SAM-encoder backbone below, whose weights are the SAM checkpoint's.

Pipeline (shapes for one shot; NHWC, channels last throughout):

1. Frozen backbone features (`jaxvrp.backbones`), behind `stop_gradient`: for a ResNet every
   bottleneck of layer2-4 after its residual sum and before its final ReLU (`layer{L}_{i}`;
   13 maps for ResNet-50, 30 for ResNet-101); for VGG-16 (no BN) conv4_1-3 and conv5_1-3
   before their ReLU and pool5 (`feature.py`: `features[17, 19, 21, 24, 26, 28, 30]`).
   Our adaptation, not a paper setting (the CPU demo's, where SAM's own encoder is the only
   backbone on the machine): with `backbone="sam_<variant>"` the four stage outputs of the
   SAM's ViT (`jaxvrp.backbones.sam_vit`) stand in for the bottlenecks, as a pyramid like
   ResNet's 1/8, 1/16, 1/32: layer1 and layer2 at the encoder's resolution form the layer2
   group, layer3 average-pooled 2 x 2 the layer3 group, layer4 pooled 4 x 4 the layer4 group
   (`VIT_GROUPS`), so the official HPN with its support strides runs unchanged.
2. Each support feature is multiplied by the support weight map (B, H, W) resized bilinearly
   (align_corners=True) to its size (`hsnet.py mask_feature`; a float map in [0, 1], so a
   heat map works as well as a binary mask).
3. Cosine correlation of every query/support feature pair: vectors divided by (L2 norm +
   1e-5), dot products clamped at 0 (`correlation.py`). The pairs of one layer group are
   stacked as channels in bottleneck order: (B, Hq, Wq, Hs, Ws, C_group), query dims first
   like the official (B, C, Hq, Wq, Hs, Ws) but with the channels last.
4. HPN learner (`learner.py`): three squeezing blocks of center-pivot 4D convs (one per
   group, deepest first), two mixing blocks (the deeper result resized on its *query* dims,
   bilinear align_corners=True, and added), the mean over the support dims, and a 2-D
   decoder with one x2 bilinear upsampling; the 2-class logits are resized (bilinear,
   align_corners=True) to the input size (`hsnet.py forward`).

Parameter names mirror the official `HPNLearner` tree (`encoder_layer4_0/conv1/kernel` is
`hpn_learner.encoder_layer4.0.conv1.weight`), so `conversion.hsnet` converts by name.

Options (`make_config`):
- `num_4d_layers` (default 3, official): center-pivot layers per block, 1-4 (SAMIC Table 5).
  Rule: with n < 3 each block keeps its first n (kernel, support stride, channels) entries;
  with n = 4 the last entry is repeated once. The mixing blocks use n layers of
  (3, 1, C_last) and the decoder's first conv reads C_last channels, where C_last is the last
  squeezing layer's output (16, 64, 128, 128 for n = 1..4). Learner sizes for ResNet-50:
  148,834 / 579,554 / 2,573,794 / 4,050,914 (SAMIC prints 0.2M / 0.8M / 2.6M / 7.2M; only
  n = 3 is the official network, SAMIC does not describe its other depths).
- `square_upsample_fix` (default False, official): the official decoder upsamples to
  (2 W, 2 W), taking both sides from the width, so a non-square input is made square before
  the final resize; True upsamples each side by 2.

Deliberate difference: `loss_fn` leaves `query_ignore` pixels out of the cross-entropy; the
official training loss counts PASCAL's 255 boundary as background.
"""

import dataclasses
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvrp import backbones
from jaxvrp.backbones.resnet import ResNetConfig
from jaxvrp.backbones.sam_vit import SamViTConfig
from jaxvrp.backbones.vgg import VGGConfig
from jaxvrp.image import bilinear_matrix, resize_bilinear
from jaxvrp.learners import registry
from jaxvrp.learners.protocol import FrozenSpec, Learner, stored_features

Params = Any
NAME = "hsnet"
IMAGE_SIZE = 400  # official train.py / test.py: FSSDataset.initialize(img_size=400)
CORR_EPS = 1e-5  # correlation.py
GN_GROUPS, GN_EPS = 4, 1e-5  # learner.py: nn.GroupNorm(4, outch), torch's default eps

# learner.py HPNLearner: (kernel, support stride, out channels) per center-pivot layer.
_CHANNELS = (16, 64, 128)  # outch1, outch2, outch3
SQUEEZE_BLOCKS = {
    "encoder_layer4": ((3, 2), (3, 2), (3, 2)),
    "encoder_layer3": ((5, 4), (3, 2), (3, 2)),
    "encoder_layer2": ((5, 4), (5, 4), (3, 2)),
}
MIXING_BLOCKS = ("encoder_layer4to3", "encoder_layer3to2")
DECODER_IN = 128  # outch3: decoder1's first conv's output (its input is C_last)
DECODER_MID = 64  # outch2: decoder1's output, decoder2's width

# Our adaptation to a SAM-encoder backbone (module docstring, item 1): the (layer4, layer3,
# layer2) groups as (stage, average-pooling factor) pairs of `jaxvrp.backbones.sam_vit`.
VIT_GROUPS = ((("layer4", 4),), (("layer3", 2),), (("layer1", 1), ("layer2", 1)))


@dataclasses.dataclass(frozen=True)
class HSNetConfig:
    backbone: Any  # ResNetConfig (torchvision layout), VGGConfig without BN, or SamViTConfig
    num_4d_layers: int = 3
    square_upsample_fix: bool = False

    def __post_init__(self):
        if not isinstance(self.backbone, ResNetConfig | VGGConfig | SamViTConfig):
            raise ValueError(
                "HSNet reads a ResNet, VGG or SAM-encoder backbone, got "
                f"{type(self.backbone).__name__}"
            )
        if isinstance(self.backbone, ResNetConfig) and self.backbone.deep_stem:
            raise ValueError("HSNet uses torchvision's ResNet (7x7 stem), not the deep stem")
        if isinstance(self.backbone, VGGConfig) and self.backbone.batch_norm:
            raise ValueError("HSNet uses VGG-16 without BN (arch 'vgg16'), not 'vgg16_bn'")
        if self.num_4d_layers not in (1, 2, 3, 4):
            raise ValueError(f"num_4d_layers must be 1, 2, 3 or 4, got {self.num_4d_layers}")

    def block_layers(self, block: str) -> tuple[tuple[int, int, int], ...]:
        """(kernel, support stride, out channels) of each center-pivot layer of `block`."""
        n = self.num_4d_layers
        if block in MIXING_BLOCKS:
            c = self.last_channels
            return ((3, 1, c),) * n
        full = tuple((k, s, c) for (k, s), c in zip(SQUEEZE_BLOCKS[block], _CHANNELS, strict=True))
        return full[:n] if n <= 3 else full + full[-1:] * (n - 3)

    @property
    def last_channels(self) -> int:
        return _CHANNELS[min(self.num_4d_layers, 3) - 1]


def make_config(backbone: str = "resnet50", sam: str | None = None, **options: Any) -> HSNetConfig:
    """An `HSNetConfig` from a backbone arch name (`resnet50`, `resnet101`, `vgg16`, a small
    `resnet_test`, or `sam_<variant>`); HSNet prompts no SAM, so `sam` must be None, or that
    same variant with a `sam_<variant>` backbone (whose weights are that SAM's)."""
    if sam is not None and backbone != f"sam_{sam}":
        raise ValueError(
            f"HSNet prompts no SAM; got sam={sam!r} (leave it None, or pass the SAM whose "
            f"encoder is the backbone: backbone='sam_{sam}')"
        )
    known = {f.name for f in dataclasses.fields(HSNetConfig)} - {"backbone"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown HSNet options {unknown}; known: {sorted(known)}")
    return HSNetConfig(backbones.get_config(backbone), **options)


def config_to_dict(config: HSNetConfig, *, backbone: str) -> dict[str, Any]:
    """JSON-able `make_config` arguments of `config` (made from arch `backbone`)."""
    d = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return {**d, "backbone": backbone, "sam": None}


# --- features and correlation ---------------------------------------------------------------


def feature_groups(backbone: Any) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Backbone output keys of the (layer4, layer3, layer2) groups, each in bottleneck order.

    ResNet: every bottleneck of each layer (`stack_ids` in `hsnet.py`). VGG-16: (pool5),
    (conv5_1..3), (conv4_1..3), the official `nbottlenecks = [.., 3, 3, 1]` split. SAM
    encoder: `VIT_GROUPS` (keys `<stage>_pool<factor>`).
    """
    if isinstance(backbone, SamViTConfig):
        return tuple(tuple(f"{n}_pool{f}" for n, f in group) for group in VIT_GROUPS)
    if isinstance(backbone, ResNetConfig):
        return tuple(
            tuple(f"layer{li}_{i}" for i in range(backbone.layers[li - 1])) for li in (4, 3, 2)
        )
    return (("pool5",), ("conv5_1", "conv5_2", "conv5_3"), ("conv4_1", "conv4_2", "conv4_3"))


def group_channels(backbone: Any) -> tuple[int, int, int]:
    """Correlation channels of the (layer4, layer3, layer2) groups: the HPN input widths."""
    return tuple(len(g) for g in feature_groups(backbone))


def precomputable_stages(config: HSNetConfig) -> dict[str, tuple[str, ...]]:
    """`Learner.backbone_stages` of HSNet (and SAMIC): the backbone outputs its feature maps
    come from, the same for the query and the references (their masking comes after the
    backbone, `mask_features`): `stage_names` (a SAM encoder's are pooled in the step,
    `pyramid`)."""
    names = stage_names(config.backbone)
    return {"query": names, "support": names}


def stage_names(backbone: Any) -> tuple[str, ...]:
    """The backbone outputs HSNet's feature maps come from: a SAM encoder's `VIT_GROUPS`
    stages, else every map of `feature_groups`."""
    if isinstance(backbone, SamViTConfig):
        return tuple(dict.fromkeys(n for group in VIT_GROUPS for n, _ in group))
    return tuple(k for group in feature_groups(backbone) for k in group)


def backbone_stages(backbone_params: Params, images: jax.Array, backbone: Any) -> dict:
    """The backbone outputs `pyramid` reads, of normalised images (N, H, W, 3): a SAM
    encoder runs on the images resized (bilinear, align_corners=True, as SAM's own input) to
    its input size, the others on the images as they are (what `jaxvrp.precompute` stores,
    `vrp.stored_stages`)."""
    if isinstance(backbone, SamViTConfig):
        s = (backbone.image_size, backbone.image_size)
        if images.shape[1:3] != s:
            images = resize_bilinear(images, s, align_corners=True)
    feats = backbones.apply(backbone_params, images, config=backbone)
    return {k: jax.lax.stop_gradient(feats[k]) for k in stage_names(backbone)}


def pyramid(stages: dict, backbone: Any) -> dict:
    """HSNet's feature maps {key: (N, h, w, C)} (`feature_groups`' keys) from the backbone
    outputs `backbone_stages`: a ResNet's or VGG's as they are; a SAM encoder's
    `VIT_GROUPS` stages average-pooled by their factors (`<stage>_pool<factor>`)."""
    if not isinstance(backbone, SamViTConfig):
        return {k: stages[k] for group in feature_groups(backbone) for k in group}
    out = {}
    for n, f in (pair for group in VIT_GROUPS for pair in group):
        x = stages[n]
        b, h, w, c = x.shape
        if h % f or w % f:
            raise ValueError(f"SAM encoder map {n} is {h}x{w}, not divisible by its pooling {f}")
        out[f"{n}_pool{f}"] = x.reshape(b, h // f, f, w // f, f, c).mean(axis=(2, 4))
    return out


def extract_features(backbone_params: Params, images: jax.Array, backbone: Any) -> dict:
    """The HSNet feature maps of normalised images (N, H, W, 3): {key: (N, h, w, C)}."""
    return pyramid(backbone_stages(backbone_params, images, backbone), backbone)


def _unit(f: jax.Array) -> jax.Array:
    return f / (jnp.linalg.norm(f, axis=-1, keepdims=True) + CORR_EPS)


def correlation(query_feat: jax.Array, support_feat: jax.Array) -> jax.Array:
    """Cosine correlation clamped at 0: (B, Hq, Wq, C), (B, Hs, Ws, C) -> (B, Hq, Wq, Hs, Ws)."""
    c = jnp.einsum(
        "bijc,bklc->bijkl",
        _unit(query_feat),
        _unit(support_feat),
        precision=jax.lax.Precision.HIGHEST,
    )
    return jnp.maximum(c, 0.0)


def mask_features(feats: dict, weights: jax.Array) -> dict:
    """Each support feature (B, h, w, C) times the weight map (B, H, W) resized to (h, w)
    (bilinear, align_corners=True, as `mask_feature`)."""
    out = {}
    for k, f in feats.items():
        w = resize_bilinear(
            weights.astype(f.dtype), f.shape[1:3], align_corners=True, channels_last=False
        )
        out[k] = f * w[..., None]
    return out


def hypercorrelation(
    query_feats: dict, support_feats: dict, backbone: Any
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(corr_l4, corr_l3, corr_l2), each (B, Hq, Wq, Hs, Ws, C_group), from feature dicts
    whose support features are already masked (`multilayer_correlation`)."""
    return tuple(
        jnp.stack([correlation(query_feats[k], support_feats[k]) for k in group], axis=-1)
        for group in feature_groups(backbone)
    )


# --- the HPN learner ------------------------------------------------------------------------


def _torch_uniform(fan_in: int):
    """PyTorch's default Conv2d bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -bound, bound
    )


# PyTorch's default Conv2d weight init (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in)).
_TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class Conv2d(nn.Module):
    """`nn.Conv2d(in, out, k, stride, padding=k // 2, bias=True)` with PyTorch's init, on
    (N, H, W, C) (the params of `nn.Conv`: "kernel" (k, k, in, out), "bias" (out,)).

    A 1 x 1 input with an odd k meets only the kernel's centre tap (the output is 1 x 1 for
    any stride), so it is computed as that tap's matrix product instead of a convolution whose
    other k² − 1 taps multiply the zero padding: the center-pivot layers whose support dims
    have shrunk to 1 x 1 (the squeeze blocks' last layer and every mixing-block layer, for
    the support sizes HSNet sees) cost one product instead of k² (measured in docs/hsnet.md).
    """

    features: int
    kernel: int
    stride: int
    in_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, c = self.kernel, self.in_features
        if x.shape[-1] != c:
            raise ValueError(f"{self.name}: expected {c} input channels, got shape {x.shape}")
        kernel = self.param("kernel", _TORCH_KERNEL_INIT, (k, k, c, self.features), jnp.float32)
        bias = self.param("bias", _torch_uniform(c * k * k), (self.features,), jnp.float32)
        if x.shape[1:3] == (1, 1) and k % 2:
            return jnp.einsum("nhwc,co->nhwo", x, kernel[k // 2, k // 2]) + bias
        p = k // 2
        y = jax.lax.conv_general_dilated(
            x,
            kernel,
            (self.stride, self.stride),
            ((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + bias


def conv2d(features: int, kernel: int, stride: int, in_features: int, name: str) -> Conv2d:
    """`Conv2d` named `name` (the official module's index in its Sequential)."""
    return Conv2d(features, kernel, stride, in_features, name=name)


class CenterPivotConv4d(nn.Module):
    """The official `CenterPivotConv4d` (`conv4d.py`) on (B, Ha, Wa, Hb, Wb, C).

    A 4-D kernel that is non-zero only on its two centre slices: `conv1`, a k x k conv over
    the query dims (Ha, Wa) at every support position kept by the stride (indices 0, s,
    2s, ...), plus `conv2`, a k x k conv of stride s over the support dims (Hb, Wb) at every
    query position; both with bias and padding k // 2. The two other dims are folded into
    the batch, so each is one batched 2-D conv. Output (B, Ha, Wa, ceil(Hb/s), ceil(Wb/s), O).
    """

    features: int
    kernel: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, ha, wa, hb, wb, c = x.shape
        k, s, o = self.kernel, self.stride, self.features
        pruned = x[:, :, :, ::s, ::s] if s > 1 else x  # official `prune` (index_select)
        ph, pw = pruned.shape[3:5]
        y1 = pruned.transpose(0, 3, 4, 1, 2, 5).reshape(b * ph * pw, ha, wa, c)
        y1 = conv2d(o, k, 1, c, "conv1")(y1)
        y1 = y1.reshape(b, ph, pw, ha, wa, o).transpose(0, 3, 4, 1, 2, 5)
        y2 = conv2d(o, k, s, c, "conv2")(x.reshape(b * ha * wa, hb, wb, c))
        y2 = y2.reshape(b, ha, wa, *y2.shape[1:])
        if y1.shape != y2.shape:  # odd kernels with padding k // 2 always agree
            raise ValueError(f"center-pivot branches disagree: {y1.shape} vs {y2.shape}")
        return y1 + y2


class GroupNorm(nn.Module):
    """`nn.GroupNorm(groups, C)` over all non-batch dims of (B, ..., C), two-pass variance."""

    groups: int = GN_GROUPS
    eps: float = GN_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        g = x.reshape(*x.shape[:-1], self.groups, c // self.groups)
        axes = tuple(range(1, g.ndim - 2)) + (g.ndim - 1,)
        mean = g.mean(axis=axes, keepdims=True)
        var = jnp.square(g - mean).mean(axis=axes, keepdims=True)
        g = (g - mean) * jax.lax.rsqrt(var + self.eps)
        return g.reshape(x.shape) * scale + bias


def resize_query_dims(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear (align_corners=True) resize of the query dims of (B, Ha, Wa, Hb, Wb, C)
    (the official `interpolate_support_dims`, which despite its name resizes these)."""
    if x.shape[1:3] == tuple(size):
        return x
    wh = jnp.asarray(bilinear_matrix(x.shape[1], size[0], True))
    ww = jnp.asarray(bilinear_matrix(x.shape[2], size[1], True))
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwxyc->bowxyc", wh, x, precision=hp)
    return jnp.einsum("pw,bowxyc->bopxyc", ww, x, precision=hp)


class HPNLearner(nn.Module):
    """`HPNLearner` (`learner.py`): hypercorrelation pyramid (corr_l4, corr_l3, corr_l2) ->
    2-class logits before the final resize: (B, 2 Wq2, 2 Wq2, 2) as the official decoder, or
    (B, 2 Hq2, 2 Wq2, 2) with `square_upsample_fix`; (Hq2, Wq2) is the layer2 query size."""

    config: HSNetConfig

    def block(self, name: str, x: jax.Array) -> jax.Array:
        # Sequential indices of make_building_block: conv4d 3i, GroupNorm 3i+1, ReLU 3i+2.
        for i, (k, s, o) in enumerate(self.config.block_layers(name)):
            x = CenterPivotConv4d(o, k, s, name=f"{name}_{3 * i}")(x)
            x = nn.relu(GroupNorm(name=f"{name}_{3 * i + 1}")(x))
        return x

    @nn.compact
    def __call__(self, corr_l4: jax.Array, corr_l3: jax.Array, corr_l2: jax.Array) -> jax.Array:
        sqz4 = self.block("encoder_layer4", corr_l4)
        sqz3 = self.block("encoder_layer3", corr_l3)
        sqz2 = self.block("encoder_layer2", corr_l2)
        mix43 = self.block("encoder_layer4to3", resize_query_dims(sqz4, sqz3.shape[1:3]) + sqz3)
        mix432 = self.block("encoder_layer3to2", resize_query_dims(mix43, sqz2.shape[1:3]) + sqz2)
        encoded = mix432.mean(axis=(3, 4))  # over the support dims: (B, Hq2, Wq2, C_last)
        c_last = self.config.last_channels
        x = nn.relu(conv2d(DECODER_IN, 3, 1, c_last, "decoder1_0")(encoded))
        x = nn.relu(conv2d(DECODER_MID, 3, 1, DECODER_IN, "decoder1_2")(x))
        h, w = x.shape[1:3]
        # Official: `upsample_size = (width * 2,) * 2`, square whatever the input's aspect.
        up = (2 * h, 2 * w) if self.config.square_upsample_fix else (2 * w, 2 * w)
        x = resize_bilinear(x, up, align_corners=True)
        x = nn.relu(conv2d(DECODER_MID, 3, 1, DECODER_MID, "decoder2_0")(x))
        return conv2d(2, 3, 1, DECODER_MID, "decoder2_2")(x)


def _placeholders(config: HSNetConfig) -> tuple[jax.Array, ...]:
    """Small correlation tensors of the right channel counts (init shapes need no more)."""
    return tuple(jnp.zeros((1, 4, 4, 4, 4, c)) for c in group_channels(config.backbone))


@partial(jax.jit, static_argnames=("config",))
def init(rng: jax.Array, config: HSNetConfig) -> Params:
    """Fresh HPN learner parameters (float32, PyTorch's default init)."""
    return HPNLearner(config).init(rng, *_placeholders(config))["params"]


def param_shapes(config: HSNetConfig) -> Params:
    return jax.eval_shape(partial(init, config=config), jax.random.key(0))


def num_params(params: Params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


# --- forward --------------------------------------------------------------------------------


def correlation_logits(
    params: Params,
    backbone_params: Params,
    query_images: jax.Array,
    support_images: jax.Array,
    support_weights: jax.Array,
    *,
    config: HSNetConfig,
    query_stages: dict | None = None,
    support_stages: dict | None = None,
) -> jax.Array:
    """One-shot HSNet: the official `HypercorrSqueezeNetwork.forward`, channels last.

    query_images, support_images (B, H, W, 3) ImageNet-normalised; support_weights (B, H, W)
    float in [0, 1] (mask or heat map). Returns 2-class logits (B, H, W, 2) (background,
    foreground), resized (bilinear, align_corners=True) to the input size.
    `query_stages` / `support_stages`: the images' precomputed `backbone_stages` {stage:
    (B, h, w, C)}, used instead of running the backbone on them.
    """
    b = query_images.shape[0]
    if support_images.shape != query_images.shape:
        raise ValueError(f"support {support_images.shape} != query {query_images.shape}")
    if support_weights.shape != query_images.shape[:3]:
        raise ValueError(f"support_weights {support_weights.shape} != {query_images.shape[:3]}")
    bb = config.backbone
    if query_stages is None and support_stages is None:
        # One backbone pass for both (frozen BN: each image is independent of the others).
        feats = extract_features(
            backbone_params, jnp.concatenate([query_images, support_images]), bb
        )
        query = {k: f[:b] for k, f in feats.items()}
        support = {k: f[b:] for k, f in feats.items()}
    else:
        query, support = (
            pyramid(st, bb) if st is not None else extract_features(backbone_params, x, bb)
            for st, x in ((query_stages, query_images), (support_stages, support_images))
        )
    support = mask_features(support, support_weights)
    corrs = hypercorrelation(query, support, config.backbone)
    out = HPNLearner(config).apply({"params": params}, *corrs)
    return resize_bilinear(out, query_images.shape[1:3], align_corners=True)


def shot_stages(batch: dict, k: int) -> tuple[dict | None, dict | None]:
    """The batch's precomputed stages (`precomputable_stages`) per (query, shot) pair, shots
    folded into the batch as `shot_logits` folds the images: the query's `query_features/*`
    (B, ...) repeated K times, the references' `support_features/*` (B, K, ...) flattened;
    None for a role the batch has none of."""
    q, s = stored_features(batch, "query"), stored_features(batch, "support")
    if q is not None:
        q = {n: jnp.repeat(jnp.asarray(v), k, axis=0) for n, v in q.items()}
    if s is not None:
        s = {n: jnp.asarray(v).reshape(-1, *v.shape[2:]) for n, v in s.items()}
    return q, s


def shot_logits(params: Params, frozen: Params, batch: dict, *, config: HSNetConfig) -> jax.Array:
    """Per-shot 2-class logits (B, K, H, W, 2): shot k pairs the query with support k."""
    q = jnp.asarray(batch["query_image"])
    s = jnp.asarray(batch["support_images"])
    a = jnp.asarray(batch["support_annotations"], jnp.float32)
    b, k = s.shape[:2]
    qk = jnp.broadcast_to(q[:, None], s.shape).reshape(b * k, *q.shape[1:])
    query_stages, support_stages = shot_stages(batch, k)
    out = correlation_logits(
        params,
        frozen["backbone"],
        qk,
        s.reshape(b * k, *s.shape[2:]),
        a.reshape(b * k, *a.shape[2:]),
        config=config,
        query_stages=query_stages,
        support_stages=support_stages,
    )
    return out.reshape(b, k, *out.shape[1:])


def logits(params: Params, frozen: Params, batch: dict, *, config: HSNetConfig) -> jax.Array:
    """The official model's output: (B, H, W, 2) for one shot, (B, K, H, W, 2) for K > 1."""
    out = shot_logits(params, frozen, batch, config=config)
    return out[:, 0] if out.shape[1] == 1 else out


def vote(shot_two_class: jax.Array) -> jax.Array:
    """The official K-shot merge (`predict_mask_nshot`) of (B, K, H, W, 2) logits: the sum of
    the per-shot argmax masks over max(max vote, 1) per image, >= 0.5. Returns (B, H, W) bool."""
    fg = (shot_two_class[..., 1] > shot_two_class[..., 0]).astype(jnp.float32)  # torch argmax
    votes = fg.sum(axis=1)
    top = jnp.maximum(votes.max(axis=(1, 2), keepdims=True), 1.0)
    return votes / top >= 0.5


def apply(
    params: Params,
    frozen: Params,
    batch: dict,
    *,
    config: HSNetConfig,
    rng: jax.Array | None = None,
    train: bool = False,
) -> jax.Array:
    """Foreground logits (B, H, W): fg - bg for one shot; for K shots the official vote as
    +1 / -1 (HSNet has no dropout, so `rng` and `train` change nothing)."""
    del rng, train
    out = shot_logits(params, frozen, batch, config=config)
    if out.shape[1] == 1:
        return out[:, 0, ..., 1] - out[:, 0, ..., 0]
    return jnp.where(vote(out), 1.0, -1.0)


def loss_fn(
    params: Params,
    frozen: Params,
    batch: dict,
    *,
    config: HSNetConfig,
    rng: jax.Array | None = None,
    train: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """2-class cross-entropy (official `compute_objective`), mean over valid pixels (and over
    the shots' logits when K > 1): (loss, {"ce": loss})."""
    del rng, train
    out = shot_logits(params, frozen, batch, config=config)  # (B, K, H, W, 2)
    target = jnp.asarray(batch["query_mask"]).astype(jnp.int32)[:, None]
    logp = jax.nn.log_softmax(out, axis=-1)
    ce = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]  # (B, K, H, W)
    valid = jnp.ones_like(ce)
    if batch.get("query_ignore") is not None:
        valid = valid * (1.0 - jnp.asarray(batch["query_ignore"], jnp.float32))[:, None]
    ce = (ce * valid).sum() / jnp.maximum(valid.sum(), 1.0)
    return ce, {"ce": ce}


def frozen_spec(config: HSNetConfig) -> FrozenSpec:
    """HSNet reads only its frozen backbone; a SAM-encoder backbone's weights come with the
    SAM (`jaxvrp.frozen`), so that SAM is part of the spec."""
    if isinstance(config.backbone, SamViTConfig):
        return FrozenSpec(sam=config.backbone.sam_config, backbone=config.backbone)
    return FrozenSpec(sam=None, backbone=config.backbone)


LEARNER = registry.register(
    Learner(
        name=NAME,
        title="HSNet",
        make_config=make_config,
        init=init,
        apply=apply,
        loss_fn=loss_fn,
        frozen=frozen_spec,
        module=__name__,
        backbone_stages=precomputable_stages,
    )
)
