"""Precomputed frozen features: `python -m jaxvrp.precompute --config ... [--workdir DIR]`.

Episodes have no augmentation, so the frozen SAM's image embedding of a record is the same at
every step that uses it; the encoder is ~98 % of a VRP-SAM step's compute. This pass writes
the embedding of every record of every split the config's data plan uses (`datasets.plan`:
the training split and the evaluation split) once, and the trainer and evaluator then read
it instead of running the encoder (`config.data.feature_cache = DIR`; with
`config.data.precompute = True` they run this pass first, skipping what is already there).

Store layout (`FeatureStore`): one directory per (dataset, split, key),

    DIR/sam_<dataset>_<split>_<key hash>/key.json     # the key, human-readable
    DIR/sam_<dataset>_<split>_<key hash>/<record>.npy # (h, w, C) embedding of one record

where the key holds everything the embedding depends on: the format version, the SAM
config (architecture and compute dtype / attention options), the sha256 of the SAM
checkpoint's files (or the seed of a random SAM), the episode image size, the storage dtype
and the dataset build's fingerprint (`build_fingerprint`: its `dataset_info.json` files and
its shard files' names and sizes). A changed SAM, dtype or build hashes to another directory,
so stale features are never read; old directories are left for the user to delete.

Entries are written to a per-process unique temporary name and renamed, so a killed pass
leaves no half-written entry and a rerun skips every finished one. Hosts split the records
(process p of n takes records p, p + n, ...), and each host runs the encoder jitted over its
own local devices (the records are independent: no cross-host collective, so hosts may have
different numbers of missing entries after an interruption).

Storage dtype (`config.data.feature_dtype`): "float32", or "bfloat16" when the SAM runs in
bf16 (`model.sam_dtype = "bfloat16"`), where it is exact: the encoder's output is bf16 cast to
float32 (`jaxvrp.sam.model.Sam.encode_image`). A float32 SAM stored in bf16 would change the
results, and is refused.

The backbone's annotation-independent features (the query's stages, the support's stages
before masking) are not precomputed yet: the learners still run their backbone in the step.
"""

import hashlib
import json
import sys

import jax
import numpy as np
from absl import logging

from jaxvrp import paths

FORMAT_VERSION = 1
STORAGE_DTYPES = ("float32", "bfloat16")
_NPY_HEADER = 128  # bytes of a .npy header for these shapes


# ---------------------------------------------------------------- keys


def sha256_of_checkpoint(directory) -> str:
    """sha256 over every file of a checkpoint directory (relative path and bytes, in sorted
    order); a single file hashes its bytes. Hashed once per process and files' state (names,
    sizes, mtimes): a ViT-H checkpoint is 2.5 GB."""
    root = paths.as_path(directory)
    if not root.exists():
        raise FileNotFoundError(f"checkpoint {root} does not exist")
    files = [root] if root.is_file() else paths.files_under(root)
    stats = [f.stat() for f in files]
    state = tuple((str(f), st.length, st.mtime) for f, st in zip(files, stats, strict=True))
    if state not in _SHA_CACHE:
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(root) if f != root else f.name).encode() + b"\0")
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        _SHA_CACHE[state] = h.hexdigest()
    return _SHA_CACHE[state]


_SHA_CACHE: dict = {}


def build_dir(config, dataset: str) -> paths.epath.Path:
    """The TFDS build directory of `dataset` under `config.data.data_dir`."""
    from jaxvrp.data import datasets

    root = paths.as_path(datasets.data_dir(config))
    if dataset == "procedural":
        from jaxvrp.data.builders.procedural import ProceduralFss

        return paths.as_path(
            ProceduralFss(
                config=config.data.procedural_config, data_dir=str(root), file_format="array_record"
            ).data_dir
        )
    return root / datasets.TFDS_NAME[dataset]


def build_fingerprint(directory) -> str:
    """sha256 of a dataset build: the contents of its `dataset_info.json` files and the
    names and sizes of all its files (shards), relative to `directory`."""
    root = paths.as_path(directory)
    files = paths.files_under(root)
    infos = [f for f in files if f.name == "dataset_info.json"]
    if not infos:
        raise FileNotFoundError(f"no dataset_info.json under {root}: not a finished TFDS build")
    h = hashlib.sha256()
    for info in infos:
        h.update(str(info.relative_to(root)).encode() + b"\0" + info.read_bytes())
    for f in files:
        h.update(f"{f.relative_to(root)}\0{f.stat().length}\0".encode())
    return h.hexdigest()


def sam_checkpoint_id(config) -> str:
    """What fixes the frozen SAM's weights: the sha256 of `config.frozen.sam_checkpoint`, or
    the seed of the random SAM `jaxvrp.frozen.load` draws without one."""
    ckpt = config.frozen.sam_checkpoint
    if ckpt:
        return "sha256:" + sha256_of_checkpoint(ckpt)
    return f"random:frozen.seed={int(config.frozen.seed)}"


def storage_dtype(config, sam) -> str:
    """`config.data.feature_dtype`, checked against the SAM's compute dtype."""
    dtype = config.data.get("feature_dtype", "float32")
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"config.data.feature_dtype must be one of {STORAGE_DTYPES}: {dtype!r}")
    if dtype == "bfloat16" and sam.dtype != "bfloat16":
        raise ValueError(
            "config.data.feature_dtype='bfloat16' stores a float32 SAM's embeddings lossily; "
            "use it only with model.sam_dtype='bfloat16' (where it is exact), or 'float32'"
        )
    return dtype


def sam_key(config, sam, dataset: str, split: str) -> dict:
    """The key of the SAM embeddings of (dataset, split) under `config` (see the module
    docstring); `sam` is the learner's `SamConfig`."""
    return {
        "format": FORMAT_VERSION,
        "kind": "sam_image_embedding",
        "sam_config": sam.to_dict(),
        "sam_checkpoint": sam_checkpoint_id(config),
        "image_size": int(config.data.image_size),
        "storage_dtype": storage_dtype(config, sam),
        "dataset": dataset,
        "split": split,
        "build": _fingerprint(config, dataset, split),
    }


def _fingerprint(config, dataset: str, split: str) -> str:
    directory = build_dir(config, dataset)
    built = directory.exists() and any(
        f.name == "dataset_info.json" for f in paths.files_under(directory)
    )
    if not built:
        from jaxvrp.data import datasets

        datasets.source(config, dataset, split)  # builds the procedural one, or says why not
    return build_fingerprint(directory)


# ---------------------------------------------------------------- the store


class FeatureStore:
    """One (dataset, split, key)'s entries: `<record>.npy`, (h, w, C) float32 on read."""

    def __init__(self, root, key: dict, shape: tuple[int, ...]) -> None:
        root = paths.as_path(root)
        if root.exists() and not root.is_dir():
            raise NotADirectoryError(f"feature cache {root} exists and is not a directory")
        key = json.loads(json.dumps(key))  # as key.json reads back (tuples -> lists)
        blob = json.dumps(key, sort_keys=True).encode()
        digest = hashlib.sha256(blob).hexdigest()[:16]
        self.key, self.shape, self.dtype = key, tuple(shape), key["storage_dtype"]
        self.dir = root / f"sam_{key['dataset']}_{key['split']}_{digest}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create the feature cache directory {self.dir}: {e}") from e
        key_file = self.dir / "key.json"
        if key_file.exists():
            if json.loads(key_file.read_text()) != key:  # a 64-bit hash collision
                raise ValueError(f"{key_file} holds another key than this config's")
        else:
            paths.write_atomic(key_file, json.dumps(key, indent=2) + "\n")

    def path(self, record: int) -> paths.epath.Path:
        return self.dir / f"{int(record)}.npy"

    def has(self, record: int) -> bool:
        return self.path(record).exists()

    def entry_bytes(self) -> int:
        itemsize = 2 if self.dtype == "bfloat16" else 4
        return int(np.prod(self.shape)) * itemsize + _NPY_HEADER

    def put(self, record: int, value: np.ndarray) -> None:
        """Write one entry (temp name unique to this process, then rename)."""
        value = np.asarray(value, np.float32)
        if value.shape != self.shape:
            raise ValueError(f"entry {record} has shape {value.shape}, expected {self.shape}")
        if self.dtype == "bfloat16":  # stored as the raw bf16 bits (np.save has no bf16)
            import ml_dtypes

            value = value.astype(ml_dtypes.bfloat16).view(np.uint16)
        paths.save_npy(self.path(record), value)  # temp name unique to this process, renamed

    def get(self, record: int) -> np.ndarray:
        """The (h, w, C) float32 entry; a missing or unreadable one is an error naming it."""
        p = self.path(record)
        if not p.exists():
            raise FileNotFoundError(
                f"no precomputed feature {p}: run `python -m jaxvrp.precompute --config ...` "
                "with this config, or set config.data.precompute=True"
            )
        try:
            value = paths.load_npy(p)
        except Exception as e:  # truncated, not a .npy, ...
            raise ValueError(f"unreadable precomputed feature {p}: {e}; delete it and rerun") from e
        want = np.uint16 if self.dtype == "bfloat16" else np.float32
        if value.shape != self.shape or value.dtype != want:
            raise ValueError(
                f"precomputed feature {p} is {value.dtype}{value.shape}, expected "
                f"{np.dtype(want)}{self.shape}; delete it and rerun"
            )
        if self.dtype == "bfloat16":
            import ml_dtypes

            value = value.view(ml_dtypes.bfloat16)
        return value.astype(np.float32)

    def get_many(self, records) -> np.ndarray:
        """(B, h, w, C) float32 entries of `records`."""
        return np.stack([self.get(int(r)) for r in records])


def embedding_shape(sam) -> tuple[int, int, int]:
    """(h, w, C) of a SAM's image embedding."""
    return (sam.embedding_size, sam.embedding_size, sam.prompt_embed_dim)


def sam_store(config, sam, dataset: str, split: str, root=None) -> FeatureStore:
    """The store of (dataset, split)'s SAM embeddings under `root` (default
    `config.data.feature_cache`)."""
    root = root or config.data.get("feature_cache", "")
    if not root:
        raise ValueError("config.data.feature_cache is empty: no feature store to open")
    return FeatureStore(root, sam_key(config, sam, dataset, split), embedding_shape(sam))


# ---------------------------------------------------------------- the pass


def splits_of(config, which=(0, 1)) -> list[tuple[str, str]]:
    """The (dataset, split) pairs the config's data plan reads: `which` 0 = training,
    1 = evaluation (`datasets.plan`)."""
    from jaxvrp.data import datasets

    out = []
    plan = datasets.plan(config)
    for dataset, split, _ in (plan[i] for i in which):
        if (dataset, split) not in out:
            out.append((dataset, split))
    return out


def _encode(fn, sam_params, images: np.ndarray, sharding) -> np.ndarray:
    """One encoder call on this host's devices: (B, S, S, 3) -> (B, h, w, C) numpy."""
    return np.asarray(fn(sam_params, jax.device_put(images, sharding)))


def precompute(
    config,
    *,
    frozen=None,
    progress: bool = True,
    which=(0, 1),
    per_device_batch: int = 1,
    process_index: int | None = None,
    process_count: int | None = None,
) -> dict:
    """Write the SAM embedding of every record of `splits_of(config, which)` missing from
    `config.data.feature_cache`, `per_device_batch` images per local device and encoder
    call; this host takes records p, p + n, .... Returns
    {"computed", "skipped", "encoder_calls", "bytes"} of this host."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from jaxvrp import frozen as frozen_lib
    from jaxvrp import trainer
    from jaxvrp.data import datasets, episodes
    from jaxvrp.learners import frozen_sam

    learner = trainer.learner_of(config)
    spec = learner.frozen(learner.make_config(**config.model.to_dict()))
    if spec.sam is None:
        logging.info("%s prompts no SAM: no embeddings to precompute", learner.name)
        return {"computed": 0, "skipped": 0, "encoder_calls": 0, "bytes": 0}
    p = jax.process_index() if process_index is None else process_index
    n = jax.process_count() if process_count is None else process_count
    stores, todo = [], []
    for dataset, split in splits_of(config, which):
        store = sam_store(config, spec.sam, dataset, split)
        src = datasets.source(config, dataset, split)
        mine = range(p, len(src), n)
        missing = [r for r in mine if not store.has(r)]
        stores.append((store, src, missing, len(mine)))
        todo += [(store, src, r) for r in missing]
    total_bytes = sum(s.entry_bytes() * len(m) for s, _, m, _ in stores)
    if p == 0 or process_index is not None:
        for store, _, missing, mine in stores:
            print(
                f"precompute: {store.dir}: {mine - len(missing)} of {mine} entries present, "
                f"{len(missing)} to write ({len(missing) * store.entry_bytes() / 2**20:.1f} MiB)",
                file=sys.stderr,
            )
        print(
            f"precompute: writing {len(todo)} SAM embeddings, {total_bytes / 2**30:.3f} GiB "
            f"on disk (this host)",
            file=sys.stderr,
        )
    stats = {"computed": 0, "skipped": sum(m - len(x) for _, _, x, m in stores)}
    stats.update(encoder_calls=0, bytes=total_bytes)
    if not todo:
        return stats
    if frozen is None:
        frozen = frozen_lib.load(config, frozen_lib.FrozenSpec(sam=spec.sam))
    # this host's devices only: records are independent, so hosts need no collective
    mesh = Mesh(np.array(jax.local_devices()), ("data",))
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    sam_params = jax.device_put(frozen["sam"], replicated)
    fn = jax.jit(
        lambda prm, x: frozen_sam.image_embeddings(prm, x, spec.sam),
        in_shardings=(replicated, batch_sharding),
        out_shardings=batch_sharding,
    )
    bsz = per_device_batch * len(jax.local_devices())
    size = int(config.data.image_size)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="precompute", unit="image", file=sys.stderr)
    try:
        for start in range(0, len(todo), bsz):
            chunk = todo[start : start + bsz]
            images = [episodes.load_example(src, r, 0, size)[0] for _, src, r in chunk]
            images += [images[-1]] * (bsz - len(chunk))  # a fixed shape: one compile
            emb = _encode(fn, sam_params, np.stack(images), batch_sharding)
            stats["encoder_calls"] += 1
            for (store, _, r), e in zip(chunk, emb, strict=False):
                store.put(r, e)
                stats["computed"] += 1
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return stats


# ---------------------------------------------------------------- steps read them


class QueryEmbeddings:
    """Host-side lookup of a split's precomputed query embeddings, added to host batches as
    `query_embedding` (B, h, w, C) before they are sharded: the step stays a pure function
    of its inputs (the learners read `query_embedding` when present,
    `jaxvrp.learners.frozen_sam.query_embeddings`), and each host reads only its own
    batch's records."""

    def __init__(self, config, sam, which: int) -> None:
        from jaxvrp.data import datasets

        dataset, split, _ = datasets.plan(config)[which]
        self.store = sam_store(config, sam, dataset, split)

    def __call__(self, batch: dict) -> dict:
        return {**batch, "query_embedding": self.store.get_many(batch["query_record"])}


def reader(config, learner, lconfig, which: int, frozen=None):
    """`QueryEmbeddings` of the config's training (`which` 0) or evaluation (1) split when
    `config.data.feature_cache` is set and the learner prompts a SAM, else None; runs
    `precompute` first when `config.data.precompute` (with the host tree `frozen` if given,
    and a barrier after it: a host reads entries other hosts wrote)."""
    if not config.data.get("feature_cache", ""):
        if config.data.get("precompute", False):
            raise ValueError("config.data.precompute=True needs config.data.feature_cache=DIR")
        return None
    spec = learner.frozen(lconfig)
    if spec.sam is None:
        return None
    if config.data.get("precompute", False):
        precompute(config, frozen=frozen, progress=jax.process_index() == 0, which=(which,))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jaxvrp.precompute")
    return QueryEmbeddings(config, spec.sam, which)


def main(argv) -> None:
    from absl import flags

    del argv
    f = flags.FLAGS
    config = f.config
    if f.workdir and not config.data.get("feature_cache", ""):
        with config.unlocked():
            config.data.feature_cache = str(paths.as_path(f.workdir) / "features")
    if config.distributed:
        from jaxvrp import loop

        loop.initialize_distributed(config)
    which = {"train": (0,), "eval": (1,), "both": (0, 1)}[f.splits]
    stats = precompute(
        config, progress=jax.process_index() == 0, which=which, per_device_batch=f.batch
    )
    print(json.dumps(stats))


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "learner config file", lock_config=True)
    flags.DEFINE_string(
        "workdir", None, "default store root: WORKDIR/features (when data.feature_cache is empty)"
    )
    flags.DEFINE_enum("splits", "both", ["train", "eval", "both"], "which splits of the plan")
    flags.DEFINE_integer("batch", 1, "images per local device and encoder call")
    flags.mark_flags_as_required(["config"])
    app.run(main)
