"""Precomputed frozen SAM embeddings (`jaxvrp.precompute`): the same training and evaluation
as running the encoder in the step, resumable, keyed so stale features are never read, and
clear errors naming the file."""

import json
import os
import shutil
import sys

import numpy as np
import pytest

from jaxvrp import assets, evaluate, precompute
from jaxvrp.learners import vrp
from tests import processes

RUNNER = os.path.join(os.path.dirname(__file__), "train_runner.py")


def _config(tmp, **data):
    from configs import vrp_sam

    config = vrp_sam.get_config("runlocal")
    config.data.data_dir = str(tmp / "tfds")
    config.batch_size = 8  # the 8 simulated devices
    for k, v in data.items():
        config.data[k] = v
    return config


def _sam(config):
    return vrp.make_config(**config.model.to_dict()).sam


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """The evaluation split's store filled as host 0 of 2 (interrupted after 3 encoder
    calls), host 1 of 2, then one host twice; the record sets and stats of each pass."""
    tmp = tmp_path_factory.mktemp("precompute")
    config = _config(tmp, feature_cache=str(tmp / "features"))
    calls, limit = [], [3]
    real = precompute._encode

    def counting(*args):
        if limit[0] is not None and len(calls) == limit[0]:
            raise KeyboardInterrupt("interrupted")
        calls.append(1)
        return real(*args)

    def records():
        return {int(p.stem) for p in (tmp / "features").glob("*/*.npy")}

    run = lambda **kw: precompute.precompute(config, progress=False, which=(1,), **kw)
    precompute._encode = counting
    try:
        with pytest.raises(KeyboardInterrupt):
            run(process_index=0, process_count=2)
        host0 = (len(calls), records())
        limit[0] = None
        host1 = (run(process_index=1, process_count=2), records())
        one, again = run(), run()
    finally:
        precompute._encode = real
    return tmp, config, host0, host1, one, again


def test_hosts_split_the_records_and_an_interrupted_pass_resumes(filled):
    from jaxvrp.data import datasets

    tmp, config, (calls0, after0), (stats1, after1), one, again = filled
    n = len(datasets.source(config, "procedural", "test"))
    per_call = 8  # 1 per device
    assert calls0 == 3 and after0 == set(range(0, 2 * 3 * per_call, 2))  # host 0: even ones
    assert stats1["computed"] == n // 2 and after1 == after0 | set(range(1, n, 2))
    assert stats1["encoder_calls"] == -(-(n // 2) // per_call)
    # one host: only what host 0 did not finish
    assert one["computed"] == (n + 1) // 2 - len(after0) and one["skipped"] == len(after1)
    assert again == {"computed": 0, "skipped": n, "encoder_calls": 0, "bytes": 0}
    assert len(list((tmp / "features").glob("*/*.npy"))) == n
    assert not list((tmp / "features").glob("*/.*tmp*"))  # no temporary file left behind
    assert [s for _, s in precompute.splits_of(config)] == ["train", "test"]  # the plan's


def test_entries_are_the_encoder_output_of_the_episode_image(filled):
    from jaxvrp import frozen as frozen_lib
    from jaxvrp.data import datasets, episodes
    from jaxvrp.learners import frozen_sam

    _, config, *_ = filled
    sam = _sam(config)
    store = precompute.sam_store(config, sam, "procedural", "test")
    src = datasets.source(config, "procedural", "test")
    image = episodes.load_example(src, 5, 0, config.data.image_size)[0]
    params = frozen_lib.load(config, frozen_lib.FrozenSpec(sam=sam))["sam"]
    want = np.asarray(frozen_sam.image_embeddings(params, image[None], sam))[0]
    np.testing.assert_allclose(store.get(5), want, rtol=1e-5, atol=1e-6)


def test_evaluation_on_precomputed_features_is_identical(filled):
    tmp, config, *_ = filled
    logits = {}

    def keep(name):
        return lambda batch, out: logits.setdefault(name, []).append(out)

    plain = evaluate.evaluate(config, on_batch=keep("plain"))
    calls = []
    real = precompute._encode
    precompute._encode = lambda *a: calls.append(1) or real(*a)
    try:
        cached_config = _config(tmp, feature_cache=config.data.feature_cache, precompute=True)
        cached = evaluate.evaluate(cached_config, on_batch=keep("cached"))
    finally:
        precompute._encode = real
    assert not calls  # everything was already there
    a, b = np.concatenate(logits["plain"]), np.concatenate(logits["cached"])
    err = np.abs(a - b).max()
    assert err <= 1e-5 * np.abs(a).max(), err
    assert cached["per_class_iou"] == pytest.approx(plain["per_class_iou"], abs=1e-9)


def _command(tmp, name, *overrides) -> list[str]:
    cmd = [sys.executable, RUNNER, str(tmp / name), str(tmp / f"{name}.npz"), "1"]
    return [*cmd, f"data.data_dir={tmp / 'tfds'}", *overrides]


def test_training_on_precomputed_features_gives_the_same_params(tmp_path):
    """3 steps (float32, 1 device) with the encoder in the step and with the features
    precomputed by the trainer itself (data.precompute=True); the two runs at once."""
    steps = ["epochs=1", "steps_per_epoch=3"]
    cache = f"data.feature_cache={tmp_path / 'features'}"
    processes.build_procedural(tmp_path / "tfds")
    processes.run_together(
        [
            _command(tmp_path, "plain", *steps),
            _command(tmp_path, "cached", *steps, cache, "data.precompute=True"),
        ]
    )
    plain, cached = (dict(np.load(tmp_path / f"{n}.npz")) for n in ("plain", "cached"))
    assert sorted((tmp_path / "features").glob("*/*.npy"))  # the trainer wrote them
    keys = [k for k in plain if k != "losses"]
    assert keys and set(keys) == {k for k in cached if k != "losses"}
    # The encoder compiled apart from the step rounds differently in the last bit: the
    # losses were bitwise equal at XLA's default optimisation level and differ by one float32
    # ulp at step 3 at the suite's level 0 (8.4e-8 relative, measured); the params measured
    # <= 2e-6 absolute after 3 steps, the worst in the attention k_proj biases, whose true
    # gradient is 0 (softmax ignores a key bias) so Adam scales rounding noise up; 5e-6 is
    # 5 % of one AdamW step (lr 1e-4).
    np.testing.assert_allclose(cached["losses"], plain["losses"], rtol=1e-6, atol=0)
    for k in keys:
        np.testing.assert_allclose(cached[k], plain[k], rtol=0, atol=5e-6, err_msg=k)


def test_a_changed_sam_checkpoint_dtype_or_build_is_another_key(tmp_path, filled):
    tmp, config, *_ = filled
    sam = _sam(config)
    base = precompute.sam_store(config, sam, "procedural", "test")
    assert base.has(0)
    # the SAM checkpoint's bytes
    ckpt = tmp_path / "sam"
    shutil.copytree(assets.default_sam_dir(), ckpt)
    with_ckpt = _config(tmp, feature_cache=config.data.feature_cache)
    with_ckpt.frozen.sam_checkpoint = str(ckpt)
    a = precompute.sam_store(with_ckpt, sam, "procedural", "test")
    fixed = precompute.sha256_of_checkpoint(assets.default_sam_dir())
    assert precompute.sha256_of_checkpoint(ckpt) == fixed  # the embedded SAM's fixed hash
    victim = max((p for p in ckpt.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))
    precompute._SHA_CACHE.clear()  # same size, maybe the same mtime: force a re-hash
    b = precompute.sam_store(with_ckpt, sam, "procedural", "test")
    assert len({base.dir, a.dir, b.dir}) == 3 and not b.has(0)
    # the SAM's compute dtype (and with it the storage dtype allowed)
    bf16 = vrp.make_config(**{**config.model.to_dict(), "sam_dtype": "bfloat16"}).sam
    c = precompute.sam_store(config, bf16, "procedural", "test")
    bf16_config = _config(tmp, feature_cache=config.data.feature_cache, feature_dtype="bfloat16")
    d = precompute.sam_store(bf16_config, bf16, "procedural", "test")
    assert len({base.dir, c.dir, d.dir}) == 3 and not c.has(0) and not d.has(0)
    # the dataset build: a shard's size, a shard's name, dataset_info.json
    build = tmp_path / "build"
    shutil.copytree(precompute.build_dir(config, "procedural"), build)
    fp = precompute.build_fingerprint(build)
    assert fp == base.key["build"]
    shard = next(p for p in build.rglob("*array_record*") if p.is_file())
    with open(shard, "ab") as f:
        f.write(b"\0")
    grown = precompute.build_fingerprint(build)
    shard.rename(shard.with_name(shard.name + "x"))
    renamed = precompute.build_fingerprint(build)
    info = next(build.rglob("dataset_info.json"))
    info.write_text(info.read_text().replace("{", '{"x": 1, ', 1))
    edited = precompute.build_fingerprint(build)
    assert len({fp, grown, renamed, edited}) == 4


def test_bfloat16_storage_is_exact_for_a_bf16_sam_and_refused_for_float32(tmp_path, filled):
    import ml_dtypes

    tmp, config, *_ = filled
    bf16 = vrp.make_config(**{**config.model.to_dict(), "sam_dtype": "bfloat16"}).sam
    bf16_config = _config(tmp, feature_cache=str(tmp_path / "f"), feature_dtype="bfloat16")
    store = precompute.sam_store(bf16_config, bf16, "procedural", "test")
    value = np.random.default_rng(0).normal(size=store.shape).astype(ml_dtypes.bfloat16)
    store.put(3, value.astype(np.float32))
    assert store.path(3).stat().length == store.entry_bytes()  # 2 bytes a value
    np.testing.assert_array_equal(store.get(3), value.astype(np.float32))
    with pytest.raises(ValueError, match="sam_dtype='bfloat16'"):
        precompute.sam_store(bf16_config, _sam(config), "procedural", "test")


def test_bad_cache_dir_and_unreadable_entries_name_the_file(tmp_path, filled):
    tmp, config, *_ = filled
    sam = _sam(config)
    not_dir = tmp_path / "a_file"
    not_dir.write_text("x")
    with pytest.raises(NotADirectoryError, match=str(not_dir)):
        precompute.sam_store(_config(tmp, feature_cache=str(not_dir)), sam, "procedural", "test")
    empty = _config(tmp, feature_cache=str(tmp_path / "empty"))
    store = precompute.sam_store(empty, sam, "procedural", "test")
    with pytest.raises(FileNotFoundError, match=f"{store.path(7)}.*jaxvrp.precompute"):
        store.get(7)
    store.path(7).write_bytes(b"not a npy file")
    with pytest.raises(ValueError, match=f"unreadable precomputed feature {store.path(7)}"):
        store.get(7)
    np.save(store.path(8), np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=f"{store.path(8)} is float32"):
        store.get(8)
    # a key.json that is not this key's (a hash collision) is refused, naming it
    key = json.loads((store.dir / "key.json").read_text())
    (store.dir / "key.json").write_text(json.dumps({**key, "split": "other"}))
    with pytest.raises(ValueError, match="key.json holds another key"):
        precompute.sam_store(empty, sam, "procedural", "test")
    with pytest.raises(ValueError, match="feature_cache"):
        precompute.reader(_config(tmp, precompute=True), vrp_learner(), None, 0)


def vrp_learner():
    from jaxvrp.learners import registry

    return registry.get("vrp_sam")
