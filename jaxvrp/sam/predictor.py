"""`Predictor`: a drop-in for the official `SamPredictor`, on jaxvrp's SAM.

    from jaxvrp.sam import Predictor            # instead of segment_anything.SamPredictor
    predictor = Predictor.from_checkpoint("ckpt/sam_vit_b")
    predictor.set_image(image)                   # (H, W, 3) uint8, RGB
    masks, iou, low_res = predictor.predict(point_coords=..., point_labels=..., box=...)

Same arguments, same semantics and the same numpy outputs as the official class. Beyond it,
`predict_batch` runs many prompt sets on the current image in one call.
"""

import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxvrp.sam import model
from jaxvrp.sam.config import SamConfig
from jaxvrp.sam.transforms import (
    ResizeLongestSide,
    crop_to_original,
    preprocess_padded,
    upsample_to_input,
)

MASK_THRESHOLD = 0.0


# One compiled encoder and one compiled decoder per SAM variant (and prompt shape), whatever
# the image size: the resized image is padded on the host to the model's S x S input and its
# size is a traced argument; only `_to_original` (one resize) compiles per image size.


@partial(jax.jit, static_argnames=("config",))
def _embed(params, padded, size, *, config: SamConfig):
    """`padded` (S, S, 3): the resized image in its top-left corner; `size` (2,) int32 its
    (h, w). Equals `encode_image(preprocess(image))` of the unpadded image: normalised, then
    zero outside the image, as `preprocess` pads."""
    return model.encode_image(params, preprocess_padded(padded[None], size, config), config=config)


@partial(jax.jit, static_argnames=("config", "multimask_output"))
def _decode(params, features, points, labels, boxes, masks, *, config, multimask_output):
    """Low-res logits, IoU predictions, and the logits upsampled to the padded input."""
    low_res, iou = model.predict_masks(
        params,
        features,
        config=config,
        points=points,
        point_labels=labels,
        boxes=boxes,
        masks=masks,
        multimask_output=multimask_output,
    )
    return upsample_to_input(low_res, config.image_size), iou, low_res


@partial(jax.jit, static_argnames=("input_size", "original_size", "return_logits"))
def _to_original(upsampled, *, input_size, original_size, return_logits):
    """The rest of `postprocess_masks`: crop the padding away, bilinear to the original size."""
    out = crop_to_original(upsampled, input_size, original_size)
    return out if return_logits else out > MASK_THRESHOLD


class Predictor:
    """Computes an image embedding once, then masks for any number of prompts."""

    def __init__(self, params: model.Params, config: SamConfig) -> None:
        self.config = config
        self.params = jax.device_put(params)
        self.transform = ResizeLongestSide(config.image_size)
        self.reset_image()

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike, *, dtype: str | None = None):
        """Load a checkpoint written by `python -m conversion.sam` (or `save_params`).

        `dtype="bfloat16"` computes in bf16 with the float32 parameters.
        """
        return cls(*model.load(directory, dtype=dtype))

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute the embedding of an (H, W, 3) uint8 image in `image_format` (RGB or BGR)."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"image must be an (H, W, 3) uint8 array, got shape {image.shape} {image.dtype}"
            )
        if image_format == "BGR":
            image = image[..., ::-1]
        input_image = self.transform.apply_image(np.ascontiguousarray(image))
        self.reset_image()
        self.original_size = (int(image.shape[0]), int(image.shape[1]))
        self.input_size = (int(input_image.shape[0]), int(input_image.shape[1]))
        s = self.config.image_size
        h, w = self.input_size
        if h > s or w > s:  # ResizeLongestSide keeps the longest side at s
            raise ValueError(f"image of size {h}x{w} is larger than the model input {s}x{s}")
        padded = np.zeros((s, s, 3), np.float32)
        padded[:h, :w] = input_image
        size = np.array([h, w], np.int32)
        self.features = _embed(self.params, padded, size, config=self.config)
        self.is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        """The current image's embedding in the official layout (1, C, h, w)."""
        self._require_image()
        return np.asarray(self.features).transpose(0, 3, 1, 2)

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt set, in original-image pixel coordinates.

        Args:
          point_coords: (N, 2) as (x, y); point_labels: (N,) with 1 fg, 0 bg.
          box: (4,) as (x0, y0, x1, y1).
          mask_input: (1, m, m) low-res logits from a previous call (m = 256 officially).
          multimask_output: three masks if True, else one.
          return_logits: return logits instead of boolean masks.

        Returns:
          masks (C, H, W), IoU predictions (C,), low-res logits (C, m, m).
        """
        if point_coords is not None:
            point_coords = self._check(point_coords, (None, 2), "point_coords")[None]
            if point_labels is None:
                raise ValueError("point_labels must be supplied if point_coords is supplied")
            point_labels = self._check(point_labels, (point_coords.shape[1],), "point_labels")
            point_labels = point_labels[None]
        if box is not None:
            box = np.asarray(box)
            if box.size != 4:
                raise ValueError(f"box must have shape (4,), got {box.shape}")
            box = box.reshape(1, 4)
        if mask_input is not None:
            m = self.config.low_res_mask_size
            mask_input = self._check(mask_input, (1, m, m), "mask_input")[None]
        masks, iou, low_res = self.predict_batch(
            point_coords, point_labels, box, mask_input, multimask_output, return_logits
        )
        return masks[0], iou[0], low_res[0]

    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for P prompt sets on the current image, in one call.

        Args:
          point_coords: (P, N, 2) in original-image pixels; point_labels: (P, N). Pad sets
            with fewer points with label -1 (officially a "not a point" token).
          boxes: (P, 4). mask_input: (P, 1, m, m).

        Returns:
          masks (P, C, H, W), IoU predictions (P, C), low-res logits (P, C, m, m).
        """
        self._require_image()
        if point_coords is None and boxes is None and mask_input is None:
            raise ValueError("give at least one of point_coords, boxes, mask_input")
        pts = labels = bxs = msk = None
        if point_coords is not None:
            point_coords = self._check(point_coords, (None, None, 2), "point_coords")
            if point_labels is None:
                raise ValueError("point_labels must be supplied if point_coords is supplied")
            labels = self._check(point_labels, point_coords.shape[:2], "point_labels")
            labels = jnp.asarray(labels, jnp.int32)
            pts = self.transform.apply_coords(point_coords, self.original_size)
            pts = jnp.asarray(pts, jnp.float32)
        if boxes is not None:
            boxes = self._check(boxes, (None, 4), "boxes")
            bxs = jnp.asarray(self.transform.apply_boxes(boxes, self.original_size), jnp.float32)
        if mask_input is not None:
            m = self.config.low_res_mask_size
            mask_input = self._check(mask_input, (None, 1, m, m), "mask_input")
            msk = jnp.asarray(mask_input, jnp.float32).transpose(0, 2, 3, 1)
        sizes = {a.shape[0] for a in (pts, bxs, msk) if a is not None}
        if len(sizes) != 1:
            raise ValueError(f"prompt batches differ in size: {sorted(sizes)}")
        upsampled, iou, low_res = _decode(
            self.params,
            self.features,
            pts,
            labels,
            bxs,
            msk,
            config=self.config,
            multimask_output=bool(multimask_output),
        )
        masks = _to_original(
            upsampled,
            input_size=self.input_size,
            original_size=self.original_size,
            return_logits=bool(return_logits),
        )
        return np.asarray(masks), np.asarray(iou), np.asarray(low_res)

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    @staticmethod
    def _check(a, shape: tuple, name: str) -> np.ndarray:
        a = np.asarray(a)
        if a.ndim != len(shape) or any(
            s is not None and s != d for s, d in zip(shape, a.shape, strict=True)
        ):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {a.shape}")
        return a
