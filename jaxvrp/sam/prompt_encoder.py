"""SAM's prompt encoder (official: modeling/prompt_encoder.py), NHWC.

Which prompt kinds are present (points, boxes, masks) is static, as in the official API
(`None` or an array). Point labels: 1 foreground, 0 background, -1 "not a point" (padding).
A padding point is appended when points come without a box, exactly as officially; callers
that need a fixed number of points per batch pad with label -1, which gives such tokens the
same `not_a_point_embed` the official padding point gets.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvrp.sam.common import Dtype, Embedding, gelu, layer_norm_2d


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of (x, y) in [0, 1]^2 -> (..., 2 * num_pos_feats)."""

    num_pos_feats: int = 64
    scale: float = 1.0

    def setup(self) -> None:
        # A persistent buffer in the official model (never trained): it is part of the
        # checkpoint and must be copied, not re-drawn.
        self.positional_encoding_gaussian_matrix = self.param(
            "positional_encoding_gaussian_matrix",
            nn.initializers.normal(self.scale),
            (2, self.num_pos_feats),
        )

    def _pe_encoding(self, coords: jax.Array) -> jax.Array:
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return jnp.concatenate([jnp.sin(coords), jnp.cos(coords)], axis=-1)

    def __call__(self, size: tuple[int, int]) -> jax.Array:
        """Encoding of the centres of an (h, w) grid: (h, w, C)."""
        h, w = size
        y = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
        x = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
        grid = jnp.stack(jnp.broadcast_arrays(x[None, :], y[:, None]), axis=-1)
        return self._pe_encoding(grid)

    def forward_with_coords(self, coords: jax.Array, image_size: tuple[int, int]) -> jax.Array:
        """Pixel coords (B, N, 2) as (x, y) in an (H, W) image -> (B, N, C)."""
        scale = jnp.array([image_size[1], image_size[0]], jnp.float32)
        return self._pe_encoding(coords.astype(jnp.float32) / scale)


class PromptEncoder(nn.Module):
    """Points, boxes and mask inputs -> sparse (B, N, C) and dense (B, h, w, C) embeddings."""

    embed_dim: int = 256
    image_embedding_size: tuple[int, int] = (64, 64)
    input_image_size: tuple[int, int] = (1024, 1024)
    mask_in_chans: int = 16
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.pe_layer = PositionEmbeddingRandom(self.embed_dim // 2)
        # pos/neg point, then the two box corners
        self.point_embeddings = [Embedding(1, self.embed_dim) for _ in range(4)]
        self.not_a_point_embed = Embedding(1, self.embed_dim)
        self.mask_downscaling_0 = nn.Conv(
            self.mask_in_chans // 4, (2, 2), strides=(2, 2), padding="VALID", dtype=self.dtype
        )
        self.mask_downscaling_1 = layer_norm_2d(self.dtype)
        self.mask_downscaling_3 = nn.Conv(
            self.mask_in_chans, (2, 2), strides=(2, 2), padding="VALID", dtype=self.dtype
        )
        self.mask_downscaling_4 = layer_norm_2d(self.dtype)
        self.mask_downscaling_6 = nn.Conv(self.embed_dim, (1, 1), dtype=self.dtype)
        self.no_mask_embed = Embedding(1, self.embed_dim)

    @property
    def mask_input_size(self) -> tuple[int, int]:
        return (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])

    def get_dense_pe(self) -> jax.Array:
        """Positional encoding of the image embedding grid: (h, w, C)."""
        return self.pe_layer(self.image_embedding_size)

    def _embed_points(self, points: jax.Array, labels: jax.Array, pad: bool) -> jax.Array:
        points = points.astype(jnp.float32) + 0.5  # centre of the pixel
        if pad:
            b = points.shape[0]
            points = jnp.concatenate([points, jnp.zeros((b, 1, 2), points.dtype)], axis=1)
            labels = jnp.concatenate([labels, -jnp.ones((b, 1), labels.dtype)], axis=1)
        pe = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        pe = pe + jnp.where(labels == 0, self.point_embeddings[0]()[0], 0.0)
        pe = pe + jnp.where(labels == 1, self.point_embeddings[1]()[0], 0.0)
        return jnp.where(labels == -1, self.not_a_point_embed()[0], pe)

    def _embed_boxes(self, boxes: jax.Array) -> jax.Array:
        coords = (boxes.astype(jnp.float32) + 0.5).reshape(-1, 2, 2)
        corners = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        corner_embed = jnp.concatenate(
            [self.point_embeddings[2](), self.point_embeddings[3]()], axis=0
        )
        return corners + corner_embed[None]

    def _embed_masks(self, masks: jax.Array) -> jax.Array:
        x = self.mask_downscaling_0(masks.astype(self.dtype))
        x = gelu(self.mask_downscaling_1(x))
        x = self.mask_downscaling_3(x)
        x = gelu(self.mask_downscaling_4(x))
        return self.mask_downscaling_6(x)

    def __call__(
        self,
        points: tuple[jax.Array, jax.Array] | None = None,
        boxes: jax.Array | None = None,
        masks: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Embed prompts.

        Args:
          points: coords (B, N, 2) as (x, y) in input-image pixels, labels (B, N) int.
          boxes: (B, 4) as (x0, y0, x1, y1) in input-image pixels.
          masks: (B, 4h, 4w, 1) mask logits (256 x 256 for the official model).

        Returns:
          sparse (B, N', C) with N' = N (+1 padding point if no box) (+2 with a box), and
          dense (B, h, w, C).
        """
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        sparse = [jnp.zeros((bs, 0, self.embed_dim), jnp.float32)]
        if points is not None:
            coords, labels = points
            sparse.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        sparse = jnp.concatenate(sparse, axis=1)
        if masks is not None:
            if masks.shape[1:] != (*self.mask_input_size, 1):
                raise ValueError(
                    f"mask input must have shape (B, {self.mask_input_size[0]}, "
                    f"{self.mask_input_size[1]}, 1), got {masks.shape}"
                )
            dense = self._embed_masks(masks).astype(jnp.float32)
        else:
            h, w = self.image_embedding_size
            dense = jnp.broadcast_to(
                self.no_mask_embed()[0].reshape(1, 1, 1, -1), (bs, h, w, self.embed_dim)
            )
        return sparse, dense
