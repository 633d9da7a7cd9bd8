"""TFDS builder "procedural_fss": the procedural shape × texture few-shot benchmark.

Wraps `jaxvrp.data.procedural` (classes, folds and images are documented there) in the
shared record format (`jaxvrp.data.schema`, PNG images), written as ArrayRecord without
TensorFlow:

    builder = ProceduralFss(config="small", data_dir=tmp, file_format="array_record")
    builder.download_and_prepare()
    train = builder.as_data_source(split="train")  # records: image, mask, classes, image_id

Configs (`BUILDER_CONFIGS`):

- "default": 2000 train / 500 test images of 128×128, seed 0 (the CPU demo); every class
  is in at least 100 train and 25 test images.
- "small": 200 train / 120 test images of 64×64, seed 0 (tests); every class is in at least
  10 train and 6 test images, enough for 5-shot test episodes.

Any other size / seed: pass a `ProceduralFssConfig` instance as `config=` (give it its own
name, since the name is the cache directory). Image i of a split depends only on
(seed, split, i, image_size), so a build is byte-identical whatever `num_workers` (threads,
default 2) and whatever the order; the train and test splits are different random streams.
"""

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import tensorflow_datasets as tfds

from jaxvrp.data import procedural, schema

_CHUNK = 256  # images generated per batch of threads (bounds the records held in memory)


@dataclasses.dataclass
class ProceduralFssConfig(tfds.core.BuilderConfig):
    """Size and seed of a procedural_fss build.

    image_size: side S of the square (S, S, 3) images (>= 32). num_train / num_test: images
    per split (>= 20, so every class is in at least one image of each split). seed: the
    generator seed (>= 0).
    """

    image_size: int = 128
    num_train: int = 2000
    num_test: int = 500
    seed: int = 0

    def __post_init__(self):
        for field, low in (("image_size", 32), ("num_train", 20), ("num_test", 20), ("seed", 0)):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(
                    f"ProceduralFssConfig {self.name!r}: {field} must be an int >= {low} "
                    f"(>= {procedural.NUM_CLASSES} images so that every class appears), "
                    f"got {value!r}"
                )

    def num_images(self, split: str) -> int:
        """Number of images of "train" or "test"."""
        if split not in procedural.SPLIT_IDS:
            raise ValueError(f"unknown split {split!r}; expected one of {('train', 'test')}")
        return self.num_train if split == "train" else self.num_test


class ProceduralFss(tfds.core.GeneratorBasedBuilder):
    """Procedural few-shot segmentation: 20 shape × texture classes, 4 folds of 5."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        ProceduralFssConfig(
            name="default",
            description="2000 train / 500 test images, 128x128, seed 0 (the CPU demo).",
            image_size=128,
            num_train=2000,
            num_test=500,
            seed=0,
        ),
        ProceduralFssConfig(
            name="small",
            description="200 train / 120 test images, 64x64, seed 0 (tests).",
            image_size=64,
            num_train=200,
            num_test=120,
            seed=0,
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def __init__(self, *, num_workers: int = 2, **kwargs):
        """num_workers: threads generating images (the output does not depend on it)."""
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be an int >= 1, got {num_workers!r}")
        self._num_workers = num_workers
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        folds = {
            str(f): {"base": list(b), "novel": list(n)}
            for f in range(procedural.NUM_FOLDS)
            for b, n in [procedural.procedural_classes(f)]
        }
        return self.dataset_info_from_configs(
            description=__doc__.splitlines()[0],
            features=schema.features(image_format="png"),
            metadata=tfds.core.MetadataDict(
                class_names=list(procedural.CLASS_NAMES),  # class_names[c - 1] names class c
                folds=folds,
                image_size=config.image_size,
                seed=config.seed,
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in procedural.SPLIT_IDS}

    def _generate_examples(self, split: str):
        config = self.builder_config
        n = config.num_images(split)

        def make(index: int) -> dict:
            s = procedural.generate_image(config.seed, split, index, config.image_size)
            return schema.record(schema.encode_png(s.image), s.mask, s.image_id)

        with ThreadPoolExecutor(self._num_workers) as pool:
            for start in range(0, n, _CHUNK):
                indices = range(start, min(n, start + _CHUNK))
                yield from zip(indices, pool.map(make, indices), strict=True)
