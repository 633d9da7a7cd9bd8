"""SAMIC's "sam_greedy" points (`jaxvrp.point_store`): computed once per (record, class) by
the precompute pass, equal to the greedy rule run on the episodes' own masks, served to the
batches by record and class, resumable and split over hosts, keyed, and clear errors."""

import numpy as np
import pytest

from configs import samic as samic_configs
from jaxvrp import evaluate, point_store, precompute
from jaxvrp.learners import mask_points, samic


def _config(tmp, **model):
    config = samic_configs.get_config("runlocal")
    config.unlock()
    config.data.data_dir = str(tmp / "tfds")
    config.data.feature_cache = str(tmp / "features")
    config.batch_size = 8  # the 8 simulated devices
    config.model.point_source = "sam_greedy"
    config.model.greedy_random = 2  # seeded random candidates too: the seed rule is tested
    config.model.update(model)
    config.lock()
    return config


def _lconfig(config):
    return samic.make_config(**config.model.to_dict())


def _eval_batch(config):
    from jaxvrp.data import datasets

    return next(iter(datasets.eval_episodes(config, 0, 1, config.batch_size)))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """The runlocal SAMIC evaluated on stored greedy points (`data.precompute=True`: the
    evaluator runs the pass first), and a second pass over the same store."""
    tmp = tmp_path_factory.mktemp("points")
    config = _config(tmp)
    with config.unlocked():
        config.data.precompute = True
    result = evaluate.evaluate(config)
    again = precompute.precompute(config, progress=False, which=(1,))
    return config, result, again


def test_the_evaluator_runs_the_pass_and_reads_the_points(evaluated):
    config, result, again = evaluated
    store = point_store.point_store(config, _lconfig(config), "procedural", "test")
    found = point_store.pairs(config, (1,))[0][2]
    assert len(found) > 8 and {(r, c) for r, c in found} == {
        tuple(int(v) for v in p.stem.split("_")) for p in store.dir.glob("*.npy")
    }
    assert result["episodes"] == 8 and 0.0 <= result["miou"] <= 1.0
    want = {"computed": 0, "skipped": len(found), "bytes": store.entry_bytes() * len(found)}
    assert again["points"] == want


def test_served_points_are_the_greedy_points_of_the_episode_masks(evaluated):
    """Each reference's and target's points, read by (record, class), are what the greedy
    rule gives on that episode's own mask and image, with the frozen SAM, seeded by
    [points_seed, record, class]."""
    from jaxvrp import frozen as frozen_lib
    from jaxvrp.learners.protocol import FrozenSpec

    config, *_ = evaluated
    lconfig = _lconfig(config)
    batch = _eval_batch(config)
    out = point_store.PointReader(config, lconfig, 1)(batch)
    b, k = batch["support_records"].shape
    assert out["support_points"].shape == (b, k, lconfig.max_points, 2)
    assert out["query_point_valid"].shape == (b, lconfig.max_points)
    predict = samic.greedy_predict(
        frozen_lib.load(config, FrozenSpec(sam=lconfig.sam))["sam"], lconfig
    )

    def direct(mask, image, record, class_id):
        pts, _ = mask_points.sam_greedy_points(
            mask,
            predict(image),
            max_points=lconfig.max_points,
            seed=[lconfig.points_seed, int(record), int(class_id)],
            **samic.greedy_options(lconfig),
        )
        return mask_points.pad_points(pts, lconfig.max_points)

    some = 0
    for i in range(3):
        c = batch["class_id"][i]
        want = direct(batch["query_mask"][i], batch["query_image"][i], batch["query_record"][i], c)
        np.testing.assert_array_equal(out["query_points"][i], want[0])
        np.testing.assert_array_equal(out["query_point_valid"][i], want[1])
        ref = batch["support_records"][i, 0]
        want = direct(batch["support_annotations"][i, 0], batch["support_images"][i, 0], ref, c)
        np.testing.assert_array_equal(out["support_points"][i, 0], want[0])
        np.testing.assert_array_equal(out["support_point_valid"][i, 0], want[1])
        some += int(want[1].sum())
    assert some > 0  # not all empty
    # prepare keeps the served keys
    prepared = samic.prepare(out, lconfig)
    assert prepared["support_points"] is out["support_points"]


def test_hosts_split_the_pairs_and_an_interrupted_pass_resumes(tmp_path, evaluated):
    config, *_ = evaluated
    fresh = _config(tmp_path)
    with fresh.unlocked():
        fresh.data.data_dir = config.data.data_dir  # the same build
    lconfig = _lconfig(fresh)
    found = point_store.pairs(fresh, (1,))[0][2]
    store = point_store.point_store(fresh, lconfig, "procedural", "test")
    real, calls = mask_points.mask_points, []

    def interrupted(*args, **kw):
        if len(calls) == 5:
            raise KeyboardInterrupt("interrupted")
        calls.append(1)
        return real(*args, **kw)

    def run(**kw):
        return point_store.precompute_points(fresh, lconfig, which=(1,), progress=False, **kw)

    mask_points.mask_points = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            run(process_index=0, process_count=2)
    finally:
        mask_points.mask_points = real
    written = lambda: {tuple(int(v) for v in p.stem.split("_")) for p in store.dir.glob("*.npy")}
    assert written() == set(found[0::2][:5])
    host1 = run(process_index=1, process_count=2)
    assert host1["computed"] == len(found[1::2]) and written() == set(found[:10:2]) | set(
        found[1::2]
    )
    one = run()
    assert one["computed"] == len(found[0::2]) - 5 and written() == set(found)
    assert not list(store.dir.glob(".*tmp*"))
    # the same entries as the evaluator's pass
    theirs = point_store.point_store(config, _lconfig(config), "procedural", "test")
    records, classes = zip(*found, strict=True)
    for a, b in zip(store.points(records, classes), theirs.points(records, classes), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_rule_sam_and_build_are_in_the_key(tmp_path, evaluated):
    config, *_ = evaluated
    base = point_store.points_key(config, _lconfig(config), "procedural", "test")
    for change in (
        {"greedy_min_gain": 0.02},
        {"greedy_candidates": 4},
        {"greedy_random": 0},
        {"max_points": 2},
        {"points_seed": 1},
        {"multimask_output": True},
        {"sam": "test_tiny"},
    ):
        other = _config(tmp_path, **change)
        with other.unlocked():
            other.data.data_dir = config.data.data_dir
        assert point_store.points_key(other, _lconfig(other), "procedural", "test") != base, change
    seeded = _config(tmp_path)
    with seeded.unlocked():
        seeded.data.data_dir, seeded.frozen.seed = config.data.data_dir, 5
    assert point_store.points_key(seeded, _lconfig(seeded), "procedural", "test") != base
    sized = _config(tmp_path)
    with sized.unlocked():
        sized.data.data_dir, sized.data.image_size = config.data.data_dir, 48
    assert point_store.points_key(sized, _lconfig(sized), "procedural", "test") != base


def test_missing_store_entry_annotation_and_cache_are_clear_errors(tmp_path, evaluated):
    config, *_ = evaluated
    lconfig = _lconfig(config)
    batch = _eval_batch(config)
    with pytest.raises(ValueError, match="feature_cache.*jaxvrp.precompute"):
        samic.prepare(batch, lconfig)
    empty = _config(tmp_path)
    with empty.unlocked():
        empty.data.data_dir = config.data.data_dir
    reader = point_store.PointReader(empty, lconfig, 1)
    entry = (int(batch["support_records"][0, 0]), int(batch["class_id"][0]))
    with pytest.raises(FileNotFoundError, match=str(reader.store.path(entry))):
        reader(batch)
    with pytest.raises(KeyError, match="support_records"):
        reader({k: v for k, v in batch.items() if k != "support_records"})
    boxes = _config(tmp_path)
    with boxes.unlocked():
        boxes.data.annotation = "box"
    with pytest.raises(ValueError, match="annotation is 'box'"):
        point_store.PointReader(boxes, lconfig, 1)
    with pytest.raises(ValueError, match="point_source must be one of"):
        samic.make_config(**{**config.model.to_dict(), "point_source": "random"})


def test_greedy_points_of_a_batch_by_hand_as_segment_uses_them(evaluated):
    """`samic.greedy_points` (what `jaxvrp segment` computes for its references) gives the
    greedy rule's points of each reference mask, and `prepare` keeps them."""
    from jaxvrp import frozen as frozen_lib
    from jaxvrp.learners.protocol import FrozenSpec

    config, *_ = evaluated
    lconfig = _lconfig(config)
    batch = _eval_batch(config)
    support = {k: batch[k][:1] for k in ("support_images", "support_annotations")}
    sam = frozen_lib.load(config, FrozenSpec(sam=lconfig.sam))["sam"]
    out = samic.greedy_points(support, sam, lconfig)
    pts, _ = mask_points.sam_greedy_points(
        support["support_annotations"][0, 0],
        samic.greedy_predict(sam, lconfig)(support["support_images"][0, 0]),
        max_points=lconfig.max_points,
        seed=lconfig.points_seed,
        **samic.greedy_options(lconfig),
    )
    want = mask_points.pad_points(pts, lconfig.max_points)
    np.testing.assert_array_equal(out["support_points"][0, 0], want[0])
    np.testing.assert_array_equal(out["support_point_valid"][0, 0], want[1])
    assert samic.prepare(out, lconfig)["support_points"] is out["support_points"]


def test_training_runs_the_pass_on_its_subset_and_trains_on_the_points(tmp_path, evaluated):
    import json

    from jaxvrp import train

    config, *_ = evaluated
    cfg = _config(tmp_path)
    with cfg.unlocked():
        cfg.data.data_dir = config.data.data_dir
        cfg.data.precompute = True
        cfg.data.train_fraction = 0.05  # each base class: its shots + 1 records at least
        cfg.model.num_4d_layers = 1
        cfg.steps_per_epoch, cfg.log_every, cfg.checkpoint_every = 1, 1, 1
    train.train(cfg, tmp_path / "w")
    (line,) = [json.loads(x) for x in open(tmp_path / "w" / "metrics.jsonl")]
    assert line["step"] == 1 and np.isfinite(line["loss"])
    found = point_store.pairs(cfg, (0,))[0][2]
    with cfg.unlocked():
        cfg.data.train_fraction = 1.0
    everything = point_store.pairs(cfg, (0,))[0][2]
    assert set(found) < set(everything)  # only the pairs the subset's episodes can draw
    store = point_store.point_store(cfg, _lconfig(cfg), "procedural", "train")
    assert len(list(store.dir.glob("*.npy"))) == len(found)  # the key has no fraction
