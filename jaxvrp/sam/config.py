"""SAM architecture configurations, selected by name.

The three official variants carry the numbers of the official `build_sam.py`
(facebookresearch/segment-anything). The `test_*` variants keep SAM's structure at a
fraction of the cost; they exist so the suite can run parity tests on 2 CPU cores.
"""

import dataclasses
from typing import Any

# How the image encoder computes attention (`jaxvrp.sam.image_encoder.Attention`).
ATTENTION_KINDS = ("xla", "dot_product", "dot_product_bias")
# SamConfig fields that choose how the model is computed, not what it computes: excluded
# from `architecture()`, so a checkpoint loads into a config that differs only in these.
COMPUTE_FIELDS = ("dtype", "attention", "scan_blocks")


@dataclasses.dataclass(frozen=True)
class SamConfig:
    """Every number that fixes a SAM's shapes, plus the compute dtype.

    Frozen and hashable so it can be a static argument of `jax.jit`.
    """

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    # Compute dtype ("float32" or "bfloat16"); parameters always stay float32.
    dtype: str = "float32"
    # Image-encoder attention: "xla" (the official formulation), "dot_product" or
    # "dot_product_bias" (`jax.nn.dot_product_attention`, cuDNN on NVIDIA GPUs). Same outputs.
    attention: str = "xla"
    # `nn.scan` over the encoder's (windowed..., global) block groups: faster compiles;
    # the encoder params are then in `image_encoder.stack_blocks` layout.
    scan_blocks: bool = False

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for the official 1024 / 16)."""
        return self.image_size // self.patch_size

    @property
    def low_res_mask_size(self) -> int:
        """Side of the decoder's low-resolution logits (256 officially)."""
        return 4 * self.embedding_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def architecture(self) -> dict[str, Any]:
        """`to_dict` without the compute options (dtype, attention, scan_blocks): equal for
        checkpoints that fit one model."""
        d = self.to_dict()
        for k in COMPUTE_FIELDS:
            del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SamConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown SamConfig keys: {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


VARIANTS: dict[str, SamConfig] = {
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
    # The embedded default SAM (jaxvrp/assets/sam_tiny_128, configs/sam.py): a 128-pixel
    # input, 8-pixel patches (16x16 tokens, 64x64 low-res masks), 733k parameters.
    "tiny_128": SamConfig(
        96,
        4,
        3,
        (1, 3),
        image_size=128,
        patch_size=8,
        window_size=8,
        prompt_embed_dim=64,
        decoder_mlp_dim=256,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
    ),
    # Official geometry (1024 input, 64x64 tokens, windows padded 64 -> 70), tiny widths.
    "test_tiny": SamConfig(32, 2, 2, (1,), decoder_mlp_dim=256),
    # A 256-pixel input: 16x16 tokens, window 7 (padded 16 -> 21), 64x64 low-res masks.
    "test_small_image": SamConfig(
        32,
        3,
        2,
        (2,),
        image_size=256,
        window_size=7,
        prompt_embed_dim=64,
        decoder_mlp_dim=128,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
    ),
}


def get_config(variant: str, **overrides: Any) -> SamConfig:
    """The named variant, with optional field overrides (e.g. `dtype="bfloat16"`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown SAM variant {variant!r}; known: {sorted(VARIANTS)}")
    return dataclasses.replace(VARIANTS[variant], **overrides)
