"""TFDS builders of the few-shot datasets, writing ArrayRecord from the user's local copies.

    from jaxvrp.data.builders import build
    builder = build("pascal5i", manual_dir="~/data/pascal", data_dir="~/tfds")
    train = builder.as_data_source()["train"]   # or tfds.data_source("pascal5i", data_dir=...)
    record = train[0]  # {"image": (H, W, 3) uint8, "mask": (H, W, 1) uint8, "classes", "image_id"}

Every builder writes the record format of `jaxvrp.data.schema`; the expected directory layout
of each dataset is in its module's docstring (and in every layout error). Shared behaviour
(corrupt images skipped and counted, empty masks dropped, record order, metadata) is described
in `jaxvrp.data.builders.common`. Importing this package registers the builders with TFDS
under the names below.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from jaxvrp.data.builders.coco import Coco20i
from jaxvrp.data.builders.common import FewShotBuilder
from jaxvrp.data.builders.fss import Fss1000
from jaxvrp.data.builders.pascal import Pascal5i
from jaxvrp.data.builders.perseg import PerSeg
from jaxvrp.data.builders.procedural import ProceduralFss

# name -> builder class. Builders of generated data (the procedural benchmark) are added here
# too; `build` passes `manual_dir` only to builders that take one.
BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    Pascal5i.name: Pascal5i,
    Coco20i.name: Coco20i,
    Fss1000.name: Fss1000,
    PerSeg.name: PerSeg,
    ProceduralFss.name: ProceduralFss,
}


def build(
    name: str,
    *,
    manual_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike,
    **builder_kwargs,
) -> tfds.core.GeneratorBasedBuilder:
    """Prepares dataset `name` (a key of `BUILDERS`) under `data_dir`; returns its builder.

    `manual_dir` holds the user's copy of the dataset (layout: the builder module's
    docstring); its layout is checked before anything is written. `builder_kwargs` go to the
    builder's constructor (e.g. `config=...`). If the dataset is already prepared under
    `data_dir` it is reused, not rebuilt. Read it with `builder.as_data_source()` or
    `tfds.data_source(name, data_dir=data_dir)`.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(BUILDERS)}")
    cls = BUILDERS[name]
    kwargs: dict = {"file_format": "array_record", **builder_kwargs}
    kwargs["data_dir"] = os.fspath(data_dir)
    download_config = None
    if issubclass(cls, FewShotBuilder):
        if manual_dir is None:
            raise ValueError(f"{name}: manual_dir (your local copy of the dataset) is required")
        kwargs["manual_dir"] = os.fspath(manual_dir)
        download_config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    elif manual_dir is not None:
        download_config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    builder = cls(**kwargs)
    if isinstance(builder, FewShotBuilder) and not builder.is_prepared():
        builder.validate()
    builder.download_and_prepare(download_config=download_config)
    return builder


__all__ = [
    "BUILDERS",
    "Coco20i",
    "FewShotBuilder",
    "Fss1000",
    "Pascal5i",
    "PerSeg",
    "ProceduralFss",
    "build",
]
