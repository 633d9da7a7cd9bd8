"""PerSAM's PerSeg protocol: each object's image 00 is the reference of its other images; an
object scores Σ∩ / Σ∪ over its targets, mIoU is the mean over the objects."""

import numpy as np
import pytest

from jaxvrp import evaluate
from jaxvrp.data import datasets, perseg
from tests import toy_learner
from tests.data import fake_trees

# object -> its image names (the build sorts objects by name: class ids 1, 2, 3); "100" is a
# target here, where the official eval_miou.py's substring test ('00' in path) would drop it
OBJECTS = {"can": ["01", "00", "02", "100"], "dog": ["00", "01"], "mug": ["02", "00", "01"]}


def _tree(root, objects=OBJECTS):
    for c, (name, images) in enumerate(sorted(objects.items()), start=1):
        for k, image in enumerate(images):
            fake_trees.write_jpeg(root / "Images" / name / f"{image}.jpg", 100 * c + k)
            fg = fake_trees.rect((40, 60), (3 + 4 * k, 30, 5 + 3 * c, 50, 255))
            fake_trees.write_png(root / "Annotations" / name / f"{image}.png", fg)
    return root


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("perseg")
    c = toy_learner.get_config("runlocal,dataset=perseg")
    c.data.manual_dir = str(_tree(tmp / "PerSeg"))
    c.data.data_dir = str(tmp / "tfds")
    c.data.image_size = 32
    c.batch_size = 8  # the 8 simulated devices
    return c


def test_every_other_image_of_an_object_is_a_target_of_its_00(config):
    assert config.data.protocol == perseg.PROTOCOL  # perseg's default
    rows = datasets.eval_episode_list(config)
    expected = [
        (c, f"{name}/{image}")
        for c, (name, images) in enumerate(sorted(OBJECTS.items()), start=1)
        for image in sorted(images)
        if image != "00"
    ]
    assert [(r["class"], r["query"]) for r in rows] == expected
    assert [r["episode"] for r in rows] == list(range(len(expected)))
    for r in rows:
        assert r["supports"] == [r["query"].split("/")[0] + "/00"]


def test_scores_are_per_object_sums_of_intersections_over_unions(config):
    seen = []
    result = evaluate.evaluate(config, on_batch=lambda b, logits: seen.append((b, logits)))
    inter, union, episodes = {}, {}, []
    for batch, logits in seen:
        for i in np.flatnonzero(batch["valid"]):
            c = int(batch["class_id"][i])
            pred, truth = logits[i] > 0, batch["query_mask"][i] > 0
            inter[c] = inter.get(c, 0) + int((pred & truth).sum())
            union[c] = union.get(c, 0) + int((pred | truth).sum())
            episodes.append(int(batch["episode"][i]))
    assert sorted(episodes) == list(range(6))  # each target once, padding left out
    iou = {c: inter[c] / union[c] for c in inter}
    assert sorted(iou) == [1, 2, 3]
    assert result["episodes"] == 6 and result["protocol"] == "perseg"
    for c, v in iou.items():
        assert result["per_class_iou"][c] == pytest.approx(v, abs=1e-9)
    assert result["miou"] == pytest.approx(np.mean(list(iou.values())), abs=1e-9)
    assert len(set(iou.values())) > 1  # the objects' scores differ: not one pooled ratio


def test_perseg_errors_name_the_problem(config, tmp_path):
    with pytest.raises(ValueError, match="test set"):
        next(iter(datasets.train_episodes(config, 0, 1, 8)))
    c = toy_learner.get_config("runlocal,dataset=perseg")
    c.data.shots = 2
    with pytest.raises(ValueError, match="1-shot"):
        datasets.protocol(c)
    c = toy_learner.get_config("runlocal,dataset=perseg")
    c.data.protocol = "jaxvrp"
    with pytest.raises(ValueError, match="'perseg' is the one evaluation of the perseg"):
        datasets.protocol(c)
    c = toy_learner.get_config("runlocal")
    c.data.protocol = "perseg"
    with pytest.raises(ValueError, match="data.dataset='procedural'"):
        datasets.protocol(c)
    # an object without its reference image 00
    no_ref = toy_learner.get_config("runlocal,dataset=perseg")
    no_ref.data.manual_dir = str(
        _tree(tmp_path / "PerSeg", {"cat": ["01", "02"], "dog": ["00", "01"]})
    )
    no_ref.data.data_dir = str(tmp_path / "tfds")
    with pytest.raises(ValueError, match="object 'cat' .*no reference image 00"):
        datasets.eval_episode_list(no_ref)
