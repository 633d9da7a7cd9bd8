"""Tests of the procedural few-shot benchmark (generator and the "procedural_fss" builder)."""

import hashlib
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxvrp.data import procedural
from jaxvrp.data.builders.procedural import ProceduralFss, ProceduralFssConfig
from jaxvrp.data.procedural import (
    CLASS_NAMES,
    NUM_CLASSES,
    NUM_FOLDS,
    class_id,
    class_shape_texture,
    generate_image,
    min_visible_pixels,
    procedural_classes,
    render_grid,
)

SPLITS = ("train", "test")


def _build(data_dir, config="small", **kwargs) -> ProceduralFss:
    builder = ProceduralFss(
        config=config, data_dir=str(data_dir), file_format="array_record", **kwargs
    )
    builder.download_and_prepare()
    return builder


def _records(builder: ProceduralFss, split: str) -> dict[str, dict]:
    """Decoded records of a split keyed by image_id: image (H, W, 3), mask (H, W, 1),
    classes (n,) int32."""
    source = builder.as_data_source(split=split)
    out = {}
    for i in range(len(source)):
        r = source[i]
        image_id = r["image_id"]
        image_id = image_id.decode() if isinstance(image_id, bytes) else str(image_id)
        out[image_id] = {
            "image": np.asarray(r["image"]),
            "mask": np.asarray(r["mask"]),
            "classes": np.asarray(r["classes"], np.int64),
        }
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The "small" config built twice (2 threads, then 1): (builder, records, records2)."""
    start = time.perf_counter()
    first = _build(tmp_path_factory.mktemp("fss_a"))
    elapsed = time.perf_counter() - start
    config = first.builder_config
    print(
        f"\nprocedural_fss/small ({config.num_train} + {config.num_test} images, "
        f"{config.image_size}x{config.image_size}) built in {elapsed:.2f} s"
    )
    second = _build(tmp_path_factory.mktemp("fss_b"), num_workers=1)
    records = {s: _records(first, s) for s in SPLITS}
    records2 = {s: _records(second, s) for s in SPLITS}
    return first, records, records2


# ------------------------------------------------------------------------------- layout


def test_folds_partition_classes():
    novel_all = []
    for fold in range(NUM_FOLDS):
        base, novel = procedural_classes(fold)
        assert novel == tuple(range(5 * fold + 1, 5 * fold + 6))
        assert set(base) | set(novel) == set(range(1, NUM_CLASSES + 1))
        assert not set(base) & set(novel)
        assert list(base) == sorted(base) and len(base) == 15
        novel_all += novel
    assert sorted(novel_all) == list(range(1, NUM_CLASSES + 1))  # folds disjoint, cover 1..20
    with pytest.raises(ValueError, match="fold"):
        procedural_classes(4)


def test_grid_is_a_bijection_and_names():
    cells = [class_shape_texture(c) for c in range(1, NUM_CLASSES + 1)]
    assert len(set(cells)) == NUM_CLASSES  # every shape × texture once
    for c, (s, t) in enumerate(cells, start=1):
        assert class_id(s, t) == c
        assert CLASS_NAMES[c - 1] == f"{procedural.SHAPES[s]}_{procedural.TEXTURES[t]}"
    assert len(set(CLASS_NAMES)) == NUM_CLASSES
    with pytest.raises(ValueError, match="class id"):
        class_shape_texture(0)
    with pytest.raises(ValueError, match="shape"):
        class_id(5, 0)


@pytest.mark.parametrize("fold", range(NUM_FOLDS))
def test_novel_classes_are_novel_combinations(fold):
    base, novel = procedural_classes(fold)
    base_cells = [class_shape_texture(c) for c in base]
    novel_cells = [class_shape_texture(c) for c in novel]
    assert sorted(s for s, _ in novel_cells) == list(range(len(procedural.SHAPES)))
    for s, t in novel_cells:
        assert any(bs == s for bs, _ in base_cells), f"shape {s} unseen in base of fold {fold}"
        assert any(bt == t for _, bt in base_cells), f"texture {t} unseen in base of fold {fold}"
        # the shape is seen with every other texture, and the texture with other shapes
        assert {bt for bs, bt in base_cells if bs == s} == set(range(4)) - {t}
        assert len({bs for bs, bt in base_cells if bt == t}) >= 3


# ---------------------------------------------------------------------------- generator


def test_generator_depends_only_on_seed_split_index():
    a = generate_image(3, "train", 7, 64)
    for _ in range(2):
        generate_image(3, "train", 8, 64)  # other draws in between change nothing
    b = generate_image(3, "train", 7, 64)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.classes == b.classes and a.image_id == "train_000007"
    assert 7 % NUM_CLASSES + 1 in a.classes  # round-robin class
    for other in (generate_image(4, "train", 7, 64), generate_image(3, "test", 7, 64)):
        assert not np.array_equal(a.image, other.image)


def test_generator_errors_name_the_problem():
    with pytest.raises(ValueError, match="split"):
        generate_image(0, "val", 0)
    with pytest.raises(ValueError, match="image_size"):
        generate_image(0, "train", 0, 16)
    with pytest.raises(ValueError, match="seed"):
        generate_image(-1, "train", 0)
    with pytest.raises(ValueError, match="num_train"):
        ProceduralFssConfig(name="bad", num_train=5)


def test_render_grid(tmp_path):
    samples = [generate_image(0, "train", i, 64) for i in range(6)]
    grid = render_grid([s.image for s in samples], [s.mask for s in samples], columns=4)
    assert grid.shape == (2 * 64, 4 * 2 * 64, 3) and grid.dtype == np.uint8
    Image.fromarray(grid).save(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0


# ------------------------------------------------------------------------------ builder


def test_build_is_deterministic(small):
    _, records, records2 = small
    for split in SPLITS:
        assert records[split].keys() == records2[split].keys()
        for image_id, r in records[split].items():
            r2 = records2[split][image_id]
            for key in ("image", "mask", "classes"):
                assert np.array_equal(r[key], r2[key]), f"{split}/{image_id}: {key} differs"


def test_records_match_generator(small):
    builder, records, _ = small
    config = builder.builder_config
    for split in SPLITS:
        for index in (0, 1, 19, config.num_images(split) - 1):
            s = generate_image(config.seed, split, index, config.image_size)
            r = records[split][s.image_id]
            assert np.array_equal(r["image"], s.image)
            assert np.array_equal(r["mask"][..., 0], s.mask)
            assert tuple(r["classes"]) == s.classes


def test_split_sizes_shapes_and_ids(small):
    builder, records, _ = small
    config = builder.builder_config
    size = config.image_size
    for split in SPLITS:
        n = config.num_images(split)
        assert sorted(records[split]) == [f"{split}_{i:06d}" for i in range(n)]
        for r in records[split].values():
            assert r["image"].dtype == np.uint8 and r["image"].shape == (size, size, 3)
            assert r["mask"].dtype == np.uint8 and r["mask"].shape == (size, size, 1)
    hashes = {
        s: {hashlib.sha1(r["image"].tobytes()).hexdigest() for r in records[s].values()}
        for s in SPLITS
    }
    assert len(hashes["train"]) == config.num_train and len(hashes["test"]) == config.num_test
    assert not hashes["train"] & hashes["test"], "train and test share an image"


def test_every_class_in_enough_images(small):
    builder, records, _ = small
    config = builder.builder_config
    for split in SPLITS:
        counts = Counter(int(c) for r in records[split].values() for c in r["classes"])
        need = config.num_images(split) // NUM_CLASSES
        assert need >= 6  # a 5-shot episode: 5 references and a target
        missing = {c: counts[c] for c in range(1, NUM_CLASSES + 1) if counts[c] < need}
        assert not missing, f"{split}: classes in fewer than {need} images: {missing}"
        # some images hold two classes (the reference class must be told apart from another)
        assert sum(len(r["classes"]) == 2 for r in records[split].values()) > 0


def test_masks_consistent_with_classes(small):
    builder, records, _ = small
    threshold = min_visible_pixels(builder.builder_config.image_size)
    for split in SPLITS:
        for image_id, r in records[split].items():
            ids, counts = np.unique(r["mask"], return_counts=True)
            present = {int(i): int(n) for i, n in zip(ids, counts, strict=True) if i != 0}
            assert set(present) <= set(range(1, NUM_CLASSES + 1)), f"{image_id}: {present}"
            assert 1 <= len(r["classes"]) <= 2
            assert list(r["classes"]) == sorted(present), f"{image_id}: classes != mask ids"
            small_ones = {c: n for c, n in present.items() if n < threshold}
            assert not small_ones, f"{image_id}: classes under {threshold} pixels: {small_ones}"


def test_colour_is_not_the_class_cue(small):
    _, records, _ = small
    means = defaultdict(list)
    for r in records["train"].values():
        for c in r["classes"]:
            means[int(c)].append(r["image"][r["mask"][..., 0] == c].mean(axis=0))
    for c, m in means.items():
        spread = np.std(np.asarray(m), axis=0).mean()
        assert spread > 20.0, f"class {c} ({CLASS_NAMES[c - 1]}) colour std {spread:.1f}/255"


def test_metadata_and_data_source(small):
    builder, records, _ = small
    metadata = builder.info.metadata
    assert metadata["class_names"] == list(CLASS_NAMES)
    assert metadata["folds"]["2"]["novel"] == list(procedural_classes(2)[1])
    root = Path(builder.data_dir).parents[2]  # <root>/procedural_fss/small/1.0.0
    source = tfds.data_source("procedural_fss/small", data_dir=str(root))
    assert len(source["test"]) == builder.builder_config.num_test


def test_custom_config(tmp_path):
    config = ProceduralFssConfig(name="tiny", image_size=32, num_train=20, num_test=20, seed=5)
    builder = _build(tmp_path, config=config)
    records = _records(builder, "test")
    assert len(records) == 20
    r = records["test_000003"]
    s = generate_image(5, "test", 3, 32)
    assert r["image"].shape == (32, 32, 3) and np.array_equal(r["image"], s.image)
