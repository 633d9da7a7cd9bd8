"""The episodic grain pipeline on a tiny few-shot dataset built here with TFDS."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxvrp.data import episodes, schema
from jaxvrp.image import IMAGENET_MEAN, IMAGENET_STD

NUM_CLASSES, PER_CLASS = 4, 5


class TinyFewShot(tfds.core.GeneratorBasedBuilder):
    """20 images of 24x32: image i shows class 1 + i % 4 as a rectangle (value 10 * class),
    and class 4 also in the corner of every even image; a 255 border row."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=schema.features("png"))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(NUM_CLASSES * PER_CLASS):
            c = 1 + i % NUM_CLASSES
            mask = np.zeros((24, 32), np.uint8)
            mask[4 + i % 5 : 14 + i % 5, 6:20] = c
            if i % 2 == 0:
                mask[18:22, 26:30] = 4
            mask[0] = schema.IGNORE
            image = np.stack([mask * 0 + 10 * c, mask, np.full_like(mask, i)], axis=-1)
            yield f"img{i:02d}", schema.record(schema.encode_png(image), mask, f"img{i:02d}")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    TinyFewShot(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    src = episodes.open_source("tiny_few_shot", "train", str(data_dir))
    return src, episodes.ClassIndex.build(src), str(data_dir)


def test_class_index(source):
    src, index, data_dir = source
    assert sorted(index.records) == [1, 2, 3, 4]
    assert len(index.records[1]) == PER_CLASS
    assert len(index.records[4]) == PER_CLASS + 10  # its own images and every even one
    # records of a class are sorted by image id, not by physical position
    ids = [src[int(i)]["image_id"] for i in index.records[2]]
    assert ids == sorted(ids)
    # building from a source that skips image decoding gives the same index
    light = episodes.open_source("tiny_few_shot", "train", data_dir, images=False)
    assert {c: r.tolist() for c, r in episodes.ClassIndex.build(light).records.items()} == {
        c: r.tolist() for c, r in index.records.items()
    }


def test_episode_content(source):
    src, index, _ = source
    cfg = episodes.EpisodeConfig(shots=2, image_size=16, annotation="box", seed=3)
    ep = episodes.make_episode(src, 7, [1, 2, 3], index, cfg, train=True)
    assert ep["query_image"].shape == (16, 16, 3) and ep["query_image"].dtype == np.float32
    assert ep["support_images"].shape == (2, 16, 16, 3)
    assert ep["support_annotations"].shape == ep["support_masks"].shape == (2, 16, 16)
    c = int(ep["class_id"])
    assert c in (1, 2, 3)
    # the red channel encodes 10 * class: normalised back, every image is of class c
    red = ep["support_images"][..., 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    np.testing.assert_allclose(red, 10 * c / 255, atol=1e-5)
    assert ep["query_mask"].max() == 1 and ep["query_ignore"][0].all()
    # box annotations contain the masks
    assert np.all(ep["support_annotations"] >= ep["support_masks"])
    # the query is not among the references
    _, query, refs = episodes.draw_episode(7, [1, 2, 3], index, cfg, round_robin=False)
    assert query not in refs.tolist() and len(set(refs.tolist())) == 2


def test_training_uses_only_the_given_classes_and_is_deterministic(source):
    src, index, _ = source
    cfg = episodes.EpisodeConfig(shots=1, image_size=16, annotation="point", seed=0)
    ds = episodes.episode_dataset(src, index, [1, 2], config=cfg, train=True, batch_size=4)
    a = [next(it) for it in [iter(ds)] for _ in range(5)]
    b = [next(it) for it in [iter(ds)] for _ in range(5)]
    seen = {int(c) for batch in a for c in batch["class_id"]}
    assert seen == {1, 2}
    for x, y in zip(a, b, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert a[0]["support_images"].shape == (4, 1, 16, 16, 3)
    np.testing.assert_array_equal(a[1]["episode"], [4, 5, 6, 7])


def test_evaluation_is_a_fixed_list_split_between_hosts(source):
    src, index, _ = source
    cfg = episodes.EpisodeConfig(shots=1, image_size=8, seed=5, num_eval_episodes=10)
    one = list(episodes.episode_dataset(src, index, [3, 4], config=cfg, train=False, batch_size=4))
    assert len(one) == 3 and int(sum(b["valid"].sum() for b in one)) == 10
    numbers = np.concatenate([b["episode"][b["valid"]] for b in one])
    np.testing.assert_array_equal(numbers, np.arange(10))
    classes = np.concatenate([b["class_id"][b["valid"]] for b in one])
    np.testing.assert_array_equal(classes, [3, 4] * 5)  # round-robin over the classes
    hosts = [
        list(
            episodes.episode_dataset(
                src,
                index,
                [3, 4],
                config=cfg,
                train=False,
                batch_size=2,
                process_index=p,
                process_count=2,
            )
        )
        for p in range(2)
    ]
    got = sorted(int(n) for h in hosts for b in h for n in b["episode"][b["valid"]])
    assert got == list(range(10))
    # the same episode is the same on every host layout
    by_number = {int(n): b["query_image"][i] for b in one for i, n in enumerate(b["episode"])}
    for h in hosts:
        for b in h:
            for i, n in enumerate(b["episode"]):
                np.testing.assert_array_equal(b["query_image"][i], by_number[int(n)])


def test_restored_iterator_yields_the_same_next_batch(source):
    src, index, _ = source
    cfg = episodes.EpisodeConfig(shots=1, image_size=8, annotation="scribble", seed=1)
    ds = episodes.episode_dataset(src, index, [1, 2, 3], config=cfg, train=True, batch_size=2)
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = next(it)
    again = iter(ds)
    again.set_state(state)
    got = next(again)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])


def test_bad_requests(source):
    src, index, data_dir = source
    cfg = episodes.EpisodeConfig(shots=5, image_size=8)
    with pytest.raises(ValueError, match=r"classes \[1\] have fewer than 6 records"):
        episodes.episode_dataset(src, index, [1, 4], config=cfg, train=True, batch_size=2)
    with pytest.raises(ValueError, match="annotation must be one of"):
        episodes.EpisodeConfig(annotation="polygon")
    with pytest.raises(Exception) as e:  # built, but no such split: TFDS's own error
        episodes.open_source("tiny_few_shot", "validation", data_dir)
    assert "is not built" not in str(e.value) and "validation" in str(e.value)
    with pytest.raises(FileNotFoundError, match="'tiny_missing' is not built under"):
        episodes.open_source("tiny_missing", "validation", data_dir)


def test_evaluation_episodes_identical_across_two_builds(tmp_path):
    """Two independent builds of the procedural benchmark give the same evaluation batches."""
    from jaxvrp.data import procedural
    from jaxvrp.data.builders.procedural import ProceduralFss

    _, novel = procedural.procedural_classes(2)
    cfg = episodes.EpisodeConfig(
        shots=2, image_size=32, annotation="scribble", seed=4, num_eval_episodes=12
    )
    batches = []
    for name in ("a", "b"):
        builder = ProceduralFss(
            config="small", data_dir=str(tmp_path / name), file_format="array_record"
        )
        builder.download_and_prepare()
        src = builder.as_data_source(split="test")
        ds = episodes.episode_dataset(
            src, episodes.ClassIndex.build(src), list(novel), config=cfg, train=False, batch_size=4
        )
        batches.append(list(ds))
    assert len(batches[0]) == 3
    for x, y in zip(*batches, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
