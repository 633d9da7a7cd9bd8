"""SAM's mask decoder (official: modeling/mask_decoder.py), NHWC.

Unlike the official `predict_masks`, which `repeat_interleave`s the image embedding over the
prompt batch (so several images in one call go wrong), this decoder pairs image b with prompt
set b. One image with many prompt sets is the special case of an image batch of 1, which is
broadcast.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvrp.sam.common import MLP, Dtype, Embedding, gelu, layer_norm_2d
from jaxvrp.sam.transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    transformer_dim: int = 256
    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    dtype: Dtype = jnp.float32

    @property
    def num_mask_tokens(self) -> int:
        return self.num_multimask_outputs + 1

    @nn.compact
    def __call__(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        multimask_output: bool,
        attn_sim: jax.Array | None = None,
        target_embedding: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Predict masks.

        Args:
          image_embeddings: (B, h, w, C), or (1, h, w, C) shared by every prompt set.
          image_pe: (h, w, C) positional encoding of the embedding grid.
          sparse_prompt_embeddings: (B, N, C).
          dense_prompt_embeddings: (B, h, w, C).
          multimask_output: masks 1..3 if True, else mask 0.
          attn_sim: PerSAM's target-guided attention, (B or 1, h, w) or (B or 1, h*w),
            added to the softmaxed token->image attention of each two-way block and softmaxed
            again (official per_segment_anything); None = off.
          target_embedding: PerSAM's target-semantic prompt, (B or 1, C), added to the
            tokens with the official aliasing (see `TwoWayTransformer`); None = off.

        Returns:
          low-resolution mask logits (B, M, 4h, 4w) and IoU predictions (B, M), float32.
        """
        dim, dt = self.transformer_dim, self.dtype
        b = sparse_prompt_embeddings.shape[0]
        if image_embeddings.shape[0] not in (1, b):
            raise ValueError(
                f"image_embeddings batch {image_embeddings.shape[0]} does not match the "
                f"prompt batch {b} (must be equal, or 1 to share one image)"
            )
        iou_token = Embedding(1, dim, name="iou_token")()
        mask_tokens = Embedding(self.num_mask_tokens, dim, name="mask_tokens")()
        output_tokens = jnp.concatenate([iou_token, mask_tokens], axis=0)
        output_tokens = jnp.broadcast_to(output_tokens[None], (b, *output_tokens.shape))
        tokens = jnp.concatenate([output_tokens, sparse_prompt_embeddings], axis=1).astype(dt)

        src = (image_embeddings + dense_prompt_embeddings).astype(dt)
        _, h, w, _ = src.shape
        pos_src = image_pe[None].astype(dt)
        hs, src = TwoWayTransformer(
            self.transformer_depth,
            dim,
            self.transformer_num_heads,
            self.transformer_mlp_dim,
            dtype=dt,
            name="transformer",
        )(src, pos_src, tokens, attn_sim, target_embedding)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        src = src.reshape(b, h, w, dim)
        x = nn.ConvTranspose(
            dim // 4,
            (2, 2),
            strides=(2, 2),
            padding="VALID",
            transpose_kernel=True,
            dtype=dt,
            name="output_upscaling_0",
        )(src)
        x = gelu(layer_norm_2d(dt, "output_upscaling_1")(x))
        x = nn.ConvTranspose(
            dim // 8,
            (2, 2),
            strides=(2, 2),
            padding="VALID",
            transpose_kernel=True,
            dtype=dt,
            name="output_upscaling_3",
        )(x)
        upscaled = gelu(x)  # (B, 4h, 4w, C/8)

        hyper_in = jnp.stack(
            [
                MLP(dim, dim // 8, 3, dtype=dt, name=f"output_hypernetworks_mlps_{i}")(
                    mask_tokens_out[:, i, :]
                )
                for i in range(self.num_mask_tokens)
            ],
            axis=1,
        )  # (B, M, C/8)
        masks = jnp.einsum("bmc,byxc->bmyx", hyper_in, upscaled).astype(jnp.float32)
        iou_pred = MLP(
            self.iou_head_hidden_dim,
            self.num_mask_tokens,
            self.iou_head_depth,
            dtype=dt,
            name="iou_prediction_head",
        )(iou_token_out).astype(jnp.float32)

        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou_pred[:, sl]
