"""The official PyTorch SAM (`segment-anything` from PyPI) built from a jaxvrp `SamConfig`.

Used by the parity tests, the benchmark and the quick-start example, which need official
models with random weights (nothing can be downloaded). Needs torch and segment-anything.
"""

import sys
import types
from functools import partial
from typing import Any

import numpy as np

from jaxvrp.sam.config import SamConfig


def _install_torchvision_stand_in() -> None:
    """Let `segment_anything` import without torchvision.

    `segment_anything` imports `resize` and `to_pil_image` (and, for its automatic mask
    generator, two box ops) from torchvision at import time, and PyPI's torchvision does not
    load beside the torch build used here. It only applies them to uint8 HWC numpy images,
    where torchvision converts to PIL and calls `PIL.Image.resize(size[::-1], BILINEAR)`;
    the stand-in does exactly that. It is installed only when torchvision cannot be imported.
    """
    from PIL import Image

    def to_pil_image(pic: Any, mode: Any = None) -> Image.Image:
        if not isinstance(pic, np.ndarray) or pic.dtype != np.uint8 or pic.ndim != 3:
            raise TypeError("torchvision stand-in: only HxWxC uint8 numpy images are supported")
        return Image.fromarray(pic, mode)

    def resize(img: Image.Image, size: Any, *args: Any, **kwargs: Any) -> Image.Image:
        if not isinstance(img, Image.Image) or len(size) != 2 or args or kwargs:
            raise TypeError("torchvision stand-in: only resize(PIL image, (h, w)) is supported")
        return img.resize((size[1], size[0]), Image.BILINEAR)

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "torchvision is not installed; the official automatic mask generator needs it"
        )

    modules = {
        name: types.ModuleType(name)
        for name in (
            "torchvision",
            "torchvision.transforms",
            "torchvision.transforms.functional",
            "torchvision.ops",
            "torchvision.ops.boxes",
        )
    }
    modules["torchvision.transforms.functional"].resize = resize
    modules["torchvision.transforms.functional"].to_pil_image = to_pil_image
    modules["torchvision.ops.boxes"].batched_nms = unavailable
    modules["torchvision.ops.boxes"].box_area = unavailable
    for name, module in modules.items():
        if "." in name:
            parent, child = name.rsplit(".", 1)
            setattr(modules[parent], child, module)
    sys.modules.update(modules)


def import_segment_anything() -> types.ModuleType:
    """`import segment_anything`, with the torchvision stand-in if torchvision is absent."""
    try:
        import torchvision.transforms.functional  # noqa: F401
    except Exception:  # absent, or present but broken against this torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _install_torchvision_stand_in()
    import segment_anything

    return segment_anything


def build_official_sam(config: SamConfig) -> Any:
    """An official `segment_anything.modeling.Sam` with `config`'s shapes, in eval mode.

    Mirrors the official `_build_sam`, with every size taken from `config`.
    """
    import torch

    sa = import_segment_anything()
    m = sa.modeling
    c = config
    grid = c.embedding_size
    sam = m.Sam(
        image_encoder=m.ImageEncoderViT(
            depth=c.encoder_depth,
            embed_dim=c.encoder_embed_dim,
            img_size=c.image_size,
            mlp_ratio=c.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=c.encoder_num_heads,
            patch_size=c.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=list(c.encoder_global_attn_indexes),
            window_size=c.window_size,
            out_chans=c.prompt_embed_dim,
        ),
        prompt_encoder=m.PromptEncoder(
            embed_dim=c.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(c.image_size, c.image_size),
            mask_in_chans=c.mask_in_chans,
        ),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=c.num_multimask_outputs,
            transformer=m.TwoWayTransformer(
                depth=c.decoder_depth,
                embedding_dim=c.prompt_embed_dim,
                mlp_dim=c.decoder_mlp_dim,
                num_heads=c.decoder_num_heads,
            ),
            transformer_dim=c.prompt_embed_dim,
            iou_head_depth=c.iou_head_depth,
            iou_head_hidden_dim=c.iou_head_hidden_dim,
        ),
        pixel_mean=list(c.pixel_mean),
        pixel_std=list(c.pixel_std),
    )
    return sam.eval()


def randomize_(model: Any, seed: int, scale: float = 0.02) -> Any:
    """Give every tensor of `model`'s state dict a seeded random value, in place.

    The official initialisation leaves pos_embed and the relative-position tables at zero and
    LayerNorms at identity, which would hide errors in those paths; here LayerNorm weights
    become 1 + N(0, 0.1), biases and zero-initialised tensors N(0, scale), and everything else
    keeps its default distribution re-drawn from `seed`.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("positional_encoding_gaussian_matrix"):
                t.copy_(noise)
            elif t.ndim == 1 and name.endswith("weight"):  # LayerNorm scales
                t.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias") or t.abs().max() == 0:
                t.copy_(scale * noise)
            else:  # weights: same spread as the default init, new draw
                t.copy_(noise * t.std())
    return model
