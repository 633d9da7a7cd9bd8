"""SAM's pre- and post-processing, numerically as the official code does it.

Official sources: `utils/transforms.py` (`ResizeLongestSide`) and `modeling/sam.py`
(`preprocess`, `postprocess_masks`).
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxvrp.image import normalize, resize_bilinear
from jaxvrp.sam.config import SamConfig


class ResizeLongestSide:
    """Resize images so their longest side is `target_length`, and move coordinates along."""

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """Output (h, w); rounds half up like the official `int(x + 0.5)`."""
        scale = long_side_length * 1.0 / max(oldh, oldw)
        newh, neww = oldh * scale, oldw * scale
        return int(newh + 0.5), int(neww + 0.5)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (h, w, 3) uint8, with PIL's bilinear resize.

        The official code goes through torchvision's `resize` on a PIL image, which is PIL's
        `Image.resize(..., BILINEAR)`.
        """
        h, w = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """(..., 2) (x, y) pixel coords in the original image -> in the resized image."""
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = copy.deepcopy(np.asarray(coords)).astype(float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """(..., 4) (x0, y0, x1, y1) boxes -> (B, 4) in the resized image."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)


def preprocess(images: jax.Array, config: SamConfig) -> jax.Array:
    """Resized images (B, h, w, 3) in [0, 255] -> normalised, zero-padded (B, S, S, 3)."""
    x = normalize(images, config.pixel_mean, config.pixel_std)
    s = config.image_size
    h, w = x.shape[-3], x.shape[-2]
    if h > s or w > s:
        raise ValueError(f"image of size {h}x{w} is larger than the model input {s}x{s}")
    return jnp.pad(x, ((0, 0), (0, s - h), (0, s - w), (0, 0)))


def preprocess_padded(padded: jax.Array, size: jax.Array, config: SamConfig) -> jax.Array:
    """`preprocess` of images already zero-padded on the host to (B, S, S, 3), their resized
    (h, w) traced in `size` (2,): normalised, then zero outside the image. Equal to
    `preprocess` of the unpadded images, with one shape for every image size."""
    s = config.image_size
    inside = (jnp.arange(s)[:, None] < size[0]) & (jnp.arange(s)[None, :] < size[1])
    x = normalize(padded, config.pixel_mean, config.pixel_std)
    return jnp.where(inside[None, :, :, None], x, 0.0)


def upsample_to_input(masks: jax.Array, image_size: int) -> jax.Array:
    """Low-res logits (B, M, m, m) -> (B, M, S, S), bilinear (align_corners=False) to the
    padded model input: the first half of `postprocess_masks`."""
    return resize_bilinear(masks, (image_size, image_size), channels_last=False)


def crop_to_original(
    x: jax.Array, input_size: tuple[int, int], original_size: tuple[int, int]
) -> jax.Array:
    """(B, M, S, S) -> (B, M, H, W): crop the padding away, bilinear to the original size (the
    second half of `postprocess_masks`)."""
    x = x[..., : input_size[0], : input_size[1]]
    return resize_bilinear(x, tuple(original_size), channels_last=False)


def postprocess_masks(
    masks: jax.Array,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
) -> jax.Array:
    """Low-res logits (B, M, m, m) -> logits (B, M, H, W) at the original image size.

    Bilinear (align_corners=False) up to the padded model input, crop the padding away, then
    bilinear to the original size, as officially.
    """
    return crop_to_original(upsample_to_input(masks, image_size), input_size, original_size)
