"""Tests of the few-shot class splits (PASCAL-5i, COCO-20i, FSS-1000, COCO-20i → PASCAL)."""

import pytest

from jaxvrp.data import folds

FOLDS = range(4)


@pytest.mark.parametrize("fold", FOLDS)
def test_pascal_fold(fold):
    base, novel = folds.pascal_classes(fold)
    assert novel == [5 * fold + k for k in range(1, 6)]
    assert len(base) == 15 and base == sorted(base)
    assert not set(base) & set(novel)
    assert sorted(base + novel) == list(range(1, 21))


def test_pascal_folds_partition_classes():
    novels = [folds.pascal_classes(f)[1] for f in FOLDS]
    assert sorted(sum(novels, [])) == list(range(1, 21))
    names = [folds.PASCAL_CLASSES[c - 1] for c in novels[3]]
    assert names == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]


@pytest.mark.parametrize("fold", FOLDS)
def test_coco_fold_interleaved(fold):
    base, novel = folds.coco_classes(fold)
    assert novel == [fold + 1 + 4 * k for k in range(20)]
    assert novel[0] == fold + 1 and novel[-1] == fold + 77
    assert all(c % 4 == (fold + 1) % 4 for c in novel)
    assert len(base) == 60 and base == sorted(base)
    assert not set(base) & set(novel)
    assert sorted(base + novel) == list(range(1, 81))


def test_coco_folds_partition_classes():
    novels = [set(folds.coco_classes(f)[1]) for f in FOLDS]
    assert set().union(*novels) == set(range(1, 81))
    assert sum(len(n) for n in novels) == 80
    # Fold 0 starts with person (category 1), airplane (5), boat (9), ...
    assert [folds.COCO_CLASSES[c - 1] for c in folds.coco_classes(0)[1][:3]] == [
        "person",
        "airplane",
        "boat",
    ]


def test_class_name_constants():
    assert len(folds.PASCAL_CLASSES) == 20 and len(set(folds.PASCAL_CLASSES)) == 20
    assert len(folds.COCO_CLASSES) == 80 and len(set(folds.COCO_CLASSES)) == 80
    assert folds.COCO_CLASSES[0] == "person" and folds.COCO_CLASSES[-1] == "toothbrush"
    assert set(folds.PASCAL_TO_COCO) == set(folds.PASCAL_CLASSES)
    assert set(folds.PASCAL_TO_COCO.values()) <= set(folds.COCO_CLASSES)
    assert folds.PASCAL_TO_COCO["sofa"] == "couch"
    assert folds.PASCAL_TO_COCO["tvmonitor"] == "tv"
    assert folds.PASCAL_TO_COCO["cat"] == "cat"


EXPECTED_COCO_TO_PASCAL = {
    0: ["aeroplane", "boat", "chair", "diningtable", "dog", "person"],
    1: ["bicycle", "bus", "horse", "sofa"],
    2: ["bird", "car", "pottedplant", "sheep", "train", "tvmonitor"],
    3: ["bottle", "cat", "cow", "motorbike"],
}


@pytest.mark.parametrize("fold", FOLDS)
def test_coco_to_pascal(fold):
    train, test = folds.coco_to_pascal(fold)
    assert train == folds.coco_classes(fold)[0]
    assert [folds.PASCAL_CLASSES[c - 1] for c in test] == EXPECTED_COCO_TO_PASCAL[fold]
    train_names = {folds.COCO_CLASSES[c - 1] for c in train}
    # No test class is seen in training, and every PASCAL class not tested is a train class.
    for c in range(1, 21):
        coco_name = folds.PASCAL_TO_COCO[folds.PASCAL_CLASSES[c - 1]]
        assert (coco_name in train_names) == (c not in test)


def test_coco_to_pascal_folds_partition_pascal():
    tests = [folds.coco_to_pascal(f)[1] for f in FOLDS]
    assert [len(t) for t in tests] == [6, 4, 6, 4]
    assert sorted(sum(tests, [])) == list(range(1, 21))


@pytest.mark.parametrize("bad", [-1, 4, 1.0, "0", None, True])
@pytest.mark.parametrize(
    "fn", [folds.pascal_classes, folds.coco_classes, folds.coco_to_pascal], ids=lambda f: f.__name__
)
def test_bad_fold(fn, bad):
    with pytest.raises(ValueError, match=r"fold must be one of \[0, 1, 2, 3\]"):
        fn(bad)


METADATA = {
    "class_names": ["ab_wheel", "apple", "bus", "cat", "dog"],
    "split_classes": {"train": ["bus", "apple"], "val": ["dog"], "test": ["ab_wheel", "cat"]},
}


def test_fss_classes():
    assert folds.fss_classes("train", METADATA) == [2, 3]
    assert folds.fss_classes("val", METADATA) == [5]
    assert folds.fss_classes("test", METADATA) == [1, 4]


def test_fss_classes_errors():
    with pytest.raises(ValueError, match=r"one of \['train', 'val', 'test'\]"):
        folds.fss_classes("trn", METADATA)
    with pytest.raises(ValueError, match="no 'split_classes'"):
        folds.fss_classes("train", {"class_names": []})
    bad = {"class_names": ["a"], "split_classes": {"train": ["a", "b"]}}
    with pytest.raises(ValueError, match=r"not in the dataset's class list.*\['b'\]"):
        folds.fss_classes("train", bad)
