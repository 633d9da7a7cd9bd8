"""Which classes each dataset config trains and evaluates on."""

import pytest

from configs import vrp_sam
from jaxvrp.data import datasets, folds, procedural


@pytest.mark.parametrize(
    "dataset,fold,train,evaluate",
    [
        (
            "pascal5i",
            1,
            ("pascal5i", "train", folds.pascal_classes(1)[0]),
            ("pascal5i", "val", folds.pascal_classes(1)[1]),
        ),
        (
            "coco20i",
            2,
            ("coco20i", "train", folds.coco_classes(2)[0]),
            ("coco20i", "val", folds.coco_classes(2)[1]),
        ),
        (
            "coco2pascal",
            0,
            ("coco20i", "train", folds.coco_to_pascal(0)[0]),
            ("pascal5i", "val", folds.coco_to_pascal(0)[1]),
        ),
        (
            "procedural",
            3,
            ("procedural", "train", procedural.procedural_classes(3)[0]),
            ("procedural", "test", procedural.procedural_classes(3)[1]),
        ),
    ],
)
def test_plan(dataset, fold, train, evaluate):
    config = vrp_sam.get_config(f"dataset={dataset},fold={fold}")
    got_train, got_eval = datasets.plan(config)
    assert got_train == (train[0], train[1], list(train[2]))
    assert got_eval == (evaluate[0], evaluate[1], list(evaluate[2]))
    assert not set(got_train[2]) & set(got_eval[2]) or dataset == "coco2pascal"


def test_unbuilt_dataset_without_manual_dir_is_a_clear_error(tmp_path):
    config = vrp_sam.get_config("dataset=pascal5i")
    config.data.data_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="set config.data.manual_dir"):
        datasets.source(config, "pascal5i", "train")
    config.data.dataset = "imagenet"
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        datasets.plan(config)
