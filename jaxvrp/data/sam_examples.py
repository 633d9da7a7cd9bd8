"""Class-agnostic (image, mask) examples for training SAM itself (`jaxvrp.sam.training`).

Each example is one image with the binary mask of one class present in it, prepared as SAM
takes it: resized so the longest side is SAM's input size (PIL bilinear for the image,
nearest for the mask), normalised with SAM's pixel mean / std and zero-padded to a square.
Pixels labelled 255 (ignore) and the padding are marked in `ignore` only where the label says
so; the padding counts as background, as in SAM's own padded inputs.

Sources (`config.data.source`):

- "procedural": images generated on the fly by `jaxvrp.data.procedural` with
  `config.data.seed` from its "train" stream: an endless supply, no build. The default seed
  (1) differs from the benchmark builds' seed (0), so the SAM never sees the images the
  learners are trained or evaluated on.
- any TFDS build in the shared record format (`pascal5i`, `coco20i`, `fss1000`, `perseg`,
  `procedural_fss`): `config.data.split` of it, built as `jaxvrp.data.datasets` builds them.

Example n depends only on (`config.data.seed`, n): which record (a uniform draw), which of its
classes (a uniform draw). With several hosts, host p of n takes examples p, p + n, ...
Batches: `image` (B, S, S, 3) float32, `mask` (B, S, S) float32, `ignore` (B, S, S) bool.
"""

import grain
import numpy as np
from PIL import Image

from jaxvrp.data import procedural
from jaxvrp.data.episodes import _decode
from jaxvrp.data.schema import IGNORE
from jaxvrp.sam.config import SamConfig
from jaxvrp.sam.transforms import ResizeLongestSide


def prepare(image: np.ndarray, label: np.ndarray, class_id: int, sam: SamConfig):
    """uint8 image (H, W, 3), class map (H, W) -> (image (S, S, 3), mask, ignore) for SAM."""
    s = sam.image_size
    resize = ResizeLongestSide(s)
    img = resize.apply_image(np.asarray(image, np.uint8))
    h, w = img.shape[:2]
    lab = np.asarray(Image.fromarray(np.asarray(label, np.uint8)).resize((w, h), Image.NEAREST))
    x = (img.astype(np.float32) - np.array(sam.pixel_mean, np.float32)) / np.array(
        sam.pixel_std, np.float32
    )
    pad = ((0, s - h), (0, s - w))
    return (
        np.pad(x, (*pad, (0, 0))),
        np.pad(lab == class_id, pad).astype(np.float32),
        np.pad(lab == IGNORE, pad),
    )


def example(source, number: int, data, sam: SamConfig) -> dict[str, np.ndarray]:
    """Example `number` (see the module docstring)."""
    rng = np.random.default_rng([data.seed, number])
    if source is None:
        sample = procedural.generate_image(data.seed, "train", number, data.image_size)
        image, label, classes = sample.image, sample.mask, list(sample.classes)
    else:
        r = source[int(rng.integers(len(source)))]
        image = _decode(r["image"], "RGB")
        label = _decode(r["mask"], "L")
        label = label.reshape(label.shape[:2])
        classes = [int(c) for c in np.asarray(r["classes"]).tolist()]
        if not classes:
            raise ValueError(f"record {r['image_id']!r} has no class to train SAM on")
    c = classes[int(rng.integers(len(classes)))]
    img, mask, ignore = prepare(image, label, c, sam)
    return {"image": img, "mask": mask, "ignore": ignore}


def dataset(
    source, data, sam: SamConfig, *, batch_size: int, process_index: int = 0, process_count: int = 1
) -> grain.IterDataset:
    """Endless checkpointable batches of this host; `source` None = generated procedural."""
    numbers = grain.MapDataset.range(2**62)[process_index::process_count]
    ds = numbers.map(lambda n: example(source, int(n), data, sam))
    return ds.batch(batch_size, drop_remainder=True).to_iter_dataset()
