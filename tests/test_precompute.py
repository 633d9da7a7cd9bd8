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
    got = store.get(5)
    # the pass's jitted, batched program against this eager call: float32 rounding only
    # (measured: relative L2 4.2e-7, one element of 16384 off by 1.3e-6 at a value 0.016);
    # another record's embedding or a wrong preprocessing is off by O(1)
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_evaluation_on_precomputed_features_is_identical(filled, stored):
    """The SAM embeddings alone, and with the backbone's stages (`stored`)."""
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
        with_stages = _config(
            tmp,
            feature_cache=config.data.feature_cache,
            precompute=True,
            backbone_features=True,
        )
        staged = evaluate.evaluate(with_stages, on_batch=keep("staged"))
    finally:
        precompute._encode = real
    assert not calls  # everything was already there
    a = np.concatenate(logits["plain"])
    for name, result in (("cached", cached), ("staged", staged)):
        b = np.concatenate(logits[name])
        err = np.abs(a - b).max()
        assert err <= 1e-5 * np.abs(a).max(), (name, err)
        assert result["per_class_iou"] == pytest.approx(plain["per_class_iou"], abs=1e-9), name


def _command(tmp, name, *overrides) -> list[str]:
    cmd = [sys.executable, RUNNER, str(tmp / name), str(tmp / f"{name}.npz"), "1"]
    return [*cmd, f"data.data_dir={tmp / 'tfds'}", *overrides]


def test_training_on_precomputed_features_gives_the_same_params(tmp_path):
    """3 steps (float32, 1 device) with the encoder and the backbone in the step and with
    the SAM embeddings and the backbone's stages precomputed by the trainer itself
    (data.precompute=True, data.backbone_features=True); the two runs at once."""
    steps = ["epochs=1", "steps_per_epoch=3"]
    cache = f"data.feature_cache={tmp_path / 'features'}"
    processes.build_procedural(tmp_path / "tfds")
    processes.run_together(
        [
            _command(tmp_path, "plain", *steps),
            _command(
                tmp_path,
                "cached",
                *steps,
                cache,
                "data.precompute=True",
                "data.backbone_features=True",
            ),
        ]
    )
    plain, cached = (dict(np.load(tmp_path / f"{n}.npz")) for n in ("plain", "cached"))
    written = {
        p.parent.name.split("_procedural")[0] for p in (tmp_path / "features").glob("*/*.npy")
    }
    assert written == {"sam", "backbone_layer2", "backbone_layer3", "backbone_layer4"}
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


# ---------------------------------------------------------------- backbone stages


@pytest.fixture(scope="module")
def stored(filled):
    """The evaluation split's backbone stages written into `filled`'s store (its SAM
    embeddings are all there: only the stages are computed), then a second pass."""
    tmp, config, *_ = filled
    bb_config = _config(tmp, feature_cache=config.data.feature_cache, backbone_features=True)
    first = precompute.precompute(bb_config, progress=False, which=(1,))
    second = precompute.precompute(bb_config, progress=False, which=(1,))
    return bb_config, first, second


def _stage_stores(config):
    learner = vrp_learner()
    lconfig = learner.make_config(**config.model.to_dict())
    stages = precompute.backbone_stages(config, learner, lconfig)
    spec = learner.frozen(lconfig)
    return stages, precompute.backbone_stores(
        config, spec, ("layer2", "layer3", "layer4"), "procedural", "test"
    )


def test_stored_stages_are_the_backbone_output_of_the_episode_image(stored):
    from jaxvrp import backbones
    from jaxvrp import frozen as frozen_lib
    from jaxvrp.data import datasets, episodes

    config, first, second = stored
    n = len(datasets.source(config, "procedural", "test"))
    assert first["computed"] == 0 and first["skipped"] == n  # the SAM's: all there
    assert first["backbone"]["computed"] == n and first["backbone"]["encoder_calls"] == -(-n // 8)
    assert second["backbone"] == {"computed": 0, "skipped": n, "encoder_calls": 0, "bytes": 0}
    stages, stores = _stage_stores(config)
    assert stages == {"query": ("layer2", "layer3", "layer4"), "support": ("layer2", "layer3")}
    assert {s.dir.name.rsplit("_", 3)[0] for s in stores.values()} == {
        "backbone_layer2",
        "backbone_layer3",
        "backbone_layer4",
    }
    lconfig = vrp_learner().make_config(**config.model.to_dict())
    params = frozen_lib.load(config, vrp.frozen_spec(lconfig))["backbone"]
    src = datasets.source(config, "procedural", "test")
    for record in (0, 5, n - 1):
        image = episodes.load_example(src, record, 0, config.data.image_size)[0]
        want = backbones.apply(params, image[None], config=lconfig.backbone)
        for stage, store in stores.items():
            assert store.shape == want[stage].shape[1:]
            np.testing.assert_allclose(store.get(record), want[stage][0], rtol=1e-5, atol=1e-6)


def test_the_reader_adds_query_and_support_stages_by_record(stored):
    from jaxvrp.data import datasets

    config, *_ = stored
    learner = vrp_learner()
    lconfig = learner.make_config(**config.model.to_dict())
    read = precompute.reader(config, learner, lconfig, 1)
    batch = next(iter(datasets.eval_episodes(config, 0, 1, 4)))
    assert batch["support_records"].shape == (4, 1) and batch["support_records"].dtype == np.int64
    out = read(batch)
    _, stores = _stage_stores(config)
    for s in ("layer2", "layer3", "layer4"):
        np.testing.assert_array_equal(
            out[f"query_features/{s}"], stores[s].get_many(batch["query_record"])
        )
    for s in ("layer2", "layer3"):
        got = out[f"support_features/{s}"]
        assert got.shape == (4, 1, *stores[s].shape)
        np.testing.assert_array_equal(got[2, 0], stores[s].get(batch["support_records"][2, 0]))
    assert "support_features/layer4" not in out  # the reference's layer4 runs in the step
    from jaxvrp import train

    spec = train.batch_spec(config)
    for k, v in out.items():
        if "_features/" in k:
            assert spec[k].shape[1:] == v.shape[1:] and spec[k].dtype == v.dtype, k
    with pytest.raises(KeyError, match="support_records"):
        read({k: v for k, v in batch.items() if k != "support_records"})


def _conv_inputs(jaxpr) -> list[tuple[int, ...]]:
    """Input shapes of every convolution in a jaxpr and its sub-jaxprs."""
    found = []

    def walk(j):
        for eqn in j.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                found.append(tuple(eqn.invars[0].aval.shape))
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jaxpr)
    return found


@pytest.mark.parametrize("name", ["vrp_sam", "prosam"])
def test_stored_stages_give_the_same_output_and_run_only_the_support_layer4(name, monkeypatch):
    """On random weights: the learner's logits with the stored stages in the batch equal
    those with the backbone in the step (the losses: the training test below); the
    backbone then runs once, layer4 only, on the masked references' layer3, and the
    gradient's jaxpr has no convolution on 3-channel images (no stem) and lacks exactly the
    convolutions of the query's full pass and of the references' layer0-3."""
    import jax

    from jaxvrp import backbones
    from jaxvrp.learners import registry
    from jaxvrp.sam import get_config as sam_config
    from jaxvrp.sam import init as sam_init
    from tests.learners.common import BACKBONE, SAM, make_batch

    learner = registry.get(name)
    lconfig = learner.make_config(backbone=BACKBONE, sam=SAM, num_queries=4)
    # jitted: one compile each instead of op-by-op dispatch
    params = jax.jit(lambda k: learner.init(k, lconfig))(jax.random.key(0))
    frozen = {
        "sam": jax.jit(lambda k: sam_init(k, sam_config(SAM)))(jax.random.key(1)),
        "backbone": jax.jit(lambda k: backbones.init(k, backbones.get_config(BACKBONE)))(
            jax.random.key(2)
        ),
    }
    batch = make_batch(b=2, k=2, seed=3)
    lconfig_vrp = lconfig.vrp if name == "prosam" else lconfig
    bb = lconfig_vrp.backbone
    emb = jax.jit(lambda p, x: vrp.sam_embeddings(p, x, lconfig_vrp))(
        frozen["sam"], batch["query_image"]
    )
    batch["query_embedding"] = np.asarray(emb)  # both runs: only the backbone differs
    with_stages = vrp.with_stored_stages(batch, frozen["backbone"], bb)
    support = {s: with_stages[f"support_features/{s}"] for s in vrp.SUPPORT_STAGES}
    rng = jax.random.key(7)
    apply = jax.jit(lambda p, b: learner.apply(p, frozen, b, config=lconfig, rng=rng))
    la, lb = np.asarray(apply(params, batch)), np.asarray(apply(params, with_stages))
    np.testing.assert_allclose(lb, la, rtol=0, atol=1e-5 * np.abs(la).max())

    calls = []
    real = backbones.apply
    monkeypatch.setattr(
        backbones, "apply", lambda p, x, **kw: calls.append((x.shape, kw)) or real(p, x, **kw)
    )
    grad = lambda b: jax.grad(lambda p: learner.loss_fn(p, frozen, b, config=lconfig, rng=rng)[0])
    plain = jax.make_jaxpr(grad(batch))(params)
    n_plain = len(calls)
    calls.clear()
    cached = jax.make_jaxpr(grad(with_stages))(params)
    assert n_plain >= 3  # query, support to layer3, support layer4
    assert len(calls) == 1, calls
    shape, kw = calls[0]
    assert kw["start"] == "layer4" and shape == (4, *support["layer3"].shape[2:])
    assert any(s[-1] == 3 for s in _conv_inputs(plain.jaxpr))  # the stems, without stages
    convs = _conv_inputs(cached.jaxpr)
    assert not any(s[-1] == 3 for s in convs), convs
    # exactly the query's full pass and the references' layer0-3 convolutions are gone
    conv_count = lambda f, x: len(_conv_inputs(jax.make_jaxpr(f)(x).jaxpr))
    q_convs = conv_count(lambda x: real(frozen["backbone"], x, config=bb), batch["query_image"])
    s_convs = conv_count(
        lambda x: real(frozen["backbone"], x, config=bb, stop="layer3"),
        batch["support_images"].reshape(4, 64, 64, 3),
    )
    assert len(_conv_inputs(plain.jaxpr)) - len(convs) == q_convs + s_convs


def test_a_changed_backbone_checkpoint_dtype_or_build_is_another_key(tmp_path, stored, monkeypatch):
    import dataclasses

    from jaxvrp import backbones
    from jaxvrp.learners.protocol import FrozenSpec

    config, *_ = stored
    lconfig = vrp_learner().make_config(**config.model.to_dict())
    spec = vrp.frozen_spec(lconfig)
    dirs = lambda c, sp=spec: precompute.backbone_stores(c, sp, ("layer3",), "procedural", "test")[
        "layer3"
    ]
    base = dirs(config)
    assert base.has(0) and base.key["backbone_checkpoint"] == "random:frozen.seed=0"
    assert base.key["backbone_input"] == [config.data.image_size] * 2
    other = []
    # the random backbone's seed
    seeded = _config(tmp_path, feature_cache=config.data.feature_cache, backbone_features=True)
    seeded.frozen.seed = 1
    other.append(dirs(seeded))
    # a checkpoint's bytes
    ckpt = tmp_path / "backbone"
    ckpt.mkdir()
    (ckpt / "params.msgpack").write_bytes(b"weights" * 100)
    with_ckpt = _config(tmp_path, feature_cache=config.data.feature_cache, backbone_features=True)
    with_ckpt.frozen.backbone_checkpoint = str(ckpt)
    other.append(dirs(with_ckpt))
    (ckpt / "params.msgpack").write_bytes(b"weightz" * 100)
    precompute._SHA_CACHE.clear()
    other.append(dirs(with_ckpt))
    # the backbone's compute dtype; bf16 storage only for a bf16 backbone
    bf16 = FrozenSpec(spec.sam, dataclasses.replace(spec.backbone, dtype="bfloat16"))
    other.append(dirs(config, bf16))
    bf16_storage = _config(
        tmp_path,
        feature_cache=config.data.feature_cache,
        backbone_features=True,
        feature_dtype="bfloat16",
    )
    other.append(dirs(bf16_storage, bf16))
    with pytest.raises(ValueError, match="float32 backbone's stages lossily"):
        dirs(bf16_storage)
    # a SAM-encoder backbone is keyed by the SAM's checkpoint
    sam_bb = FrozenSpec(spec.sam, backbones.get_config("sam_test_small_image"))
    assert dirs(config, sam_bb).key["backbone_checkpoint"].startswith("sam_encoder:random:")
    # the dataset build
    monkeypatch.setattr(precompute, "split_fingerprint", lambda *a: "another build")
    other.append(dirs(config))
    assert len({base.dir, *(o.dir for o in other)}) == 1 + len(other)
    assert not any(o.has(0) for o in other)


def test_backbone_stages_refused_or_missing_are_clear_errors(tmp_path, stored):
    config, *_ = stored
    learner = vrp_learner()
    lconfig = learner.make_config(**config.model.to_dict())
    empty = _config(tmp_path, feature_cache=str(tmp_path / "empty"), backbone_features=True)
    read = precompute.reader(empty, learner, lconfig, 1)
    batch = {"query_record": np.array([3]), "support_records": np.array([[4]])}
    with pytest.raises(FileNotFoundError, match=r"no precomputed feature .*sam_procedural_test"):
        read(batch)
    read.store = None  # the stages alone
    with pytest.raises(FileNotFoundError, match=r"backbone_layer2_procedural_test_\w+/3\.npy"):
        read(batch)
    with pytest.raises(ValueError, match="needs config.data.feature_cache"):
        precompute.reader(_config(tmp_path, backbone_features=True), learner, lconfig, 1)
    # Matcher reads a backbone (DINOv2) but declares no stages: not served
    from configs import matcher
    from jaxvrp import trainer

    m = matcher.get_config("runlocal,encoder=dinov2")
    m.data.feature_cache, m.data.backbone_features = str(tmp_path / "m"), True
    ml = trainer.learner_of(m)
    assert ml.backbone_stages is None and ml.frozen(ml.make_config(**m.model.to_dict())).backbone
    with pytest.raises(ValueError, match="learner 'matcher' reads no precomputed backbone"):
        precompute.reader(m, ml, ml.make_config(**m.model.to_dict()), 1)


def test_a_dinov2_backbone_stores_its_layer3_prefix_tokens(tmp_path):
    """A ViT's references continue layer4 from their class/register tokens: they are a
    stored stage too, and the shot features on stored stages equal the backbone's."""
    import jax

    from jaxvrp import backbones, trainer
    from tests.learners.common import SAM, make_batch

    config = _config(tmp_path, feature_cache=str(tmp_path / "f"), backbone_features=True)
    config.model.backbone = "dinov2_test"
    learner = trainer.learner_of(config)
    lconfig = learner.make_config(**config.model.to_dict())
    stages = precompute.backbone_stages(config, learner, lconfig)
    assert stages["support"] == ("layer2", "layer3", "layer3_prefix")
    shapes = precompute.backbone_feature_shapes(config, learner, lconfig)
    d = lconfig.backbone.embed_dim
    assert shapes["support_features/layer3_prefix"] == (
        1,
        1 + lconfig.backbone.num_register_tokens,
        d,
    )
    assert shapes["query_features/layer4"][-1] == d

    bb = vrp.make_config("dinov2_test", SAM).backbone
    params = jax.jit(lambda k: backbones.init(k, bb))(jax.random.key(0))
    batch = make_batch(b=2, k=2, seed=1)
    stage = jax.jit(
        lambda p, x: vrp.stored_stages(p, x, bb, (*vrp.QUERY_STAGES, vrp.SUPPORT_PREFIX))
    )
    images = np.concatenate([batch["query_image"], batch["support_images"].reshape(4, 64, 64, 3)])
    both = stage(params, images)  # one compile for the queries and the references
    q, r = ({s: v[sl] for s, v in both.items()} for sl in (slice(0, 2), slice(2, 6)))
    with_stages = {
        **batch,
        **{f"query_features/{s}": q[s] for s in vrp.QUERY_STAGES},
        **{f"support_features/{s}": r[s].reshape(2, 2, *r[s].shape[1:]) for s in stages["support"]},
    }
    shots = jax.jit(lambda p, b: vrp.shot_features({"backbone": p}, b, lconfig))
    for a, b in zip(shots(params, batch), shots(params, with_stages), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
    missing = {k: v for k, v in with_stages.items() if k != "support_features/layer3_prefix"}
    with pytest.raises(KeyError, match="layer3_prefix"):
        shots(params, missing)


def test_a_sam_encoder_backbone_gets_embedding_and_stages_from_one_pass(tmp_path, filled):
    """With a `sam_<variant>` backbone (the SAM's own encoder), the records missing from
    both stores get their SAM embedding and backbone stages from one encoder call; a record
    missing from one store only is computed by that store's pass alone."""
    from jaxvrp import frozen as frozen_lib
    from jaxvrp.data import datasets, episodes
    from jaxvrp.learners import frozen_sam

    tmp, *_ = filled
    config = _config(tmp, feature_cache=str(tmp_path / "f"), backbone_features=True)
    config.model.backbone = "sam_test_small_image"  # the runlocal SAM's own encoder
    first = precompute.precompute(config, progress=False, which=(1,))
    n = len(datasets.source(config, "procedural", "test"))
    calls = -(-n // 8)  # 1 image per device and call
    assert first["computed"] == n and first["encoder_calls"] == calls  # shared calls
    assert first["backbone"]["computed"] == n and first["backbone"]["encoder_calls"] == calls

    sam = _sam(config)
    lconfig = vrp.make_config(**config.model.to_dict())
    spec = vrp_learner().frozen(lconfig)
    store = precompute.sam_store(config, sam, "procedural", "test")
    stages = precompute.backbone_stores(
        config, spec, ("layer2", "layer3", "layer4"), "procedural", "test"
    )
    src = datasets.source(config, "procedural", "test")
    image = episodes.load_example(src, 3, 0, config.data.image_size)[0]
    frozen = frozen_lib.load(config, spec)
    want_emb = np.asarray(frozen_sam.image_embeddings(frozen["sam"], image[None], sam))[0]
    want = vrp.stored_stages(frozen["backbone"], image[None], lconfig.backbone, tuple(stages))
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)
    assert rel(store.get(3), want_emb) <= 1e-5  # the neck on the last block = the SAM's own
    for name, st in stages.items():
        assert rel(st.get(3), np.asarray(want[name])[0]) <= 1e-5, name

    store.path(3).unlink()  # missing from the SAM store only: the SAM's pass alone
    again = precompute.precompute(config, progress=False, which=(1,))
    assert again["computed"] == 1 and again["encoder_calls"] == 1
    assert again["backbone"]["computed"] == 0 and again["backbone"]["encoder_calls"] == 0
    assert rel(store.get(3), want_emb) <= 1e-5


def test_a_learner_reading_more_stages_writes_only_the_missing_ones(tmp_path, filled, capsys):
    """HSNet on the SAM-encoder backbone reads layer1-4; after VRP-SAM's pass (layer2-4) on
    the same cache its pass writes only layer1: the shared stages' entries are not written
    again, and the report counts each store's own entries."""
    from configs import hsnet as hsnet_configs
    from jaxvrp.data import datasets

    tmp, *_ = filled
    cache = str(tmp_path / "f")
    config = _config(tmp, feature_cache=cache, backbone_features=True)
    config.model.backbone = "sam_test_small_image"
    precompute.precompute(config, progress=False, which=(1,))
    n = len(datasets.source(config, "procedural", "test"))
    vrp_files = sorted((tmp_path / "f").glob("backbone_layer*/*.npy"))
    assert len(vrp_files) == 3 * n
    written = {p: p.stat().st_mtime_ns for p in vrp_files}

    hs = hsnet_configs.get_config("runlocal,backbone=sam_test_small_image,sam=test_small_image")
    hs.data.data_dir, hs.batch_size = config.data.data_dir, 8
    hs.data.feature_cache, hs.data.backbone_features = cache, True
    capsys.readouterr()
    stats = precompute.precompute(hs, progress=False, which=(1,))
    report = capsys.readouterr().err
    assert stats["backbone"]["computed"] == n  # every record lacked its layer1
    assert len(list((tmp_path / "f").glob("backbone_layer1_*/*.npy"))) == n
    assert {p: p.stat().st_mtime_ns for p in vrp_files} == written  # not written again
    for stage in ("layer2", "layer3", "layer4"):
        assert f"{n} of {n} entries present, 0 to write" in next(
            line for line in report.splitlines() if f"backbone_{stage}_" in line
        )
    assert f"0 of {n} entries present, {n} to write" in next(
        line for line in report.splitlines() if "backbone_layer1_" in line
    )
    bytes_layer1 = precompute.backbone_stores(
        hs, _hsnet_spec(hs), ("layer1",), "procedural", "test"
    )["layer1"].entry_bytes()
    assert stats["backbone"]["bytes"] == n * bytes_layer1


def _hsnet_spec(config):
    from jaxvrp.learners import registry

    learner = registry.get("hsnet")
    return learner.frozen(learner.make_config(**config.model.to_dict()))
