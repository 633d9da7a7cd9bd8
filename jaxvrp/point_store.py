"""SAMIC's "sam_greedy" point prompts, computed once per (record, class) and read by the steps.

The benchmarks' datasets have masks, not SAMBOX points. With `model.point_source =
"sam_greedy"` (`jaxvrp.learners.samic`), a mask's points are the SAMBOX-like greedy points
of the frozen SAM (`mask_points.sam_greedy_points`): tens of SAM decoder calls per mask, so
they are computed once, by the same pass as the SAM embeddings (`python -m jaxvrp.precompute
--config ...`, or `config.data.precompute = True`), for every (record, class) an episode of
the config's plan can draw (the records of each class of the split, the training split's
`data.train_fraction` subset included: `datasets.episode_index`), and stored under
`config.data.feature_cache`:

    DIR/points_<dataset>_<split>_<key hash>/key.json
    DIR/points_<dataset>_<split>_<key hash>/<record>_<class>.npy   # (P, 3): x, y, valid

keyed by the format version, the SAM config and checkpoint id, the episode image size and
mask-resize protocol, the rule's options (P = `max_points`, seed, `multimask_output`, the
greedy options) and the build fingerprint, as `jaxvrp.precompute`'s stores. Each mask is the
record's class mask at the episode size (`episodes.load_example`, as the episodes build
`query_mask` and, for `data.annotation = "mask"`, `support_annotations`); its random
candidates (`greedy_random`) are seeded by `[points_seed, record, class]`, so an entry does
not depend on which host or batch computes it. Hosts split the (record, class) pairs; entries
are written atomically, so an interrupted pass resumes.

`PointReader` adds SAMIC's `support_points`, `support_point_valid` (of `support_records`,
`class_id`) and `query_points`, `query_point_valid` (of `query_record`) to host batches;
`samic.prepare` keeps them.
"""

import sys

import numpy as np

from jaxvrp import precompute
from jaxvrp.learners import mask_points
from jaxvrp.learners.protocol import FrozenSpec

FORMAT_VERSION = 1


def wanted(lconfig) -> bool:
    """Whether a learner config reads its points from this store."""
    return getattr(lconfig, "point_source", "interior") == "sam_greedy"


class PointStore(precompute.FeatureStore):
    """The entries of one (dataset, split, key): `<record>_<class>.npy`, (P, 3) float32."""

    def __init__(self, root, key: dict, max_points: int) -> None:
        super().__init__(root, key, (max_points, 3), prefix="points")

    def path(self, entry):
        record, class_id = entry
        return self.dir / f"{int(record)}_{int(class_id)}.npy"

    def points(self, records, classes) -> tuple[np.ndarray, np.ndarray]:
        """(points (N, P, 2), valid (N, P)) of the (record, class) pairs."""
        values = np.stack([self.get((r, c)) for r, c in zip(records, classes, strict=True)])
        return values[..., :2], values[..., 2] > 0


def points_key(config, lconfig, dataset: str, split: str) -> dict:
    from jaxvrp.data import datasets
    from jaxvrp.learners import samic

    return {
        "format": FORMAT_VERSION,
        "kind": "sam_greedy_points",
        "sam_config": lconfig.sam.to_dict(),
        "sam_checkpoint": precompute.sam_checkpoint_id(config),
        "image_size": int(config.data.image_size),
        "protocol": datasets.protocol(config),
        "max_points": int(lconfig.max_points),
        "seed": int(lconfig.points_seed),
        "multimask_output": bool(lconfig.multimask_output),
        "options": samic.greedy_options(lconfig),
        "storage_dtype": "float32",
        "dataset": dataset,
        "split": split,
        "build": precompute.split_fingerprint(config, dataset, split),
    }


def point_store(config, lconfig, dataset: str, split: str, root=None) -> PointStore:
    root = precompute.store_root(config, root)
    return PointStore(root, points_key(config, lconfig, dataset, split), lconfig.max_points)


def _check_annotation(config) -> None:
    if config.data.annotation != "mask":
        raise ValueError(
            "model.point_source='sam_greedy' stores the points of the records' masks, so the "
            f"references must be masks: config.data.annotation is {config.data.annotation!r}, "
            "not 'mask'"
        )


def pairs(config, which) -> list[tuple[tuple[str, str], object, list[tuple[int, int]]]]:
    """[((dataset, split), source, sorted (record, class) pairs)] that episodes of the plan's
    splits `which` (0 = training, 1 = evaluation) can draw."""
    from jaxvrp.data import datasets

    plan = datasets.plan(config)
    sources: dict[tuple[str, str], object] = {}
    merged: dict[tuple[str, str], set] = {}
    for w in which:
        dataset, split, classes = plan[w]
        if (dataset, split) not in sources:
            sources[dataset, split] = datasets.source(config, dataset, split)
        src = sources[dataset, split]
        index = datasets.episode_index(config, src, train=w == 0)
        found = {(int(r), int(c)) for c in classes for r in index.records.get(c, ())}
        merged.setdefault((dataset, split), set()).update(found)
    return [(ds, sources[ds], sorted(v)) for ds, v in merged.items()]


def precompute_points(
    config,
    lconfig,
    *,
    frozen=None,
    which=(0, 1),
    progress: bool = True,
    process_index: int = 0,
    process_count: int = 1,
) -> dict:
    """Write the missing "sam_greedy" points of `pairs(config, which)`; this host takes
    pairs p, p + n, ... of each split. The SAM encodes each record once for all its classes.
    Returns {"computed", "skipped", "bytes"} of this host's entries."""
    from jaxvrp import frozen as frozen_lib
    from jaxvrp.data import datasets, episodes
    from jaxvrp.learners import samic

    _check_annotation(config)
    todo, stats = [], {"computed": 0, "skipped": 0, "bytes": 0}
    for (dataset, split), src, found in pairs(config, which):
        store = point_store(config, lconfig, dataset, split)
        mine = found[process_index::process_count]
        missing = [e for e in mine if not store.has(e)]
        stats["skipped"] += len(mine) - len(missing)
        stats["bytes"] += len(mine) * store.entry_bytes()
        if process_index == 0:
            print(
                f"precompute: {store.dir}: {len(mine) - len(missing)} of {len(mine)} point "
                f"sets present, {len(missing)} to compute (SAM greedy, "
                f"{len(missing) * store.entry_bytes() / 2**20:.2f} MiB)",
                file=sys.stderr,
            )
        todo += [(store, src, r, c) for r, c in missing]
    if not todo:
        return stats
    if frozen is None:
        frozen = frozen_lib.load(config, FrozenSpec(sam=lconfig.sam))
    predict_of = samic.greedy_predict(frozen["sam"], lconfig)
    size, protocol = int(config.data.image_size), datasets.protocol(config)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="precompute points", unit="mask", file=sys.stderr)
    try:
        predict, encoded = None, None
        for store, src, record, class_id in todo:  # sorted: a record's classes are adjacent
            image, mask, _ = episodes.load_example(src, record, class_id, size, protocol)
            if encoded != (id(src), record):
                predict, encoded = predict_of(image), (id(src), record)
            pts = mask_points.mask_points(
                mask,
                max_points=lconfig.max_points,
                method="sam_greedy",
                image=image,
                sam_predict=lambda _image, p=predict: p,
                seed=[int(lconfig.points_seed), record, class_id],
                **samic.greedy_options(lconfig),
            )
            xy, valid = mask_points.pad_points(pts, lconfig.max_points)
            store.put((record, class_id), np.concatenate([xy, valid[:, None]], axis=1))
            stats["computed"] += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return stats


class PointReader:
    """Adds the stored "sam_greedy" point keys of a split (`which` 0 = training, 1 =
    evaluation) to host batches: `support_points` (B, K, P, 2) and `support_point_valid`
    (B, K, P) of (`support_records`, `class_id`), `query_points` (B, P, 2) and
    `query_point_valid` (B, P) of (`query_record`, `class_id`)."""

    def __init__(self, config, lconfig, which: int) -> None:
        from jaxvrp.data import datasets

        _check_annotation(config)
        dataset, split, _ = datasets.plan(config)[which]
        self.store = point_store(config, lconfig, dataset, split)

    def __call__(self, batch: dict) -> dict:
        for key in ("class_id", "query_record", "support_records"):
            if key not in batch:
                raise KeyError(
                    f"stored SAM-greedy points need batch[{key!r}] (jaxvrp.data.episodes)"
                )
        out = dict(batch)
        classes = np.asarray(batch["class_id"]).reshape(-1)
        refs = np.asarray(batch["support_records"])
        b, k = refs.shape
        p = self.store.shape[0]
        xy, valid = self.store.points(refs.reshape(-1), np.repeat(classes, k))
        out["support_points"] = xy.reshape(b, k, p, 2)
        out["support_point_valid"] = valid.reshape(b, k, p)
        out["query_points"], out["query_point_valid"] = self.store.points(
            np.asarray(batch["query_record"]).reshape(-1), classes
        )
        return out
