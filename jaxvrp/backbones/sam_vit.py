"""SAM's own image encoder as a semantic backbone (archs "sam_<variant>", e.g. "sam_tiny_128").

The learners need a frozen backbone's mid-level and high-level features; with this backbone
they come from the frozen SAM the learner prompts, so nothing else has to be downloaded or
trained (the CPU demo's choice). Its parameters are the SAM checkpoint's `image_encoder`
subtree (`jaxvrp.frozen` takes them from there), under the same names.

Stages over the ViT blocks (no neck): "layer0" is the patch embedding plus the position
embedding, and "layer{k}" (k = 1..4) the output of block ceil(k * depth / 4) - 1, so for the
4-block "tiny_128" each stage is one block and for ViT-B (12 blocks) they end after blocks
3, 6, 9 and 12. Inputs are SAM-normalised images (the datasets' ImageNet normalisation is
the same, SAM's mean / std are ImageNet's times 255) of exactly SAM's input size;
`jaxvrp.learners.vrp.backbone_input` resizes to it. Window and global attention, and the
relative position tables, are SAM's, so a stage started from a masked map ("layer4" from a
masked "layer3", as VRP-SAM does for the reference) runs the same blocks.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvrp.sam import config as sam_config
from jaxvrp.sam.image_encoder import Block, PatchEmbed

NAMES = ("layer0", "layer1", "layer2", "layer3", "layer4")


@dataclasses.dataclass(frozen=True)
class SamViTConfig:
    """The SAM variant whose image encoder this is (`jaxvrp.sam.config.VARIANTS`)."""

    sam: str
    dtype: str = "float32"

    @property
    def sam_config(self) -> sam_config.SamConfig:
        return sam_config.get_config(self.sam, dtype=self.dtype)

    @property
    def image_size(self) -> int:
        return self.sam_config.image_size

    def stage_ends(self) -> dict[str, int]:
        """Number of blocks run at the end of each stage."""
        d = self.sam_config.encoder_depth
        return {n: math.ceil(k * d / 4) for k, n in enumerate(NAMES)}


class SamViT(nn.Module):
    config: SamViTConfig

    @nn.compact
    def __call__(
        self, images: jax.Array, start: str = "layer0", stop: str = "layer4"
    ) -> dict[str, jax.Array]:
        """(B, S, S, 3) images, or the previous stage's (B, S/p, S/p, D) map when `start`
        is after layer0 -> {"layer0".."layer4": (B, S/p, S/p, D)} for the stages run."""
        c = self.config.sam_config
        dtype = jnp.dtype(c.dtype)
        grid = c.embedding_size
        first, last = NAMES.index(start), NAMES.index(stop)
        ends = self.config.stage_ends()
        if first == 0:
            s = images.shape[1:3]
            if s != (c.image_size, c.image_size):
                raise ValueError(
                    f"SAM encoder backbone {self.config.sam!r} takes {c.image_size}x"
                    f"{c.image_size} images, got {s[0]}x{s[1]}"
                )
            x = PatchEmbed(c.patch_size, c.encoder_embed_dim, dtype, name="patch_embed")(
                images.astype(dtype)
            )
            pos = self.param(
                "pos_embed", nn.initializers.zeros, (1, grid, grid, c.encoder_embed_dim)
            )
            x = x + pos.astype(dtype)
            done = 0
        else:
            x = images.astype(dtype)
            done = ends[NAMES[first - 1]]
        out = {}
        for name in NAMES[first : last + 1]:
            if ends[name] == done:
                out[name] = x
        for i in range(done, ends[stop]):
            x = Block(
                c.encoder_embed_dim,
                c.encoder_num_heads,
                c.mlp_ratio,
                True,
                True,
                0 if i in c.encoder_global_attn_indexes else c.window_size,
                (grid, grid),
                dtype,
                name=f"blocks_{i}",
            )(x)
            for name in NAMES[first : last + 1]:
                if ends[name] == i + 1:
                    out[name] = x
        return out


SAM_VIT_ARCHS = {f"sam_{v}": SamViTConfig(v) for v in sam_config.VARIANTS}
