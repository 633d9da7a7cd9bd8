"""The record format every few-shot dataset builder writes (TFDS, ArrayRecord, no TensorFlow).

One record per image:

- `image`: the RGB image, stored encoded (JPEG for photographs, PNG for generated images).
- `mask`: (H, W, 1) uint8 class-index map: 0 background, c in 1..num_classes the dataset's
  1-based class id, 255 ignore (PASCAL's object boundaries; otherwise unused).
- `classes`: the sorted class ids present in `mask` (at least one pixel), int32.
- `image_id`: a stable string id (file name stem, COCO id, ...).

TFDS encodes images with TensorFlow unless it is given encoded bytes, so builders pass
`encode_png` / `encode_jpeg` / file bytes (a `BytesIO`), never numpy arrays.
"""

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

IGNORE = 255


def features(image_format: str = "jpeg") -> tfds.features.FeaturesDict:
    """The FeaturesDict of a few-shot record; `image_format` is "jpeg" or "png"."""
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format=image_format),
            "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "classes": tfds.features.Sequence(tfds.features.Scalar(np.int32)),
            "image_id": tfds.features.Text(),
        }
    )


def encode_png(array: np.ndarray) -> io.BytesIO:
    """uint8 (H, W), (H, W, 1) or (H, W, 3) -> PNG bytes as TFDS takes them."""
    array = np.asarray(array, np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]  # a grayscale PNG is TFDS's (H, W, 1) image
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    buf.seek(0)
    return buf


def encode_jpeg(array: np.ndarray, quality: int = 95) -> io.BytesIO:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return buf


def classes_present(mask: np.ndarray) -> list[int]:
    """Sorted class ids with at least one pixel in a class-index mask (0 and 255 excluded)."""
    ids = np.unique(np.asarray(mask))
    return [int(c) for c in ids if c not in (0, IGNORE)]


def record(image, mask: np.ndarray, image_id: str) -> dict:
    """A record from an image (encoded bytes / BytesIO) and its (H, W) class-index mask."""
    mask = np.asarray(mask, np.uint8)
    return {
        "image": image,
        "mask": encode_png(mask),
        "classes": classes_present(mask),
        "image_id": image_id,
    }
