"""Tests of the few-shot dataset builders on tiny fake trees (build -> ArrayRecord -> read)."""

import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxvrp.data import folds
from jaxvrp.data.builders import BUILDERS, Pascal5i, build, coco, common
from jaxvrp.data.schema import encode_jpeg
from tests.data import fake_trees

MAKERS = {
    "pascal5i": fake_trees.make_pascal,
    "coco20i": fake_trees.make_coco,
    "fss1000": fake_trees.make_fss,
    "perseg": fake_trees.make_perseg,
}


def _read_all(name: str, data_dir: Path) -> dict[str, list[dict]]:
    sources = tfds.data_source(name, data_dir=str(data_dir), download=False)
    return {split: [src[i] for i in range(len(src))] for split, src in sources.items()}


def _check_records(records: list[dict], expected: dict[str, np.ndarray], tree):
    assert [r["image_id"].decode() for r in records] == list(expected)
    for r, (image_id, mask) in zip(records, expected.items(), strict=True):
        source = np.asarray(Image.open(tree.files[image_id]).convert("RGB"))
        assert r["image"].dtype == np.uint8 and r["image"].shape == (*mask.shape, 3)
        np.testing.assert_array_equal(r["image"], source, err_msg=image_id)
        assert r["mask"].shape == (*mask.shape, 1)
        np.testing.assert_array_equal(r["mask"][..., 0], mask, err_msg=image_id)
        present = sorted(set(np.unique(mask).tolist()) - {0, 255})
        assert list(r["classes"]) == present


def _assert_nothing_prepared(name: str, data_dir: Path):
    assert not (data_dir / name / "1.0.0").exists()
    assert not [p for p in data_dir.rglob("*") if "incomplete" in p.name]
    assert not tfds.builder(name, data_dir=str(data_dir)).is_prepared()
    # What a later reader sees: no split at all (TFDS returns {} for an unprepared dataset).
    assert dict(tfds.data_source(name, data_dir=str(data_dir), download=False)) == {}


@pytest.mark.parametrize("name", list(MAKERS))
def test_build_and_read_back(name, tmp_path):
    tree = MAKERS[name](tmp_path / "manual")
    data_dir = tmp_path / "tfds"
    builder = build(name, manual_dir=tree.root, data_dir=data_dir)
    assert isinstance(builder, BUILDERS[name])
    records = _read_all(name, data_dir)
    assert set(records) == set(tree.expected)
    for split, expected in tree.expected.items():
        _check_records(records[split], expected, tree)
        assert builder.info.metadata["empty"][split] == tree.empty[split]
        assert builder.info.metadata["skipped"][split] == []
    assert list(data_dir.glob(f"{name}/1.0.0/*.array_record-*"))
    # A second build reuses the prepared dataset.
    again = build(name, manual_dir=tree.root, data_dir=data_dir)
    assert again.info.splits[list(tree.expected)[0]].num_examples == len(
        records[list(tree.expected)[0]]
    )


def test_class_names_metadata(tmp_path):
    tree = fake_trees.make_pascal(tmp_path / "pascal")
    build("pascal5i", manual_dir=tree.root, data_dir=tmp_path / "tfds")
    info = tfds.builder("pascal5i", data_dir=str(tmp_path / "tfds")).info
    assert info.metadata["class_names"] == list(folds.PASCAL_CLASSES)
    tree = fake_trees.make_perseg(tmp_path / "perseg")
    build("perseg", manual_dir=tree.root, data_dir=tmp_path / "tfds")
    info = tfds.builder("perseg", data_dir=str(tmp_path / "tfds")).info
    assert info.metadata["class_names"] == ["backpack_dog", "can", "teddybear"]


def test_coco_overlap_and_class_ids(tmp_path):
    tree = fake_trees.make_coco(tmp_path / "coco")
    build("coco20i", manual_dir=tree.root, data_dir=tmp_path / "tfds")
    (record,) = [
        r
        for r in _read_all("coco20i", tmp_path / "tfds")["train"]
        if r["image_id"].endswith(b"_000000000007")
    ]
    dining_table = folds.COCO_CLASSES.index("dining table") + 1
    cup = folds.COCO_CLASSES.index("cup") + 1
    assert (dining_table, cup) == (61, 42)
    assert list(record["classes"]) == [cup, dining_table]
    assert (record["mask"][10:20, 20:30] == cup).all()  # the smaller instance stays on top


def test_fss_class_split(tmp_path):
    tree = fake_trees.make_fss(tmp_path / "fss")
    build("fss1000", manual_dir=tree.root, data_dir=tmp_path / "tfds")
    info = tfds.builder("fss1000", data_dir=str(tmp_path / "tfds")).info
    names = info.metadata["class_names"]
    assert names == sorted([*sum(fake_trees.FSS_SPLITS.values(), []), "unused"])
    records = _read_all("fss1000", tmp_path / "tfds")
    seen = {}
    for split, class_names in fake_trees.FSS_SPLITS.items():
        ids = folds.fss_classes(split, info.metadata)
        assert ids == sorted(names.index(n) + 1 for n in class_names)
        seen[split] = {int(c) for r in records[split] for c in r["classes"]}
        assert seen[split] == set(ids)
        assert {r["image_id"].decode().split("/")[0] for r in records[split]} == set(class_names)
    assert not (
        seen["train"] & seen["val"] or seen["train"] & seen["test"] or seen["val"] & seen["test"]
    )
    assert names.index("unused") + 1 not in set().union(*seen.values())


def test_manual_dir_from_download_config(tmp_path):
    tree = fake_trees.make_perseg(tmp_path / "perseg")
    builder = BUILDERS["perseg"](data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tree.root))
    )
    assert len(builder.as_data_source()["test"]) == 6
    missing = BUILDERS["pascal5i"](data_dir=str(tmp_path / "tfds2"))
    with pytest.raises(FileNotFoundError, match="manual directory missing or empty"):
        missing.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "nope"))
        )
    _assert_nothing_prepared("pascal5i", tmp_path / "tfds2")


# ---- malformed input -----------------------------------------------------------------------


def _remove(path: Path):
    if path.is_dir():
        for p in sorted(path.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        path.rmdir()
    else:
        path.unlink()


@pytest.mark.parametrize(
    "name, remove, error, message",
    [
        ("pascal5i", "VOC2012/SegmentationClassAug", FileNotFoundError, "mask directory not found"),
        ("pascal5i", "splits/val.txt", FileNotFoundError, "val split list not found"),
        ("coco20i", "annotations/instances_val2014.json", FileNotFoundError, "val annotation file"),
        ("coco20i", "train2014", FileNotFoundError, "train image directory not found"),
        ("fss1000", "splits/test.txt", FileNotFoundError, "test class list not found"),
        ("fss1000", "fewshot_data", FileNotFoundError, "fewshot_data directory not found"),
        ("fss1000", "fewshot_data/dog", ValueError, r"have no directory .*\['dog'\]"),
        ("perseg", "Annotations/can", FileNotFoundError, r"annotation \(can\) directory"),
        ("perseg", "Images", FileNotFoundError, "Images directory not found"),
    ],
)
def test_missing_paths(name, remove, error, message, tmp_path):
    tree = MAKERS[name](tmp_path / "manual")
    _remove(tree.root / remove)
    data_dir = tmp_path / "tfds"
    with pytest.raises(error, match=message) as info:
        build(name, manual_dir=tree.root, data_dir=data_dir)
    text = str(info.value)
    if error is FileNotFoundError:
        assert str(tree.root / remove) in text
        assert "Expected layout" in text
    _assert_nothing_prepared(name, data_dir)


def test_malformed_lists(tmp_path):
    tree = fake_trees.make_fss(tmp_path / "fss")
    (tree.root / "splits" / "val.txt").write_text("ab_wheel\nzebra\n")
    with pytest.raises(ValueError, match="'zebra' is in both train.txt and val.txt"):
        build("fss1000", manual_dir=tree.root, data_dir=tmp_path / "tfds")
    tree = fake_trees.make_pascal(tmp_path / "pascal")
    (tree.root / "splits" / "train.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match=r"train split list .*train.txt lists no entries"):
        build("pascal5i", manual_dir=tree.root, data_dir=tmp_path / "tfds")
    _assert_nothing_prepared("fss1000", tmp_path / "tfds")
    _assert_nothing_prepared("pascal5i", tmp_path / "tfds")


def test_malformed_annotation_file_leaves_nothing(tmp_path):
    tree = fake_trees.make_coco(tmp_path / "coco")
    (tree.root / "annotations" / "instances_val2014.json").write_text('{"images": [')
    data_dir = tmp_path / "tfds"
    with pytest.raises(ValueError, match="cannot parse annotation file .*instances_val2014.json"):
        build("coco20i", manual_dir=tree.root, data_dir=data_dir)
    _assert_nothing_prepared("coco20i", data_dir)


def test_wrong_categories(tmp_path):
    tree = fake_trees.make_coco(tmp_path / "coco")
    path = tree.root / "annotations" / "instances_train2014.json"
    path.write_text(path.read_text().replace('"name": "cup"', '"name": "mug"'))
    with pytest.raises(ValueError, match=r"expected COCO's 80.*\['cup', 'mug'\]"):
        build("coco20i", manual_dir=tree.root, data_dir=tmp_path / "tfds")
    _assert_nothing_prepared("coco20i", tmp_path / "tfds")


def test_build_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'voc'; known: \['coco20i'"):
        build("voc", manual_dir=tmp_path, data_dir=tmp_path)
    with pytest.raises(ValueError, match="manual_dir"):
        build("pascal5i", data_dir=tmp_path)


# ---- corrupt images ------------------------------------------------------------------------


def test_corrupt_images_are_skipped_and_counted(tmp_path, caplog):
    tree = fake_trees.make_pascal(tmp_path / "pascal")
    fake_trees.truncate(tree.files["2010_000002"])
    (tree.root / "VOC2012" / "SegmentationClassAug" / "2007_000005.png").unlink()
    (tree.root / "VOC2012" / "SegmentationClassAug" / "2009_000002.png").write_bytes(b"not a png")
    data_dir = tmp_path / "tfds"
    with caplog.at_level(logging.INFO):
        builder = build("pascal5i", manual_dir=tree.root, data_dir=data_dir)
    records = _read_all("pascal5i", data_dir)
    assert [r["image_id"] for r in records["train"]] == [b"2008_000010"]
    assert [r["image_id"] for r in records["val"]] == [b"2010_000001"]
    skipped = builder.info.metadata["skipped"]
    assert len(skipped["train"]) == 2 and len(skipped["val"]) == 1
    assert "2010_000002.jpg" in skipped["val"][0] and "OSError" in skipped["val"][0]
    assert "2007_000005.png" in skipped["train"][0]
    log = caplog.text
    assert "pascal5i val: 1 images skipped: [" in log and "2010_000002.jpg" in log
    assert "pascal5i train: 2 images skipped: [" in log
    assert "1 images without any class pixel dropped: ['2007_000999']" in log
    # The metadata survives a reload from disk.
    info = tfds.builder("pascal5i", data_dir=str(data_dir)).info
    assert info.metadata["skipped"] == skipped


def test_a_bug_stops_the_build_instead_of_skipping_files(tmp_path, monkeypatch):
    """Only what a bad file raises is skipped; an exception of another kind is a bug."""
    tree = fake_trees.make_pascal(tmp_path / "pascal")
    real = common.read_image

    def buggy(path):
        if "2010_000002" in str(path):
            raise TypeError("a bug in the reader")
        return real(path)

    monkeypatch.setattr(common, "read_image", buggy)
    with pytest.raises(TypeError, match="a bug in the reader"):
        build("pascal5i", manual_dir=tree.root, data_dir=tmp_path / "tfds")
    _assert_nothing_prepared("pascal5i", tmp_path / "tfds")


def test_mask_size_and_values_checked(tmp_path):
    tree = fake_trees.make_perseg(tmp_path / "perseg")
    fake_trees.write_png(tree.root / "Annotations" / "can" / "00.png", np.zeros((10, 10)))
    tree2 = fake_trees.make_pascal(tmp_path / "pascal")
    bad = fake_trees.rect((fake_trees.H, fake_trees.W), (0, 5, 0, 5, 21), (10, 20, 10, 20, 3))
    fake_trees.write_png(tree2.root / "VOC2012" / "SegmentationClassAug" / "2010_000002.png", bad)
    b1 = build("perseg", manual_dir=tree.root, data_dir=tmp_path / "tfds")
    b2 = build("pascal5i", manual_dir=tree2.root, data_dir=tmp_path / "tfds")
    assert "mask shape (10, 10) != image (H, W) (40, 60)" in b1.info.metadata["skipped"]["test"][0]
    assert "mask values [21] are not class ids 0..20" in b2.info.metadata["skipped"]["val"][0]


def test_split_without_readable_images_fails_cleanly(tmp_path):
    tree = fake_trees.make_pascal(tmp_path / "pascal")
    for image_id in ("2010_000001", "2010_000002"):
        fake_trees.truncate(tree.files[image_id], keep=0.3)
    data_dir = tmp_path / "tfds"
    with pytest.raises(ValueError, match=r"pascal5i val: no record written \(2 images skipped"):
        build("pascal5i", manual_dir=tree.root, data_dir=data_dir)
    _assert_nothing_prepared("pascal5i", data_dir)


def test_non_jpeg_images_are_reencoded(tmp_path):
    tree = fake_trees.make_perseg(tmp_path / "perseg")
    path = tree.files["can/00"]
    Image.open(path).convert("CMYK").save(path, format="JPEG")
    expected = np.asarray(Image.open(path).convert("RGB"))
    build("perseg", manual_dir=tree.root, data_dir=tmp_path / "tfds")
    record = _read_all("perseg", tmp_path / "tfds")["test"][2]
    assert record["image_id"] == b"can/00"
    # Converted to RGB and re-encoded as JPEG (quality 95).
    np.testing.assert_array_equal(record["image"], np.asarray(Image.open(encode_jpeg(expected))))


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    tree = fake_trees.make_perseg(tmp_path / "perseg")
    path = tree.files["can/00"]
    h, w = np.asarray(Image.open(path)).shape[:2]
    deep = (np.arange(h * w).reshape(h, w) * 65535 // (h * w)).astype(np.uint16)
    Image.fromarray(deep).save(path, format="PNG")  # a 16-bit PNG where a JPEG was
    build("perseg", manual_dir=tree.root, data_dir=tmp_path / "tfds")
    record = _read_all("perseg", tmp_path / "tfds")["test"][2]
    expected = np.repeat((deep >> 8).astype(np.uint8)[..., None], 3, -1)
    np.testing.assert_array_equal(record["image"], np.asarray(Image.open(encode_jpeg(expected))))
    assert len(np.unique(record["image"])) > 100  # not clipped to white


def test_read_list_formats(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("# c\n a \n/JPEGImages/b.jpg /SegmentationClassAug/b.png\n\na\nc d\n")
    kw = dict(dataset="x", what="list", layout="L")
    assert common.read_list(path, stems=True, **kw) == ["a", "b", "c"]
    assert common.read_list(path, **kw) == [
        "a",
        "/JPEGImages/b.jpg /SegmentationClassAug/b.png",
        "c d",
    ]


def test_builders_registered_with_tfds():
    for name, cls in BUILDERS.items():
        assert tfds.builder_cls(name) is cls
    assert Pascal5i.MANUAL_DOWNLOAD_INSTRUCTIONS == Pascal5i.LAYOUT


# ---- COCO polygon / RLE decoding -----------------------------------------------------------

# Reference outputs of pycocotools 2.0 (`mask.decode(mask.frPyObjects([poly], h, w))`).
TRIANGLE = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 0, 0],
        [0, 1, 1, 1, 1, 0, 0, 0],
        [0, 1, 1, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
    ],
    np.uint8,
)


def test_polygon_hand_made():
    expected = np.zeros((6, 8), np.uint8)
    expected[1:4, 2:6] = 1
    np.testing.assert_array_equal(coco.polygon_to_mask([2, 1, 6, 1, 6, 4, 2, 4], 6, 8), expected)
    expected = np.zeros((6, 8), np.uint8)
    expected[2:5, 3:7] = 1  # half-pixel box: pycocotools' 1/5-pixel rounding
    half = [2.5, 1.5, 6.5, 1.5, 6.5, 4.5, 2.5, 4.5]
    np.testing.assert_array_equal(coco.polygon_to_mask(half, 6, 8), expected)
    np.testing.assert_array_equal(coco.polygon_to_mask([1, 1, 7, 1, 1, 5], 6, 8), TRIANGLE)
    # Clipped at the borders; clockwise and counter-clockwise give the same mask.
    big = [-3, -3, 20, -3, 20, 20, -3, 20]
    assert coco.polygon_to_mask(big, 6, 8).all()
    ccw = [2, 1, 2, 4, 6, 4, 6, 1]
    np.testing.assert_array_equal(
        coco.polygon_to_mask(ccw, 6, 8), coco.polygon_to_mask([2, 1, 6, 1, 6, 4, 2, 4], 6, 8)
    )
    with pytest.raises(ValueError, match="even number of coordinates"):
        coco.polygon_to_mask([1, 2, 3], 6, 8)


def test_segmentation_union_of_polygons():
    seg = [[0, 0, 2, 0, 2, 2, 0, 2], [5, 3, 8, 3, 8, 6, 5, 6], [1, 1, 3, 1, 3, 3, 1, 3]]
    expected = np.zeros((6, 8), np.uint8)
    expected[0:2, 0:2] = expected[3:6, 5:8] = expected[1:3, 1:3] = 1
    np.testing.assert_array_equal(coco.segmentation_to_mask(seg, 6, 8), expected)
    with pytest.raises(ValueError, match="list of"):
        coco.segmentation_to_mask([0, 0, 2, 0, 2, 2], 6, 8)


def test_rle_hand_made():
    rle = {"size": [3, 4], "counts": [1, 2, 3, 6]}
    expected = np.array([[0, 0, 1, 1], [1, 0, 1, 1], [1, 0, 1, 1]], np.uint8)
    np.testing.assert_array_equal(coco.rle_to_mask(rle), expected)
    # pycocotools' encoding of TRIANGLE.
    counts = fake_trees.rle_encode_uncompressed(TRIANGLE)["counts"]
    assert coco.rle_counts_from_string("742O1O100O<") == counts
    np.testing.assert_array_equal(
        coco.rle_to_mask({"size": [6, 8], "counts": "742O1O100O<"}), TRIANGLE
    )
    np.testing.assert_array_equal(
        coco.rle_to_mask({"size": [6, 8], "counts": b"742O1O100O<"}, 6, 8), TRIANGLE
    )
    with pytest.raises(ValueError, match="sum to 11"):
        coco.rle_to_mask({"size": [3, 4], "counts": [1, 2, 8]})
    with pytest.raises(ValueError, match=r"RLE size \[3, 4\] != image size \[4, 3\]"):
        coco.rle_to_mask(rle, 4, 3)
    with pytest.raises(ValueError, match="malformed RLE"):
        coco.rle_to_mask({"counts": [12]})


def test_rle_round_trip_random():
    rng = np.random.default_rng(0)
    for _ in range(30):
        h, w = rng.integers(1, 40, 2)
        mask = (rng.random((h, w)) < rng.uniform(0.05, 0.95)).astype(np.uint8)
        if rng.random() < 0.5:  # long runs too (large counts, negative deltas)
            mask = np.kron(mask[: h // 4 + 1, : w // 4 + 1], np.ones((4, 4), np.uint8))[:h, :w]
        rle = fake_trees.rle_encode_uncompressed(mask)
        np.testing.assert_array_equal(coco.rle_to_mask(rle, *mask.shape), mask)
        compressed = {"size": rle["size"], "counts": fake_trees.rle_compress(rle["counts"])}
        assert coco.rle_counts_from_string(compressed["counts"]) == rle["counts"]
        np.testing.assert_array_equal(coco.rle_to_mask(compressed), mask)


def test_class_mask_overlap_rule():
    big = {"id": 5, "category_id": 67, "segmentation": [[0, 0, 8, 0, 8, 6, 0, 6]]}
    small = {"id": 9, "category_id": 47, "segmentation": [[2, 2, 4, 2, 4, 4, 2, 4]]}
    tie_a = {"id": 1, "category_id": 1, "segmentation": [[5, 0, 7, 0, 7, 2, 5, 2]]}
    tie_b = {"id": 2, "category_id": 2, "segmentation": [[5, 0, 7, 0, 7, 2, 5, 2]]}
    cls = {67: 61, 47: 42, 1: 1, 2: 2}
    for order in ([big, small, tie_a, tie_b], [tie_b, small, tie_a, big]):
        mask = coco.class_mask(order, 6, 8, cls)
        assert (mask[2:4, 2:4] == 42).all()
        assert (mask[0:2, 5:7] == 2).all()  # equal areas: the higher annotation id on top
        assert (mask == 61).sum() == 48 - 4 - 4
    with pytest.raises(ValueError, match="unknown category_id 3"):
        coco.class_mask([{"id": 1, "category_id": 3, "segmentation": []}], 6, 8, cls)


def test_polygons_match_pycocotools():
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for t in range(300):
        h, w = (int(v) for v in rng.integers(1, 80, 2))
        n = int(rng.integers(3, 30))
        if t % 2:
            poly = np.stack([rng.uniform(-5, w + 5, n), rng.uniform(-5, h + 5, n)], 1)
        else:
            angle = np.sort(rng.uniform(0, 2 * np.pi, n))
            r = rng.uniform(0, max(h, w) / 2, n)
            centre = rng.uniform(0, [w, h])
            poly = centre + r[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
        poly = poly.ravel().tolist()
        ref = mask_api.decode(mask_api.frPyObjects([poly], h, w))[:, :, 0]
        np.testing.assert_array_equal(coco.polygon_to_mask(poly, h, w), ref)
