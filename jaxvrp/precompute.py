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

Backbone stages (`config.data.backbone_features = True`, opt-in: they are large): the frozen
backbone's annotation-independent features, the stages a learner declares as
`Learner.backbone_stages`. For the learners on `vrp.shot_features` (VRP-SAM, ProSAM,
GP-SAM): the query's layer2, layer3, layer4 and each reference's layer2, layer3 (its layer4
runs on the annotation-masked layer3, so it stays in the step), plus a DINOv2's
`layer3_prefix` class / register tokens, which its layer4 continues from. For HSNet and
SAMIC (`hsnet.precomputable_stages`): every map its hypercorrelation reads, for the query
and the references alike (a ResNet's bottlenecks, a VGG's convs, or a SAM encoder's
layer1-4, pooled to HSNet's pyramid in the step; the references are masked in the step,
after the backbone, so their stages are annotation-independent too). The query's and a
reference's stages of a record are the same arrays, so each record stores each stage once,
one store per stage:

    DIR/backbone_<stage>_<dataset>_<split>_<key hash>/<record>.npy   # (h, w, C)

keyed by the format version, the backbone config (architecture, dtype), what fixes its
weights (the sha256 of `config.frozen.backbone_checkpoint`, the seed of a random backbone,
or the SAM's checkpoint id for a `sam_<variant>` backbone, which takes the SAM's encoder
weights), the episode image size and the backbone's input size (`vrp.backbone_input`), the
storage dtype ("bfloat16" only for a bf16 backbone) and the build fingerprint. Size: ResNet-50
dilated at 512 px has layer2 512 + layer3 1024 + layer4 2048 channels at 64 x 64, 59 MB
(56 MiB) per record in float32, 14x the ViT-H SAM embedding. The same pass writes them
(after the SAM embeddings, printing both sizes first; resumable and split over hosts the
same way; with a `sam_<variant>` backbone, the SAM's own encoder, one encoder pass gives a
record's stages and, through the SAM's neck on the last block, its embedding);
`QueryEmbeddings` adds `query_features/<stage>` (B, h, w, C) of `query_record`
and `support_features/<stage>` (B, K, h, w, C) of the episodes' `support_records` to the
host batch. Learners that declare no stages (Matcher) or read no backbone are refused with
an error naming them (`backbone_stages`).
"""

import hashlib
import json
import sys

import jax
import numpy as np
from absl import logging

from jaxvrp import paths
from jaxvrp.learners.protocol import FrozenSpec
from jaxvrp.sam import model as sam_model

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
        "build": split_fingerprint(config, dataset, split),
    }


def split_fingerprint(config, dataset: str, split: str) -> str:
    """The build fingerprint of the dataset (dataset, split) is read from, building the
    procedural one first if needed."""
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
    """One (dataset, split, key)'s entries: `<record>.npy`, (h, w, C) float32 on read, in
    the directory `<prefix>_<dataset>_<split>_<key hash>` ("sam" for SAM embeddings,
    "backbone_<stage>" for a backbone stage)."""

    def __init__(self, root, key: dict, shape: tuple[int, ...], prefix: str = "sam") -> None:
        root = paths.as_path(root)
        if root.exists() and not root.is_dir():
            raise NotADirectoryError(f"feature cache {root} exists and is not a directory")
        key = json.loads(json.dumps(key))  # as key.json reads back (tuples -> lists)
        blob = json.dumps(key, sort_keys=True).encode()
        digest = hashlib.sha256(blob).hexdigest()[:16]
        self.key, self.shape, self.dtype = key, tuple(shape), key["storage_dtype"]
        self.dir = root / f"{prefix}_{key['dataset']}_{key['split']}_{digest}"
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


def store_root(config, root=None):
    """`root`, else `config.data.feature_cache`; neither is an error."""
    root = root or config.data.get("feature_cache", "")
    if not root:
        raise ValueError("config.data.feature_cache is empty: no feature store to open")
    return root


def sam_store(config, sam, dataset: str, split: str, root=None) -> FeatureStore:
    """The store of (dataset, split)'s SAM embeddings under `root` (default
    `config.data.feature_cache`)."""
    root = store_root(config, root)
    return FeatureStore(root, sam_key(config, sam, dataset, split), embedding_shape(sam))


# ---------------------------------------------------------------- backbone stages


def backbone_checkpoint_id(config, spec) -> str:
    """What fixes the frozen backbone's weights: the SAM's (`sam_checkpoint_id`) for a
    `sam_<variant>` backbone, which takes the SAM's encoder weights (`jaxvrp.frozen`); else
    the sha256 of `config.frozen.backbone_checkpoint`, or the seed of the random backbone."""
    if spec.backbone_is_sam_encoder:
        return "sam_encoder:" + sam_checkpoint_id(config)
    ckpt = config.frozen.backbone_checkpoint
    if ckpt:
        return "sha256:" + sha256_of_checkpoint(ckpt)
    return f"random:frozen.seed={int(config.frozen.seed)}"


def backbone_storage_dtype(config, bb) -> str:
    """`config.data.feature_dtype` for backbone stages: "bfloat16" only for a backbone that
    computes in bf16 (exact), as for the SAM."""
    dtype = config.data.get("feature_dtype", "float32")
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"config.data.feature_dtype must be one of {STORAGE_DTYPES}: {dtype!r}")
    if dtype == "bfloat16" and getattr(bb, "dtype", "float32") != "bfloat16":
        raise ValueError(
            "config.data.feature_dtype='bfloat16' with config.data.backbone_features=True "
            f"would store a {getattr(bb, 'dtype', 'float32')} backbone's stages lossily; use "
            "feature_dtype='float32' (exact for both the SAM embedding and the stages)"
        )
    return dtype


def _backbone_input_size(bb, image_size: int) -> list[int]:
    from jaxvrp.learners import vrp

    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
    return list(jax.eval_shape(lambda i: vrp.backbone_input_of(i, bb), x).shape[1:3])


def backbone_shapes(bb, image_size: int, stages) -> dict[str, tuple[int, ...]]:
    """{stage: per-record shape} of `stages` of backbone config `bb` on an episode image of
    `image_size` (nothing computed)."""
    from jaxvrp import backbones
    from jaxvrp.learners import vrp

    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
    out = jax.eval_shape(
        lambda p, i: backbones.apply(p, vrp.backbone_input_of(i, bb), config=bb),
        backbones.param_shapes(bb),
        x,
    )
    return {s: tuple(out[s].shape[1:]) for s in stages}


def backbone_key(config, spec, stage: str, dataset: str, split: str) -> dict:
    """The key of backbone stage `stage` of (dataset, split) under `config`; `spec` is the
    learner's `FrozenSpec` (its backbone config; the SAM's, for a `sam_<variant>`)."""
    from jaxvrp import backbones

    bb = spec.backbone
    size = int(config.data.image_size)
    return {
        "format": FORMAT_VERSION,
        "kind": "backbone_stage",
        "stage": stage,
        "backbone_config": backbones.config_to_dict(bb),
        "backbone_checkpoint": backbone_checkpoint_id(config, spec),
        "image_size": size,
        "backbone_input": _backbone_input_size(bb, size),
        "storage_dtype": backbone_storage_dtype(config, bb),
        "dataset": dataset,
        "split": split,
        "build": split_fingerprint(config, dataset, split),
    }


def backbone_stores(config, spec, stages, dataset: str, split: str, root=None) -> dict:
    """{stage: FeatureStore} of (dataset, split)'s backbone `stages` under `root` (default
    `config.data.feature_cache`), one directory `backbone_<stage>_<dataset>_<split>_<hash>`
    per stage."""
    root = store_root(config, root)
    shapes = backbone_shapes(spec.backbone, int(config.data.image_size), stages)
    return {
        s: FeatureStore(
            root, backbone_key(config, spec, s, dataset, split), shapes[s], f"backbone_{s}"
        )
        for s in stages
    }


def serves_backbone_stages(learner, lconfig) -> bool:
    """Whether `data.backbone_features` can serve `learner` (with `lconfig`) its frozen
    backbone's stages: it reads a backbone and declares `Learner.backbone_stages`
    (`backbone_stages` refuses the others)."""
    return learner.frozen(lconfig).backbone is not None and learner.backbone_stages is not None


def backbone_stages(config, learner, lconfig) -> dict[str, tuple[str, ...]] | None:
    """{"query": stages, "support": stages} of the frozen backbone to precompute and serve
    for `learner` when `config.data.backbone_features`, else None: its
    `Learner.backbone_stages` (VRP-SAM, ProSAM and GP-SAM: `vrp.precomputable_stages`;
    HSNet and SAMIC: `hsnet.precomputable_stages`). A learner without them (Matcher, or one
    reading no backbone: PerSAM etc.) is refused, naming it."""
    if not config.data.get("backbone_features", False):
        return None
    if not config.data.get("feature_cache", ""):
        raise ValueError("config.data.backbone_features=True needs config.data.feature_cache=DIR")
    if not serves_backbone_stages(learner, lconfig):
        raise ValueError(
            f"config.data.backbone_features=True: learner {learner.name!r} reads no "
            "precomputed backbone stages (served: the learners that declare "
            "Learner.backbone_stages, e.g. vrp_sam, prosam, gp_sam, hsnet, samic); set "
            "data.backbone_features=False"
        )
    stages = learner.backbone_stages(lconfig)
    return {"query": tuple(stages["query"]), "support": tuple(stages["support"])}


def backbone_feature_shapes(config, learner, lconfig) -> dict[str, tuple[int, ...]]:
    """{batch key: per-example shape} of the stages `QueryEmbeddings` adds: (h, w, C) for
    `query_features/<stage>`, (K, h, w, C) for `support_features/<stage>`; {} when
    `config.data.backbone_features` is off."""
    stages = backbone_stages(config, learner, lconfig)
    if stages is None:
        return {}
    bb = learner.frozen(lconfig).backbone
    shapes = backbone_shapes(bb, int(config.data.image_size), _all(stages))
    k = int(config.data.shots)
    out = {f"query_features/{s}": shapes[s] for s in stages["query"]}
    out.update({f"support_features/{s}": (k, *shapes[s]) for s in stages["support"]})
    return out


def _all(stages: dict) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*stages["query"], *stages["support"])))


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


def _encode(fn, params, images: np.ndarray, sharding):
    """One encoder call on this host's devices: (B, S, S, 3) -> (B, ...) numpy (a dict of
    them for the backbone's stages)."""
    return jax.tree.map(np.asarray, fn(params, jax.device_put(images, sharding)))


def _plan(stores_by_split, p: int, n: int, config) -> tuple[list, list]:
    """[(stores, src, missing, mine, lacking)] per split and the flat todo
    [(stores, src, record)]: this host's records missing from any of a split's stores
    ({name: FeatureStore}), each with only the stores that lack it (an entry another
    learner's pass already wrote is not written again); `lacking` {name: how many of this
    host's records that store lacks}."""
    from jaxvrp.data import datasets

    splits, todo = [], []
    for (dataset, split), stores in stores_by_split:
        src = datasets.source(config, dataset, split)
        mine = range(p, len(src), n)
        lacking = {name: 0 for name in stores}
        missing = []
        for r in mine:
            need = {name: st for name, st in stores.items() if not st.has(r)}
            for name in need:
                lacking[name] += 1
            if need:
                missing.append(r)
                todo.append((need, src, r))
        splits.append((stores, src, missing, len(mine), lacking))
    return splits, todo


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
    """Write the SAM embedding (and, with `config.data.backbone_features`, the backbone's
    stages, `backbone_stages`; for a learner with `point_source="sam_greedy"`, its points,
    `jaxvrp.point_store`) of every record of `splits_of(config, which)` missing from
    `config.data.feature_cache`, `per_device_batch` images per local device and encoder
    call; this host takes records p, p + n, .... Returns {"computed", "skipped",
    "encoder_calls", "bytes"} of this host's SAM embeddings, plus "backbone": the same of
    its backbone stage sets (a record's stages count once) when they are on, and "points":
    `point_store.precompute_points`'s when the learner reads stored points."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from jaxvrp import frozen as frozen_lib
    from jaxvrp import point_store, trainer
    from jaxvrp.learners import frozen_sam, vrp

    learner = trainer.learner_of(config)
    lconfig = learner.make_config(**config.model.to_dict())
    spec = learner.frozen(lconfig)
    stages = backbone_stages(config, learner, lconfig)
    p = jax.process_index() if process_index is None else process_index
    n = jax.process_count() if process_count is None else process_count
    jobs = []  # (name, what, splits, todo, params key, fn)
    if spec.sam is None:
        logging.info("%s prompts no SAM: no embeddings to precompute", learner.name)
    else:
        by_split = [
            (ds, {"sam": sam_store(config, spec.sam, *ds)}) for ds in splits_of(config, which)
        ]
        fn = lambda prm, x: {"sam": frozen_sam.image_embeddings(prm["sam"], x, spec.sam)}
        jobs.append(("sam", "SAM embeddings", *_plan(by_split, p, n, config), fn))
    if stages is not None:
        names = _all(stages)
        by_split = [
            (ds, backbone_stores(config, spec, names, *ds)) for ds in splits_of(config, which)
        ]
        fn = lambda prm, x: vrp.stored_stages(prm["backbone"], x, spec.backbone, names)
        what = f"backbone stage sets ({', '.join(names)})"
        jobs.append(("backbone", what, *_plan(by_split, p, n, config), fn))
    if p == 0 or process_index is not None:  # every size before anything is computed
        for _, what, splits, todo, _ in jobs:
            for stores, _, _, mine, lacking in splits:
                for name, store in stores.items():
                    print(
                        f"precompute: {store.dir}: {mine - lacking[name]} of {mine} entries "
                        f"present, {lacking[name]} to write "
                        f"({lacking[name] * store.entry_bytes() / 2**20:.1f} MiB)",
                        file=sys.stderr,
                    )
            total = sum(_bytes(stores) for stores, _, _ in todo)
            print(
                f"precompute: writing {len(todo)} {what}, {total / 2**30:.3f} GiB on disk "
                "(this host)",
                file=sys.stderr,
            )
    out = {}
    for name, _, splits, _, _ in jobs:
        out[name] = {"computed": 0, "skipped": sum(m - len(x) for _, _, x, m, _ in splits)}
        out[name].update(encoder_calls=0, bytes=sum(_bytes(stores) for stores, _, _ in todo))
    both = []  # records missing from both the SAM and the backbone stores of a shared encoder
    if len(jobs) == 2 and vrp.same_encoder(spec.backbone, spec.sam):
        both, sam_todo, bb_todo = _shared_records(jobs[0][3], jobs[1][3])
        jobs = [(*jobs[0][:3], sam_todo, jobs[0][4]), (*jobs[1][:3], bb_todo, jobs[1][4])]
        if both and (p == 0 or process_index is not None):
            print(
                f"precompute: {len(both)} records get their SAM embedding and backbone stages "
                "from one encoder pass (the backbone is the SAM's encoder)",
                file=sys.stderr,
            )
    if both or any(todo for _, _, _, todo, _ in jobs):
        if frozen is None:
            frozen = frozen_lib.load(config, spec if stages is not None else FrozenSpec(spec.sam))
        # this host's devices only: records are independent, so hosts need no collective
        mesh = Mesh(np.array(jax.local_devices()), ("data",))
        batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
        replicated = NamedSharding(mesh, PartitionSpec())
        if both:
            names = _all(stages)
            neck = {k: frozen["sam"]["image_encoder"][k] for k in sam_model.NECK}
            shared = {"computed": 0, "encoder_calls": 0}
            _run(
                config,
                jax.jit(
                    lambda prm, x: _shared_pass(prm, x, spec, names),
                    in_shardings=(replicated, batch_sharding),
                    out_shardings=batch_sharding,
                ),
                jax.device_put(
                    {"backbone": frozen["backbone"], "sam": {"image_encoder": neck}}, replicated
                ),
                both,
                batch_sharding,
                per_device_batch,
                progress,
                shared,
                "sam+backbone",
            )
            for name in ("sam", "backbone"):  # a shared call counts for both
                out[name]["computed"] += shared["computed"]
                out[name]["encoder_calls"] += shared["encoder_calls"]
        for name, _, _, todo, fn in jobs:
            if todo:
                # only this pass's frozen model ("sam" or "backbone") goes on the devices
                params = jax.device_put({name: frozen[name]}, replicated)
                jitted = jax.jit(
                    fn, in_shardings=(replicated, batch_sharding), out_shardings=batch_sharding
                )
                _run(
                    config,
                    jitted,
                    params,
                    todo,
                    batch_sharding,
                    per_device_batch,
                    progress,
                    out[name],
                    name,
                )
    empty = {"computed": 0, "skipped": 0, "encoder_calls": 0, "bytes": 0}
    stats = dict(out.get("sam", empty))
    if "backbone" in out:
        stats["backbone"] = out["backbone"]
    if point_store.wanted(lconfig):  # SAMIC's "sam_greedy" points, once per (record, class)
        stats["points"] = point_store.precompute_points(
            config,
            lconfig,
            frozen=frozen,
            which=which,
            progress=progress,
            process_index=p,
            process_count=n,
        )
    return stats


def _shared_records(sam_todo: list, bb_todo: list) -> tuple[list, list, list]:
    """(todo of the records both lists miss, with all their stores; the SAM's rest; the
    backbone's rest). Items are (stores, src, record); a split is named by its stores' keys."""

    def key(item):
        store = next(iter(item[0].values()))
        return store.key["dataset"], store.key["split"], item[2]

    by_key = {key(t): t for t in bb_todo}
    both = [({**t[0], **by_key[key(t)][0]}, t[1], t[2]) for t in sam_todo if key(t) in by_key]
    done = {key(t) for t in both}
    rest = lambda todo: [t for t in todo if key(t) not in done]
    return both, rest(sam_todo), rest(bb_todo)


def _shared_pass(prm, images, spec, names) -> dict:
    """One pass of a `sam_<variant>` backbone (the SAM's own encoder) giving the backbone's
    stages and, through the SAM's neck on its last block, the SAM embedding (as
    `vrp.frozen_features` computes the query's in the step)."""
    from jaxvrp import backbones
    from jaxvrp.learners import vrp

    out = backbones.apply(
        prm["backbone"], vrp.backbone_input_of(images, spec.backbone), config=spec.backbone
    )
    emb = sam_model.encode_neck(prm["sam"], out["layer4"], config=spec.sam)
    return {"sam": jax.lax.stop_gradient(emb), **{s: jax.lax.stop_gradient(out[s]) for s in names}}


def _bytes(stores: dict) -> int:
    return sum(st.entry_bytes() for st in stores.values())


def _run(config, fn, params, todo, sharding, per_device_batch, progress, stats, name) -> None:
    """Compute and write `todo` [(stores, src, record)] in fixed-size chunks."""
    from jaxvrp.data import episodes

    bsz = per_device_batch * len(jax.local_devices())
    size = int(config.data.image_size)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"precompute {name}", unit="image", file=sys.stderr)
    try:
        for start in range(0, len(todo), bsz):
            chunk = todo[start : start + bsz]
            images = [episodes.load_example(src, r, 0, size)[0] for _, src, r in chunk]
            images += [images[-1]] * (bsz - len(chunk))  # a fixed shape: one compile
            values = _encode(fn, params, np.stack(images), sharding)
            stats["encoder_calls"] += 1
            for i, (stores, _, r) in enumerate(chunk):
                for key, store in stores.items():
                    store.put(r, values[key][i])
                stats["computed"] += 1
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------- steps read them


class QueryEmbeddings:
    """Host-side lookup of a split's precomputed features, added to host batches before
    they are sharded: `query_embedding` (B, h, w, C) of `query_record`, and with `stages`
    ({"query": ..., "support": ...}, `backbone_stages`) the backbone's
    `query_features/<stage>` (B, h, w, C) and, of `support_records` (B, K),
    `support_features/<stage>` (B, K, h, w, C). The step stays a pure function of its
    inputs (the learners read them when present: `frozen_sam.query_embeddings`,
    `vrp.shot_features`), and each host reads only its own batch's records."""

    def __init__(self, config, sam, which: int, spec=None, stages=None) -> None:
        from jaxvrp.data import datasets

        dataset, split, _ = datasets.plan(config)[which]
        self.store = sam_store(config, sam, dataset, split) if sam is not None else None
        self.stages = stages
        self.backbone = {}
        if stages is not None:
            self.backbone = backbone_stores(config, spec, _all(stages), dataset, split)

    def __call__(self, batch: dict) -> dict:
        out = dict(batch)
        if self.store is not None:
            out["query_embedding"] = self.store.get_many(batch["query_record"])
        if self.stages is None:
            return out
        for s in self.stages["query"]:
            out[f"query_features/{s}"] = self.backbone[s].get_many(batch["query_record"])
        if self.stages["support"] and "support_records" not in batch:
            raise KeyError(
                "precomputed backbone features need batch['support_records'] (B, K), the "
                "references' record ids (jaxvrp.data.episodes)"
            )
        refs = np.asarray(batch.get("support_records", np.zeros((0, 0), np.int64)))
        for s in self.stages["support"]:
            store = self.backbone[s]
            values = store.get_many(refs.reshape(-1))
            out[f"support_features/{s}"] = values.reshape(*refs.shape, *store.shape)
        return out


def reader(config, learner, lconfig, which: int, frozen=None):
    """`QueryEmbeddings` of the config's training (`which` 0) or evaluation (1) split when
    `config.data.feature_cache` is set and the learner prompts a SAM (or is served
    backbone stages, `config.data.backbone_features`), followed by a
    `point_store.PointReader` when the learner reads stored "sam_greedy" points (SAMIC);
    else None; runs `precompute` first
    when `config.data.precompute` (with the host tree `frozen` if given, and a barrier
    after it: a host reads entries other hosts wrote)."""
    if not config.data.get("feature_cache", ""):
        if config.data.get("precompute", False):
            raise ValueError("config.data.precompute=True needs config.data.feature_cache=DIR")
        if config.data.get("backbone_features", False):
            raise ValueError(
                "config.data.backbone_features=True needs config.data.feature_cache=DIR"
            )
        return None
    from jaxvrp import point_store

    spec = learner.frozen(lconfig)
    stages = backbone_stages(config, learner, lconfig)  # refuses a learner it cannot serve
    points = point_store.wanted(lconfig)
    if spec.sam is None and stages is None and not points:
        return None
    if config.data.get("precompute", False):
        precompute(config, frozen=frozen, progress=jax.process_index() == 0, which=(which,))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jaxvrp.precompute")
    embeddings = QueryEmbeddings(config, spec.sam, which, spec, stages)
    if not points:
        return embeddings
    reader_of_points = point_store.PointReader(config, lconfig, which)
    return lambda batch: reader_of_points(embeddings(batch))


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
