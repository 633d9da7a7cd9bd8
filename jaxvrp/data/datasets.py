"""Which dataset, split and classes a config trains and evaluates on, as episode streams.

| `config.data.dataset` | TFDS build | train split, classes | evaluation split, classes |
| --- | --- | --- | --- |
| pascal5i | pascal5i | train, fold's base | val, fold's novel |
| coco20i | coco20i | train, fold's base | val, fold's novel |
| fss1000 | fss1000 | train, train classes | test, test classes |
| coco2pascal | both | COCO train, COCO fold's base | PASCAL val, PASCAL classes outside them |
| procedural | procedural_fss | train, fold's base | test, fold's novel |
| perseg | perseg | — (a test set) | test, every object |

coco2pascal is VRP-SAM's Table 10 domain shift. `config.data.protocol` chooses the evaluation
episodes: "hsnet" (the default of pascal5i, coco20i, fss1000) evaluates on HSNet's own test
episodes (`jaxvrp.data.hsnet`), "jaxvrp" (procedural, coco2pascal) on jaxvrp's seeded ones
(`jaxvrp.data.episodes`), "perseg" (perseg's only protocol) on PerSAM's: every object's
image 00 is the reference of each of its other images (`jaxvrp.data.perseg`); training
episodes are jaxvrp's under all.

The procedural benchmark is built on first use (seconds); the others are built from the user's
files in `config.data.manual_dir` the first time, or must already be built in
`config.data.data_dir`.
"""

import os

from etils import epath

from jaxvrp import configs
from jaxvrp.data import episodes, hsnet, perseg, procedural

TFDS_NAME = {
    "pascal5i": "pascal5i",
    "coco20i": "coco20i",
    "fss1000": "fss1000",
    "perseg": "perseg",
    "procedural": "procedural_fss",
}
DATASETS = ("pascal5i", "coco20i", "fss1000", "coco2pascal", "procedural", "perseg")


def data_dir(config) -> str:
    return config.data.data_dir or os.path.expanduser("~/tensorflow_datasets")


def _check(config) -> None:
    if config.data.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {config.data.dataset!r}; known: {DATASETS}")


def source(config, dataset: str, split: str):
    """The random-access source of a built dataset, building the procedural one if needed."""
    root = data_dir(config)
    if dataset == "procedural":
        from jaxvrp.data.builders.procedural import ProceduralFss

        builder = ProceduralFss(
            config=config.data.procedural_config, data_dir=root, file_format="array_record"
        )
        if not epath.Path(builder.data_dir).exists():  # gs://... stays remote
            builder.download_and_prepare()
        return builder.as_data_source(split=split)
    name = TFDS_NAME[dataset]
    try:
        return episodes.open_source(name, split, root)
    except FileNotFoundError:
        if not config.data.manual_dir:
            raise FileNotFoundError(
                f"{name} is not built under {root}; set config.data.manual_dir to your copy of "
                "the dataset to build it (layouts: docs/data.md)"
            ) from None
    from jaxvrp.data import builders

    builders.build(name, manual_dir=config.data.manual_dir, data_dir=root)
    return episodes.open_source(name, split, root)


def plan(config) -> tuple[tuple[str, str, list[int]], tuple[str, str, list[int]]]:
    """((train dataset, split, classes), (evaluation dataset, split, classes))."""
    _check(config)
    d, fold = config.data.dataset, config.data.fold
    if d == "procedural":
        base, novel = procedural.procedural_classes(fold)
        return ("procedural", "train", list(base)), ("procedural", "test", list(novel))
    if d == perseg.DATASET:  # a test set: "training" names it only to be refused
        names = build_metadata(config, "perseg", "test")["class_names"]
        classes = list(range(1, len(names) + 1))
        return ("perseg", "test", classes), ("perseg", "test", classes)
    from jaxvrp.data import folds

    if d == "pascal5i":
        base, novel = folds.pascal_classes(fold)
        return ("pascal5i", "train", list(base)), ("pascal5i", "val", list(novel))
    if d == "coco20i":
        base, novel = folds.coco_classes(fold)
        return ("coco20i", "train", list(base)), ("coco20i", "val", list(novel))
    if d == "fss1000":
        metadata = fss_metadata(config)
        return (
            ("fss1000", "train", list(folds.fss_classes("train", metadata))),
            ("fss1000", "test", list(folds.fss_classes("test", metadata))),
        )
    train_classes, test_classes = folds.coco_to_pascal(fold)
    return ("coco20i", "train", list(train_classes)), ("pascal5i", "val", list(test_classes))


def build_metadata(config, dataset: str, split: str):
    """A build's `info.metadata` (FSS-1000: class names and split classes; PerSeg: its
    object names), building it from `config.data.manual_dir` first if needed."""
    import tensorflow_datasets as tfds

    from jaxvrp.data import builders  # registers the builder, whose info holds the metadata

    del builders
    source(config, dataset, split)
    return tfds.builder(TFDS_NAME[dataset], data_dir=data_dir(config)).info.metadata


def fss_metadata(config):
    """The FSS-1000 build's `info.metadata` (class names and split classes)."""
    return build_metadata(config, "fss1000", "test")


def protocol(config) -> str:
    """`config.data.protocol` ("jaxvrp" for configs written before the key existed),
    checked against the dataset: HSNet's lists exist for pascal5i, coco20i, fss1000;
    PerSAM's protocol is perseg's, 1-shot, and the only one it has."""
    name = config.data.get("protocol", "jaxvrp")
    if name not in episodes.PROTOCOLS:
        raise ValueError(f"data.protocol must be one of {episodes.PROTOCOLS}, got {name!r}")
    if (name == perseg.PROTOCOL) != (config.data.dataset == perseg.DATASET):
        raise ValueError(
            f"data.protocol={name!r} with data.dataset={config.data.dataset!r}: PerSAM's "
            "protocol 'perseg' is the one evaluation of the perseg dataset and of no other"
        )
    if name == perseg.PROTOCOL and config.data.shots != 1:
        raise ValueError(
            f"data.protocol='perseg' is 1-shot (each object's image 00), got data.shots="
            f"{config.data.shots}"
        )
    if name == hsnet.PROTOCOL and config.data.dataset not in hsnet.DATASETS:
        raise ValueError(
            f"data.protocol='hsnet' has HSNet's episode lists for {list(hsnet.DATASETS)}, not "
            f"{config.data.dataset!r}; set data.protocol='jaxvrp'"
        )
    return name


def hsnet_episodes(config, index: episodes.ClassIndex | None = None) -> list[hsnet.Episode]:
    """HSNet's test episodes of the config's dataset, fold and shots (`jaxvrp.data.hsnet`).
    FSS-1000 reads its test images from `index` (the test split's `ClassIndex`)."""
    protocol(config)
    d = config.data
    image_ids, class_names = (), ()
    if d.dataset == "fss1000":
        if index is None:
            index = episodes.ClassIndex.build(_light_source(config, "fss1000", "test"))
        image_ids, class_names = list(index.ids), list(fss_metadata(config)["class_names"])
    return hsnet.episodes_of(
        d.dataset,
        d.fold,
        d.shots,
        d.num_eval_episodes,
        root=d.get("hsnet_splits", ""),
        image_ids=image_ids,
        class_names=class_names,
    )


def _light_source(config, dataset: str, split: str):
    """The source without image decoding (reading ids and classes), built if needed."""
    src = source(config, dataset, split)
    if dataset == "procedural":
        return src
    return episodes.open_source(TFDS_NAME[dataset], split, data_dir(config), images=False)


def eval_episode_list(config) -> list[dict]:
    """The config's evaluation episodes as JSON-able rows {"episode", "query" (image id),
    "supports" (image ids), "class"} (+ "hsnet_class" under "hsnet"), in episode order.

    HSNet's PASCAL / COCO lists need no dataset; the others read the build's ids."""
    if protocol(config) == hsnet.PROTOCOL:
        return [e.to_json(i) for i, e in enumerate(hsnet_episodes(config))]
    dataset, split, classes = plan(config)[1]
    index = episodes.ClassIndex.build(_light_source(config, dataset, split))
    name_of = {r: image_id for image_id, r in index.ids.items()}
    if protocol(config) == perseg.PROTOCOL:
        return [
            {
                "episode": n,
                "query": name_of[q],
                "supports": [name_of[int(r)] for r in refs],
                "class": c,
            }
            for n, (c, q, refs) in enumerate(perseg.episodes_of(index.ids, index.records))
        ]
    cfg = _episode_config(config)
    usable = index.usable(classes, cfg.shots)
    rows = []
    for n in range(cfg.num_eval_episodes):
        c, q, refs = episodes.draw_episode(n, usable, index, cfg, round_robin=True)
        rows.append(
            {
                "episode": n,
                "query": name_of[q],
                "supports": [name_of[int(r)] for r in refs],
                "class": c,
            }
        )
    return rows


def _episode_config(config) -> episodes.EpisodeConfig:
    return episodes.EpisodeConfig(
        shots=config.data.shots,
        image_size=config.data.image_size,
        annotation=config.data.annotation,
        seed=configs.data_seed(config),  # config.seed unless data.seed is set
        num_eval_episodes=config.data.num_eval_episodes,
        protocol=protocol(config),
    )


def episode_index(config, src, train: bool) -> episodes.ClassIndex:
    """The class index episodes of `src` are drawn from: with `train`, the seeded
    `data.train_fraction` subset of each class's records (`ClassIndex.subset`)."""
    index = episodes.ClassIndex.build(src)
    if train:
        index = index.subset(
            config.data.get("train_fraction", 1.0),
            configs.data_seed(config),
            minimum=config.data.shots + 1,
        )
    return index


def _episodes(config, which: int, train: bool, process_index, process_count, local_batch):
    dataset, split, classes = plan(config)[which]
    if train and dataset == perseg.DATASET:
        raise ValueError(
            "data.dataset='perseg' is a test set (PerSAM's evaluation): train on another "
            "dataset and evaluate with data.dataset='perseg', or use a training-free method"
        )
    src = source(config, dataset, split)
    index = episode_index(config, src, train)
    fixed = None
    if not train and protocol(config) == hsnet.PROTOCOL:
        fixed = hsnet.resolve(hsnet_episodes(config, index), index.ids, index.records)
    if not train and protocol(config) == perseg.PROTOCOL:
        fixed = perseg.episodes_of(index.ids, index.records)
    return episodes.episode_dataset(
        src,
        index,
        classes,
        config=_episode_config(config),
        train=train,
        batch_size=local_batch,
        process_index=process_index,
        process_count=process_count,
        num_workers=config.data.num_workers,
        fixed=fixed,
    )


def train_episodes(config, process_index: int, process_count: int, local_batch: int):
    """Endless training episodes of this host (base classes)."""
    return _episodes(config, 0, True, process_index, process_count, local_batch)


def eval_episodes(config, process_index: int, process_count: int, local_batch: int):
    """This host's share of the fixed evaluation episodes (novel classes)."""
    return _episodes(config, 1, False, process_index, process_count, local_batch)
