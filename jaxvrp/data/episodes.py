"""Few-shot episodes read by grain: (K-shot reference set, target) pairs of one class.

    source = open_source("pascal5i", "train", data_dir)      # TFDS ArrayRecord, no TensorFlow
    index = ClassIndex.build(source)                          # class -> records, from `classes`
    base, novel = folds.pascal_classes(0)
    train = episode_dataset(source, index, base, config=cfg, train=True, batch_size=8)
    it = iter(train)                                          # checkpointable: it.get_state()

Episodes are a deterministic function of (seed, episode number): the class, the target and
the K references are drawn with `np.random.default_rng([seed, number])` from the records of
that class sorted by `image_id` — so the physical record order of a build does not matter,
and the evaluation list (`num_eval_episodes`, 1000 by default, classes taken round-robin over
the fold's novel classes) is identical on every machine and run. Training episodes number
0, 1, 2, ... without end; with several hosts, host p of n takes the numbers p, p + n, ...,
so hosts never repeat each other's episodes and the global stream does not depend on n.

Under `protocol="hsnet"` the evaluation episodes are instead HSNet's own test episodes
(`jaxvrp.data.hsnet`: its split lists and its `np.random` draw sequence, seeded 0), passed to
`episode_dataset` as a fixed list; training episodes stay as above.

Each episode is resized to `image_size` square (aspect not kept, as VRP-SAM; bilinear for
images, nearest for masks: PIL's, or PyTorch's `F.interpolate` index rule under "hsnet", as
HSNet resizes them), ImageNet-normalised, and its references annotated by
`jaxvrp.data.annotations` with per-episode seeds. A batch is a dict of fixed-shape numpy
arrays:

- `query_image` (B, S, S, 3) float32, `query_mask` (B, S, S) float32 (1 = the class),
  `query_ignore` (B, S, S) bool (label 255),
- `support_images` (B, K, S, S, 3) float32, `support_masks` (B, K, S, S) float32 (the full
  masks), `support_annotations` (B, K, S, S) float32 (the simulated annotations),
- `class_id` (B,) int32, `episode` (B,) int64, `query_record` (B,) int64 (the target's
  record index, e.g. to cache its SAM embedding), `support_records` (B, K) int64 (the
  references' record indices, e.g. to read their precomputed backbone stages).
"""

import dataclasses
import io
import math
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags
from etils import epath
from PIL import Image

from jaxvrp.data import annotations, hsnet, perseg
from jaxvrp.data.schema import IGNORE
from jaxvrp.image import normalized_image, resized_mask

PROTOCOLS = ("jaxvrp", hsnet.PROTOCOL, perseg.PROTOCOL)
_NO_IMAGES = {"image": tfds.decode.SkipDecoding(), "mask": tfds.decode.SkipDecoding()}


@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
    shots: int = 1
    image_size: int = 512  # VRP-SAM
    annotation: str = "mask"  # "point", "box", "scribble" or "mask"
    seed: int = 0
    num_eval_episodes: int = 1000  # per fold (VRP-SAM, HSNet)
    protocol: str = "jaxvrp"  # or "hsnet": masks resized as HSNet does (see the docstring)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.annotation not in annotations.ANNOTATION_TYPES:
            raise ValueError(
                f"annotation must be one of {annotations.ANNOTATION_TYPES}, got {self.annotation!r}"
            )
        if self.shots < 1:
            raise ValueError(f"shots must be >= 1, got {self.shots}")


def is_built(name: str, data_dir: str) -> bool:
    """Whether `data_dir` holds a finished TFDS build of `name` (its `dataset_info.json`,
    which TFDS writes last, at `name/version/` or `name/config/version/`). `data_dir` may be
    remote (`gs://...`; epath refuses `**` globs there, hence the two depths)."""
    root = epath.Path(data_dir) / name
    found = lambda pattern: any(root.glob(pattern))
    return root.is_dir() and (found("*/dataset_info.json") or found("*/*/dataset_info.json"))


def open_source(name: str, split: str, data_dir: str, *, images: bool = True) -> Any:
    """A random-access TFDS ArrayRecord source of a built dataset (no TensorFlow).

    A missing build is a `FileNotFoundError` saying so; any other error (an unknown split, a
    corrupt build, a TFDS bug) surfaces as itself."""
    if not is_built(name, data_dir):
        raise FileNotFoundError(f"dataset {name!r} is not built under {data_dir}")
    return tfds.data_source(
        name, split=split, data_dir=data_dir, decoders=None if images else _NO_IMAGES
    )


@dataclasses.dataclass(frozen=True)
class ClassIndex:
    """For every class, its records' indices sorted by `image_id`; `ids` maps each
    `image_id` to its record (the first, should a build repeat one)."""

    records: dict[int, np.ndarray]
    ids: dict[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def build(cls, source: Any) -> "ClassIndex":
        """Read `classes` and `image_id` of every record (images are not decoded)."""
        by_class: dict[int, list[tuple[str, int]]] = {}
        ids: dict[str, int] = {}
        for i in range(len(source)):
            r = source[i]
            image_id = r["image_id"]
            image_id = image_id.decode() if isinstance(image_id, bytes) else str(image_id)
            ids.setdefault(image_id, i)
            for c in np.asarray(r["classes"]).tolist():
                by_class.setdefault(int(c), []).append((image_id, i))
        return cls({c: np.array([i for _, i in sorted(v)]) for c, v in by_class.items()}, ids)

    def subset(self, fraction: float, seed: int, minimum: int) -> "ClassIndex":
        """Each class keeps ceil(fraction x its records), at least `minimum` (or all it has):
        a seeded draw (`default_rng([seed, class])`, independent of the other classes), kept
        in `image_id` order. `fraction` 1 is this index itself (e.g. SAMIC trains on 20 %
        of each class's data, paper §4.2)."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"data.train_fraction must be in (0, 1], got {fraction}")
        if fraction == 1.0:
            return self
        records = {}
        for c, r in self.records.items():
            n = min(len(r), max(minimum, math.ceil(fraction * len(r))))
            keep = np.random.default_rng([seed, c]).choice(len(r), size=n, replace=False)
            records[c] = r[np.sort(keep)]
        return dataclasses.replace(self, records=records)

    def usable(self, classes, shots: int) -> list[int]:
        """The given classes that have at least shots + 1 records (sorted)."""
        return sorted(c for c in classes if len(self.records.get(c, ())) > shots)


def draw_episode(
    number: int, classes: list[int], index: ClassIndex, config: EpisodeConfig, *, round_robin: bool
) -> tuple[int, int, np.ndarray]:
    """(class, target record, K reference records) of episode `number`."""
    rng = np.random.default_rng([config.seed, number])
    c = classes[number % len(classes)] if round_robin else classes[rng.integers(len(classes))]
    records = index.records[c]
    picks = rng.choice(len(records), size=config.shots + 1, replace=False)
    return c, int(records[picks[0]]), records[picks[1:]]


def _decode(value: Any, mode: str) -> np.ndarray:
    if isinstance(value, bytes):
        value = np.asarray(Image.open(io.BytesIO(value)).convert(mode))
    return np.asarray(value)


def load_example(source: Any, record: int, class_id: int, size: int, protocol: str = "jaxvrp"):
    """(normalised image (S, S, 3), binary mask (S, S), ignore (S, S)) of one record; masks
    resized with PIL's nearest, or PyTorch's under protocol "hsnet" (as HSNet)."""
    r = source[record]
    image = normalized_image(_decode(r["image"], "RGB"), size)
    mask = _decode(r["mask"], "L")
    resize = hsnet.resized_mask if protocol == hsnet.PROTOCOL else resized_mask
    mask = resize(mask.reshape(mask.shape[:2]), size)
    return image, (mask == class_id).astype(np.float32), mask == IGNORE


def make_episode(
    source: Any,
    number: int,
    classes: list[int],
    index: ClassIndex,
    config: EpisodeConfig,
    *,
    train: bool,
    drawn: tuple[int, int, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Episode `number` as fixed-shape arrays (see the module docstring); `drawn` = its
    (class, target record, reference records) from a fixed list instead of `draw_episode`."""
    if drawn is None:
        drawn = draw_episode(number, classes, index, config, round_robin=not train)
    c, query, refs = drawn
    s, protocol = config.image_size, config.protocol
    q_img, q_mask, q_ignore = load_example(source, query, c, s, protocol)
    s_imgs, s_masks, s_anns = [], [], []
    for shot, ref in enumerate(refs):
        img, mask, _ = load_example(source, int(ref), c, s, protocol)
        ann = annotations.simulate_annotation(
            mask,
            config.annotation,
            seed=np.random.default_rng([config.seed, number, shot, 1]),
            training=train,
        )
        s_imgs.append(img)
        s_masks.append(mask)
        s_anns.append(ann)
    return {
        "query_image": q_img,
        "query_mask": q_mask,
        "query_ignore": q_ignore,
        "support_images": np.stack(s_imgs),
        "support_masks": np.stack(s_masks),
        "support_annotations": np.stack(s_anns).astype(np.float32),
        "class_id": np.int32(c),
        "episode": np.int64(number),
        "query_record": np.int64(query),
        "support_records": np.asarray(refs, np.int64).reshape(len(refs)),
    }


def episode_dataset(
    source: Any,
    index: ClassIndex,
    classes,
    *,
    config: EpisodeConfig,
    train: bool,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
    fixed: list[tuple[int, int, np.ndarray]] | None = None,
) -> grain.IterDataset:
    """Batched episodes of `classes` (a fold's base classes to train, novel to evaluate).

    Training: endless, episodes p, p + n, ... on host p of n. Evaluation: the fixed first
    `config.num_eval_episodes` episodes, split between hosts the same way; the last batch
    is padded by repeating episodes, with `valid` (B,) bool marking the real ones. `fixed`
    (evaluation only): the episodes as a list of (class, target record, reference records),
    e.g. HSNet's (`jaxvrp.data.hsnet.resolve`), instead of drawing them.
    `num_workers` > 0 decodes in that many processes. Iterators are checkpointable
    (`get_state` / `set_state`).
    """
    if fixed is not None and train:
        raise ValueError("a fixed episode list is for evaluation (train=False) only")
    usable = index.usable(classes, config.shots)
    # A fixed list names its own images (HSNet's may repeat a reference): no record counts.
    missing = [] if fixed is not None else sorted(set(classes) - set(usable))
    if fixed is None and not usable:
        raise ValueError(
            f"no class of {sorted(classes)} has {config.shots + 1} records in this source"
        )
    if missing:
        raise ValueError(
            f"classes {missing} have fewer than {config.shots + 1} records (shots + 1) in this "
            "source; remove them from the episode classes or use fewer shots"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    total = 2**62 if train else config.num_eval_episodes if fixed is None else len(fixed)
    numbers = grain.MapDataset.range(total)[process_index::process_count]
    if not train:
        real = numbers
        padded = -(-len(real) // batch_size) * batch_size
        numbers = grain.MapDataset.range(padded).map(
            lambda j: (real[min(j, len(real) - 1)], j < len(real))
        )
    else:
        numbers = numbers.map(lambda n: (n, True))

    def build(item):
        number, valid = item
        drawn = None if fixed is None else fixed[int(number)]
        ep = make_episode(source, int(number), usable, index, config, train=train, drawn=drawn)
        ep["valid"] = np.bool_(valid)
        return ep

    ds = numbers.map(build).batch(batch_size, drop_remainder=True)
    it = ds.to_iter_dataset()
    if num_workers > 0:
        if not flags.FLAGS.is_parsed():
            # grain's worker processes read absl flags; outside `app.run` use their defaults
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (so the module imports freely)."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "learner config file", lock_config=True)
    flags.DEFINE_bool("list", False, "write the evaluation episode list as JSON lines")
    flags.DEFINE_string("out", None, "file to write (default: standard output)")


def main(argv) -> None:
    """`python -m jaxvrp.data.episodes --config CONFIG --list [--out FILE]`: the config's
    evaluation episodes, one JSON object per line: {"episode", "query", "supports",
    "class"} (image ids and jaxvrp's class id; under "hsnet" also "hsnet_class")."""
    import json
    import sys

    from jaxvrp import paths
    from jaxvrp.data import datasets

    del argv
    f = flags.FLAGS
    if not f.list:
        raise app.UsageError("nothing to do: pass --list")
    rows = datasets.eval_episode_list(f.config)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if f.out is None:
        sys.stdout.write(text)
        return
    paths.write_atomic(f.out, text)  # never a half-written list


if __name__ == "__main__":
    _define_flags()
    flags.mark_flags_as_required(["config"])
    app.run(main)
