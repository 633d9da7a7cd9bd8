"""VGG-16 with BatchNorm in torchvision's layout (`features_{i}` = `features.i`).

VRP-SAM (`model/base/vgg.py`) builds torchvision's `vgg16_bn` layers but with
`MaxPool2d(2, 2, ceil_mode=True)`; `ceil_mode` is a config option (default True, as VRP-SAM;
it only changes outputs when a pooled side is odd). Its split of `features` into stages is
layer0 = [0:7], layer1 = [7:14], layer2 = [14:24], layer3 = [24:34], layer4 = [34:43]
(the final max-pool, index 43, is not used).

Input: ImageNet-normalised images (B, H, W, 3). Output: dict of NHWC `layer0` ... `layer4`
(64, 128, 256, 512, 512 channels at strides 2, 4, 8, 16, 16).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvrp.backbones.layers import FrozenBatchNorm, max_pool

# torchvision's configuration "D"; "M" is a 2x2 max-pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Index in `features` where each stage ends (exclusive), per VRP-SAM.
STAGE_ENDS = {"layer0": 7, "layer1": 14, "layer2": 24, "layer3": 34, "layer4": 43}


@dataclasses.dataclass(frozen=True)
class VGGConfig:
    cfg: tuple = VGG16_CFG
    ceil_mode: bool = True
    dtype: str = "float32"


VGG_ARCHS = {
    "vgg16_bn": VGGConfig(),
    # Narrow channels for tests, same layer sequence.
    "vgg_test": VGGConfig((8, 8, "M", 16, 16, "M", 16, 16, 16, "M", 32, 32, 32, "M", 32, 32, 32)),
}


class VGG(nn.Module):
    config: VGGConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, start: str = "layer0", stop: str = "layer4"
    ) -> dict[str, jax.Array]:
        """Run stages `start`..`stop`; x is the input of `start`."""
        names = tuple(STAGE_ENDS)
        first = names.index(start)
        begin = 0 if first == 0 else STAGE_ENDS[names[first - 1]]
        end = STAGE_ENDS[stop]
        dt = jnp.dtype(self.config.dtype)
        x = x.astype(dt)
        ends = {v: k for k, v in STAGE_ENDS.items()}
        feats = {}
        index = 0  # position in torchvision's `features` Sequential
        for v in self.config.cfg:
            run = begin <= index < end
            if v == "M":
                if run:
                    x = max_pool(x, 2, 2, ceil_mode=self.config.ceil_mode)
                index += 1
            else:
                if run:
                    conv = nn.Conv(
                        v, (3, 3), padding=((1, 1), (1, 1)), dtype=dt, name=f"features_{index}"
                    )
                    x = nn.relu(FrozenBatchNorm(dtype=dt, name=f"features_{index + 1}")(conv(x)))
                index += 3
            if run and index in ends:
                feats[ends[index]] = x
        return feats
