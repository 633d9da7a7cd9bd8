"""Which dataset, split and classes a config trains and evaluates on, as episode streams.

| `config.data.dataset` | TFDS build | train split, classes | evaluation split, classes |
| --- | --- | --- | --- |
| pascal5i | pascal5i | train, fold's base | val, fold's novel |
| coco20i | coco20i | train, fold's base | val, fold's novel |
| fss1000 | fss1000 | train, train classes | test, test classes |
| coco2pascal | both | COCO train, COCO fold's base | PASCAL val, PASCAL classes outside them |
| procedural | procedural_fss | train, fold's base | test, fold's novel |

coco2pascal is VRP-SAM's Table 10 domain shift. The procedural benchmark is built on first
use (seconds); the others are built from the user's files in `config.data.manual_dir` the
first time, or must already be built in `config.data.data_dir`.
"""

import os

from etils import epath

from jaxvrp import configs
from jaxvrp.data import episodes, procedural

TFDS_NAME = {
    "pascal5i": "pascal5i",
    "coco20i": "coco20i",
    "fss1000": "fss1000",
    "perseg": "perseg",
    "procedural": "procedural_fss",
}
DATASETS = ("pascal5i", "coco20i", "fss1000", "coco2pascal", "procedural")


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
    from jaxvrp.data import folds

    if d == "pascal5i":
        base, novel = folds.pascal_classes(fold)
        return ("pascal5i", "train", list(base)), ("pascal5i", "val", list(novel))
    if d == "coco20i":
        base, novel = folds.coco_classes(fold)
        return ("coco20i", "train", list(base)), ("coco20i", "val", list(novel))
    if d == "fss1000":
        return (
            ("fss1000", "train", list(folds.fss_classes("train"))),
            ("fss1000", "test", list(folds.fss_classes("test"))),
        )
    train_classes, test_classes = folds.coco_to_pascal(fold)
    return ("coco20i", "train", list(train_classes)), ("pascal5i", "val", list(test_classes))


def _episode_config(config) -> episodes.EpisodeConfig:
    return episodes.EpisodeConfig(
        shots=config.data.shots,
        image_size=config.data.image_size,
        annotation=config.data.annotation,
        seed=configs.data_seed(config),  # config.seed unless data.seed is set
        num_eval_episodes=config.data.num_eval_episodes,
    )


def _episodes(config, which: int, train: bool, process_index, process_count, local_batch):
    dataset, split, classes = plan(config)[which]
    src = source(config, dataset, split)
    index = episodes.ClassIndex.build(src)
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
    )


def train_episodes(config, process_index: int, process_count: int, local_batch: int):
    """Endless training episodes of this host (base classes)."""
    return _episodes(config, 0, True, process_index, process_count, local_batch)


def eval_episodes(config, process_index: int, process_count: int, local_batch: int):
    """This host's share of the fixed evaluation episodes (novel classes)."""
    return _episodes(config, 1, False, process_index, process_count, local_batch)
