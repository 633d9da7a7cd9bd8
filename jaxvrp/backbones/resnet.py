"""ResNet-50/101 in torchvision's layout, and the deep-stem dilated variant of VRP-SAM.

torchvision's `ResNet` (Bottleneck v1.5: the stride sits on the 3x3 conv) with its module
names: `conv1`, `bn1`, `layer{1..4}_{i}` with `conv1..3`, `bn1..3`, `downsample_0/1`. The
deep-stem variant (VRP-SAM's `model/base/resnet.py`, from PSPNet/PFENet) replaces the 7x7
stem by three 3x3 convs (`conv1` 3->64 stride 2, `conv2` 64->64, `conv3` 64->128, each with
its BN and ReLU) and dilates layer3 and layer4 (torchvision's
`replace_stride_with_dilation=[False, True, True]`: output stride 8).

Input: ImageNet-normalised images (B, H, W, 3). Output: a dict of NHWC features:
- `layer0` ... `layer4`: VRP-SAM's split (`layer0` = stem + max-pool).
- `layer{L}_{i}` for L in 2..4: bottleneck i of layer L after its residual sum and before
  its final ReLU (the features HSNet and SAMIC correlate).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvrp.backbones.layers import FrozenBatchNorm, max_pool
from jaxvrp.sam.common import Dtype


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    deep_stem: bool = False
    replace_stride_with_dilation: tuple[bool, bool, bool] = (False, False, False)
    width: int = 64  # channels of layer1's bottleneck; 64 for every standard ResNet
    dtype: str = "float32"


STAGES = ("layer0", "layer1", "layer2", "layer3", "layer4")

RESNET_ARCHS = {
    "resnet50": ResNetConfig((3, 4, 6, 3)),
    "resnet101": ResNetConfig((3, 4, 23, 3)),
    "resnet50_deepstem": ResNetConfig((3, 4, 6, 3), True, (False, True, True)),
    "resnet101_deepstem": ResNetConfig((3, 4, 23, 3), True, (False, True, True)),
    # Small widths for tests; same structure as resnet50_deepstem.
    "resnet_test_deepstem": ResNetConfig((1, 2, 2, 1), True, (False, True, True), width=8),
    "resnet_test": ResNetConfig((1, 2, 2, 1), width=8),
}


def _conv(features, kernel, stride=1, dilation=1, name=None, dtype=jnp.float32):
    pad = dilation * (kernel // 2)
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        use_bias=False,
        dtype=dtype,
        name=name,
    )


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 (x4) with an optional projection shortcut."""

    planes: int
    stride: int = 1
    dilation: int = 1
    downsample: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns (output after ReLU, the sum before it)."""
        dt = self.dtype
        out = nn.relu(
            FrozenBatchNorm(dtype=dt, name="bn1")(_conv(self.planes, 1, dtype=dt, name="conv1")(x))
        )
        out = _conv(self.planes, 3, self.stride, self.dilation, "conv2", dt)(out)
        out = nn.relu(FrozenBatchNorm(dtype=dt, name="bn2")(out))
        out = FrozenBatchNorm(dtype=dt, name="bn3")(
            _conv(4 * self.planes, 1, dtype=dt, name="conv3")(out)
        )
        identity = x
        if self.downsample:
            identity = _conv(4 * self.planes, 1, self.stride, dtype=dt, name="downsample_0")(x)
            identity = FrozenBatchNorm(dtype=dt, name="downsample_1")(identity)
        pre = out + identity
        return nn.relu(pre), pre


class ResNet(nn.Module):
    config: ResNetConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, start: str = "layer0", stop: str = "layer4"
    ) -> dict[str, jax.Array]:
        """Run stages `start`..`stop` (of layer0..layer4); x is the input of `start` (the
        images for layer0, else the previous stage's output)."""
        c = self.config
        first, last = STAGES.index(start), STAGES.index(stop)
        dt = jnp.dtype(c.dtype)
        x = x.astype(dt)
        feats = {}
        if first == 0:
            if c.deep_stem:
                for i, ch, stride in ((1, 64, 2), (2, 64, 1), (3, 128, 1)):
                    x = _conv(ch, 3, stride, name=f"conv{i}", dtype=dt)(x)
                    x = nn.relu(FrozenBatchNorm(dtype=dt, name=f"bn{i}")(x))
            else:
                x = nn.Conv(
                    c.width,
                    (7, 7),
                    strides=(2, 2),
                    padding=((3, 3), (3, 3)),
                    use_bias=False,
                    dtype=dt,
                    name="conv1",
                )(x)
                x = nn.relu(FrozenBatchNorm(dtype=dt, name="bn1")(x))
            x = max_pool(x, 3, 2, padding=1)
            feats["layer0"] = x
        inplanes = 128 if c.deep_stem else c.width
        dilation = 1
        for li, blocks in enumerate(c.layers):
            planes = c.width * 2**li
            stride = 1 if li == 0 else 2
            previous_dilation = dilation
            if li > 0 and c.replace_stride_with_dilation[li - 1]:
                dilation *= stride
                stride = 1
            if first <= li + 1 <= last:
                for bi in range(blocks):
                    block = Bottleneck(
                        planes,
                        stride=stride if bi == 0 else 1,
                        dilation=previous_dilation if bi == 0 else dilation,
                        downsample=bi == 0 and (stride != 1 or inplanes != 4 * planes),
                        dtype=dt,
                        name=f"layer{li + 1}_{bi}",
                    )
                    x, pre = block(x)
                    if li >= 1:
                        feats[f"layer{li + 1}_{bi}"] = pre
                feats[f"layer{li + 1}"] = x
            inplanes = 4 * planes
        return feats
