"""How every learner feeds the frozen SAM from a batch: the query images' embeddings and
mask logits brought back to the query size.

The batch's images are ImageNet-normalised squares (`jaxvrp.data.episodes`); SAM's pixel
normalisation is the same one, so SAM gets them resized (bilinear, align_corners=True, as
official VRP-SAM's `SAM2pred`) to its input size.
"""

import jax

from jaxvrp.image import resize_bilinear
from jaxvrp.sam import model as sam_model
from jaxvrp.sam.config import SamConfig


def image_embeddings(sam_params, images: jax.Array, sam: SamConfig) -> jax.Array:
    """SAM image embeddings (B, h, w, C) of ImageNet-normalised images (B, H, W, 3)."""
    s = sam.image_size
    x = resize_bilinear(images, (s, s), align_corners=True)
    return jax.lax.stop_gradient(sam_model.encode_image(sam_params, x, config=sam))


def query_embeddings(frozen, batch: dict, sam: SamConfig) -> jax.Array:
    """The batch's precomputed `query_embedding`, else computed from `query_image`."""
    emb = batch.get("query_embedding")
    return image_embeddings(frozen["sam"], batch["query_image"], sam) if emb is None else emb


def to_query_size(low_res: jax.Array, batch: dict) -> jax.Array:
    """Mask logits (B, h, w) -> (B, H, W) at the query images' size (bilinear,
    align_corners=True)."""
    size = batch["query_image"].shape[1:3]
    return resize_bilinear(low_res, size, align_corners=True, channels_last=False)


def minmax(x: jax.Array, axes, eps: float = 1e-7) -> jax.Array:
    """(x - min) / (max - min + eps) over `axes` (per image): VRP-SAM's eq. 2 normalisation
    of the pseudo-mask, also used by GP-SAM."""
    lo, hi = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
    return (x - lo) / (hi - lo + eps)
