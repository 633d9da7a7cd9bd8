"""VGG-16 with or without BatchNorm in torchvision's layout (`features_{i}` = `features.i`).

VRP-SAM (`model/base/vgg.py`) builds torchvision's `vgg16_bn` layers but with
`MaxPool2d(2, 2, ceil_mode=True)`; `ceil_mode` is a config option (default True, as VRP-SAM;
it only changes outputs when a pooled side is odd). Its split of `features` into stages is
layer0 = [0:7], layer1 = [7:14], layer2 = [14:24], layer3 = [24:34], layer4 = [34:43]
(the final max-pool, index 43, is not used).

Input: ImageNet-normalised images (B, H, W, 3). Output: dict of NHWC `layer0` ... `layer4`
(64, 128, 256, 512, 512 channels at strides 2, 4, 8, 16, 16), and every conv's output
before its ReLU (after its BN when there is one) as `conv{block}_{i}` (`conv4_1` ...) and
every max-pool's output as `pool{block}`.

`vgg16` is torchvision's `vgg16` (no BN, `ceil_mode=False`) with its final max-pool
(`features.30`, `pool5`): the VGG HSNet correlates (`features[17, 19, 21, 24, 26, 28, 30]`
of the official `model/hsnet.py` = conv4_1-3 and conv5_1-3 before ReLU, and pool5). The
stages keep VRP-SAM's split by layer (layer0 ends after pool1, ..., layer4 is conv5_3 after
its ReLU); pool5 runs after layer4 when `final_pool`.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvrp.backbones.layers import FrozenBatchNorm, max_pool

# torchvision's configuration "D"; "M" is a 2x2 max-pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Index in `features` where each stage ends (exclusive), per VRP-SAM (with BN).
STAGE_ENDS = {"layer0": 7, "layer1": 14, "layer2": 24, "layer3": 34, "layer4": 43}
# The same stages as counts of `cfg` entries (with or without BN).
STAGE_CFG_ENDS = {"layer0": 3, "layer1": 6, "layer2": 10, "layer3": 14, "layer4": 17}


@dataclasses.dataclass(frozen=True)
class VGGConfig:
    cfg: tuple = VGG16_CFG
    ceil_mode: bool = True
    dtype: str = "float32"
    batch_norm: bool = True  # False: conv, ReLU (`features` steps of 2 instead of 3)
    final_pool: bool = False  # True: also the max-pool after conv5_3 (`pool5`)


VGG_ARCHS = {
    "vgg16_bn": VGGConfig(),
    # torchvision's vgg16 (HSNet): no BN, floor-mode pools, pool5 kept.
    "vgg16": VGGConfig(ceil_mode=False, batch_norm=False, final_pool=True),
    # Narrow channels for tests, same layer sequence.
    "vgg_test": VGGConfig((8, 8, "M", 16, 16, "M", 16, 16, 16, "M", 32, 32, 32, "M", 32, 32, 32)),
    "vgg_test_nobn": VGGConfig(
        (8, 8, "M", 16, 16, "M", 16, 16, 16, "M", 32, 32, 32, "M", 32, 32, 32),
        ceil_mode=False,
        batch_norm=False,
        final_pool=True,
    ),
}


class VGG(nn.Module):
    config: VGGConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, start: str = "layer0", stop: str = "layer4"
    ) -> dict[str, jax.Array]:
        """Run stages `start`..`stop`; x is the input of `start`."""
        c = self.config
        names = tuple(STAGE_CFG_ENDS)
        first = names.index(start)
        begin = 0 if first == 0 else STAGE_CFG_ENDS[names[first - 1]]
        end = STAGE_CFG_ENDS[stop]
        dt = jnp.dtype(c.dtype)
        x = x.astype(dt)
        ends = {v: k for k, v in STAGE_CFG_ENDS.items()}
        feats = {}
        index = 0  # position in torchvision's `features` Sequential
        block, conv_in_block = 1, 0
        for j, v in enumerate(c.cfg):
            run = begin <= j < end
            if v == "M":
                if run:
                    x = max_pool(x, 2, 2, ceil_mode=c.ceil_mode)
                    feats[f"pool{block}"] = x
                index += 1
                block, conv_in_block = block + 1, 0
            else:
                conv_in_block += 1
                if run:
                    conv = nn.Conv(
                        v, (3, 3), padding=((1, 1), (1, 1)), dtype=dt, name=f"features_{index}"
                    )
                    x = conv(x)
                    if c.batch_norm:
                        x = FrozenBatchNorm(dtype=dt, name=f"features_{index + 1}")(x)
                    feats[f"conv{block}_{conv_in_block}"] = x
                    x = nn.relu(x)
                index += 3 if c.batch_norm else 2
            if run and j + 1 in ends:
                feats[ends[j + 1]] = x
        if c.final_pool and stop == "layer4":
            feats[f"pool{block}"] = max_pool(x, 2, 2, ceil_mode=c.ceil_mode)
        return feats
