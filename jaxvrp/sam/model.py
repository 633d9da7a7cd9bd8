"""SAM as a Linen module and as pure functions of (params, inputs).

The pure functions are the API the rest of jaxvrp uses:

    config = get_config("vit_b")
    params = init(jax.random.key(0), config)
    emb = encode_image(params, images, config=config)           # (B, 64, 64, 256)
    sparse, dense = encode_prompts(params, config=config, points=..., boxes=..., masks=...)
    logits, iou = decode_masks(params, emb, sparse, dense, config=config,
                               multimask_output=True)             # (B, M, 256, 256), (B, M)

`config` is a frozen dataclass, so `jax.jit(partial(encode_image, config=config))` works, and
every function is batched over images without Python loops.
"""

import dataclasses
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvrp import params_io
from jaxvrp.sam.config import SamConfig
from jaxvrp.sam.image_encoder import (
    NECK,
    ImageEncoderViT,
    Neck,
    block_period,
    stack_blocks,
    unstack_blocks,
)
from jaxvrp.sam.mask_decoder import MaskDecoder
from jaxvrp.sam.prompt_encoder import PromptEncoder

Params = dict[str, Any]


class Sam(nn.Module):
    """Image encoder, prompt encoder and mask decoder under the official names."""

    config: SamConfig

    def setup(self) -> None:
        c = self.config
        dtype = jnp.dtype(c.dtype)
        grid = c.embedding_size
        self.image_encoder = ImageEncoderViT(
            img_size=c.image_size,
            patch_size=c.patch_size,
            embed_dim=c.encoder_embed_dim,
            depth=c.encoder_depth,
            num_heads=c.encoder_num_heads,
            mlp_ratio=c.mlp_ratio,
            out_chans=c.prompt_embed_dim,
            window_size=c.window_size,
            global_attn_indexes=tuple(c.encoder_global_attn_indexes),
            dtype=dtype,
            attention=c.attention,
            scan_blocks=c.scan_blocks,
        )
        self.prompt_encoder = PromptEncoder(
            embed_dim=c.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(c.image_size, c.image_size),
            mask_in_chans=c.mask_in_chans,
            dtype=dtype,
        )
        self.mask_decoder = MaskDecoder(
            transformer_dim=c.prompt_embed_dim,
            transformer_depth=c.decoder_depth,
            transformer_mlp_dim=c.decoder_mlp_dim,
            transformer_num_heads=c.decoder_num_heads,
            num_multimask_outputs=c.num_multimask_outputs,
            iou_head_depth=c.iou_head_depth,
            iou_head_hidden_dim=c.iou_head_hidden_dim,
            dtype=dtype,
        )

    def encode_image(self, images: jax.Array) -> jax.Array:
        return self.image_encoder(images).astype(jnp.float32)

    def encode_prompts(self, points, boxes, masks):
        return self.prompt_encoder(points, boxes, masks)

    def decode_masks(
        self,
        image_embeddings,
        sparse,
        dense,
        multimask_output: bool,
        attn_sim=None,
        target_embedding=None,
    ):
        return self.mask_decoder(
            image_embeddings,
            self.prompt_encoder.get_dense_pe(),
            sparse,
            dense,
            multimask_output,
            attn_sim,
            target_embedding,
        )

    def __call__(self, images, points, boxes, masks, multimask_output: bool = True):
        """Everything at once; used to create the parameters."""
        emb = self.encode_image(images)
        self.encode_prompts(points, boxes, None)  # creates no_mask_embed
        sparse, dense = self.encode_prompts(points, boxes, masks)
        return self.decode_masks(emb, sparse, dense, multimask_output)


@partial(jax.jit, static_argnames=("config",))
def init(rng: jax.Array, config: SamConfig) -> Params:
    """Fresh parameters (float32) for `config`; a plain nested dict."""
    s = config.image_size
    m = config.low_res_mask_size
    dummy = (
        jnp.zeros((1, s, s, 3)),
        (jnp.zeros((1, 1, 2)), jnp.ones((1, 1), jnp.int32)),
        jnp.zeros((1, 4)),
        jnp.zeros((1, m, m, 1)),
    )
    return Sam(config).init(rng, *dummy)["params"]


def load(directory: str, *, dtype: str | None = None) -> tuple[Params, SamConfig]:
    """(params, config) from a SAM params checkpoint (e.g. written by `conversion.sam`).

    `dtype` overrides the compute dtype ("float32" or "bfloat16"); params stay float32.
    """
    params, metadata = params_io.load_params(directory, expected_kind="sam")
    config = SamConfig.from_dict(metadata["config"])
    if dtype is not None:
        config = dataclasses.replace(config, dtype=dtype)
    return params, config


def param_shapes(config: SamConfig) -> Params:
    """`jax.ShapeDtypeStruct` tree of the parameters, computed without allocating them."""
    return jax.eval_shape(partial(init, config=config), jax.random.key(0))


def match_block_layout(params: Params, config: SamConfig) -> Params:
    """SAM params with the image encoder's blocks in the layout `config` runs: stacked
    (`image_encoder.stack_blocks`) when `config.scan_blocks`, per block (`blocks_0`, ...,
    as converted checkpoints hold them) otherwise. Unchanged when they already match."""
    enc = params["image_encoder"]
    scanned = "blocks" in enc
    if scanned == config.scan_blocks:
        return params
    depth = config.encoder_depth
    period = block_period(depth, tuple(config.encoder_global_attn_indexes))
    convert = stack_blocks if config.scan_blocks else unstack_blocks
    return {**params, "image_encoder": convert(enc, depth, period)}


def encode_image(params: Params, images: jax.Array, *, config: SamConfig) -> jax.Array:
    """Normalised, padded images (B, S, S, 3) -> image embeddings (B, S/16, S/16, C).

    The encoder's blocks may be in either layout; a mismatch with `config.scan_blocks` is
    converted on every call (`match_block_layout` once beforehand avoids that copy).
    """
    params = match_block_layout(params, config)
    return Sam(config).apply({"params": params}, images, method=Sam.encode_image)


def encode_neck(params: Params, blocks_out: jax.Array, *, config: SamConfig) -> jax.Array:
    """The image embedding (float32) from the encoder's last block output (B, S/16, S/16, D)
    -- the end of `encode_image` (e.g. after the blocks ran as a "sam_<variant>" backbone)."""
    encoder = params["image_encoder"]
    module = Neck(config.prompt_embed_dim, jnp.dtype(config.dtype))
    out = module.apply({"params": {k: encoder[k] for k in NECK}}, blocks_out)
    return out.astype(jnp.float32)


def encode_prompts(
    params: Params,
    *,
    config: SamConfig,
    points: jax.Array | None = None,
    point_labels: jax.Array | None = None,
    boxes: jax.Array | None = None,
    masks: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Prompts in input-frame pixels -> sparse (B, N', C), dense (B, h, w, C).

    points (B, N, 2) with point_labels (B, N); boxes (B, 4); masks (B, 4h, 4w, 1) logits.
    """
    if (points is None) != (point_labels is None):
        raise ValueError("points and point_labels must be given together")
    pts = None if points is None else (points, point_labels)
    return Sam(config).apply({"params": params}, pts, boxes, masks, method=Sam.encode_prompts)


def decode_masks(
    params: Params,
    image_embeddings: jax.Array,
    sparse_embeddings: jax.Array,
    dense_embeddings: jax.Array,
    *,
    config: SamConfig,
    multimask_output: bool,
    attn_sim: jax.Array | None = None,
    target_embedding: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Image b with prompt set b -> low-res logits (B, M, 4h, 4w), IoU predictions (B, M).

    `image_embeddings` may have batch 1 to share one image among all prompt sets.
    PerSAM's decoder options (`docs/persam.md`; None = the official SAM): `attn_sim`
    (B or 1, h, w) target-guided attention, `target_embedding` (B or 1, C) target-semantic
    prompt.
    """
    return Sam(config).apply(
        {"params": params},
        image_embeddings,
        sparse_embeddings,
        dense_embeddings,
        multimask_output,
        attn_sim,
        target_embedding,
        method=Sam.decode_masks,
    )


def predict_masks(
    params: Params,
    image_embeddings: jax.Array,
    *,
    config: SamConfig,
    points: jax.Array | None = None,
    point_labels: jax.Array | None = None,
    boxes: jax.Array | None = None,
    masks: jax.Array | None = None,
    multimask_output: bool = True,
    attn_sim: jax.Array | None = None,
    target_embedding: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """`encode_prompts` followed by `decode_masks` (PerSAM options: see `decode_masks`)."""
    sparse, dense = encode_prompts(
        params, config=config, points=points, point_labels=point_labels, boxes=boxes, masks=masks
    )
    return decode_masks(
        params,
        image_embeddings,
        sparse,
        dense,
        config=config,
        multimask_output=multimask_output,
        attn_sim=attn_sim,
        target_embedding=target_embedding,
    )
