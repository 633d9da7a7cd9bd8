"""SSPrompt (`jaxvrp.learners.ssprompt`, `jaxvrp.ssprompt_semantic`) on the embedded trained
tiny SAM (`jaxvrp/assets/sam_tiny_128`): the fusion formula, ŵ = 0 being SAM with the grid
points, where gradients go, the vmapped per-episode fit, the k-shot list, semantic mIoU and
loss by hand, and runlocal runs of both settings."""

import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import ssprompt as ssprompt_config
from jaxvrp import assets, evaluate, train
from jaxvrp import sam as sam_lib
from jaxvrp import ssprompt_semantic as s1
from jaxvrp.learners import registry, ssprompt
from jaxvrp.sam import model as sam_model

N = 16  # a 4 x 4 grid
SIZE = 48  # the reference / target size of the episodes


@pytest.fixture(scope="module")
def sam():
    params, cfg = sam_lib.load(str(assets.default_sam_dir()))
    return params, cfg


def _config(**kw):
    kw.setdefault("num_prompts", N)
    return ssprompt.make_config("tiny_128", **kw)


def _embeddings(b, seed=0):
    g, d = 16, 64  # tiny_128's embedding grid and prompt width
    return jnp.asarray(np.random.default_rng(seed).standard_normal((b, g, g, d)), jnp.float32)


def _discs(b, k, seed=0, size=SIZE):
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((b, k, size, size), np.float32)
    for i in range(b):
        for j in range(k):
            cy, cx = rs.randint(size // 4, 3 * size // 4, 2)
            r = rs.randint(size // 6, size // 3)
            out[i, j] = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    return out


def test_fusion_formula_and_token_layout(sam):
    params, _ = sam
    config = _config()
    dflt = ssprompt.defaults(params, config)
    rs = np.random.default_rng(1)
    z_hat = rs.standard_normal((N, 64)).astype(np.float32)
    theta = rs.standard_normal(N).astype(np.float32)
    zs_hat, zs = rs.standard_normal((2, 1, 64)).astype(np.float32)
    p = {
        "spatial": {"z_hat": z_hat, "theta": theta},
        "semantic": {"z_hat": zs_hat, "theta": np.float32([0.3])},
    }
    tokens = np.asarray(ssprompt.prompt_tokens(p, dflt, zs, config))
    assert tokens.shape == (N + 2, 64)
    w = 1 / (1 + np.exp(-theta))[:, None]
    z = np.asarray(dflt["spatial"])
    np.testing.assert_allclose(tokens[:N], w * z_hat + (1 - w) * z, rtol=1e-6, atol=1e-6)
    w_t = 1 / (1 + np.exp(-0.3))
    np.testing.assert_allclose(tokens[N], w_t * zs_hat[0] + (1 - w_t) * zs[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(tokens[N + 1], np.asarray(dflt["pad"])[0])
    # init: θ = 0 (ŵ = 0.5, the plain average); a fixed weight learns no θ
    init = ssprompt.init_prompts(z_hat, zs_hat, config)
    assert np.all(np.asarray(init["spatial"]["theta"]) == 0)
    np.testing.assert_allclose(
        ssprompt.prompt_tokens(init, dflt, zs, config)[:N], 0.5 * z_hat + 0.5 * z, rtol=1e-6
    )
    fixed = _config(fixed_weight=0.25, semantic=False, pad_token=False)
    init = ssprompt.init_prompts(z_hat, None, fixed)
    assert jax.tree.structure(init) == jax.tree.structure({"spatial": {"z_hat": 0}})
    out = ssprompt.prompt_tokens(init, dflt, None, fixed)
    np.testing.assert_allclose(out, 0.25 * z_hat + 0.75 * z, rtol=1e-6, atol=1e-6)
    # defaults: the grid of positive points, the official build_point_grid layout
    grid = ssprompt.grid_points(N, 128)
    np.testing.assert_array_equal(grid[:5], [[16, 16], [48, 16], [80, 16], [112, 16], [16, 48]])
    for bad in (0, 15, -4):
        with pytest.raises(ValueError, match="num_prompts"):
            _config(num_prompts=bad)
    with pytest.raises(ValueError, match="fixed_weight"):
        _config(fixed_weight=1.5)


@pytest.mark.parametrize("how", ["fixed_weight", "theta"])
def test_zero_weight_is_sam_prompted_with_the_grid(sam, how):
    """ŵ = 0 with an arbitrary ẑ: exactly SAM's single-mask output for the grid points."""
    params, cfg = sam
    emb = _embeddings(2)
    z_hat = 100 * np.random.default_rng(2).standard_normal((2, N, 64)).astype(np.float32)
    if how == "fixed_weight":
        config = _config(fixed_weight=0.0, semantic=False)
        p = {"spatial": {"z_hat": z_hat}}
    else:
        config = _config(semantic=False)
        p = {"spatial": {"z_hat": z_hat, "theta": np.full((2, N), -1e4, np.float32)}}
    dflt = ssprompt.defaults(params, config)
    ours = ssprompt.decode(params, emb, ssprompt.prompt_tokens(p, dflt, None, config), dflt, config)
    grid = jnp.broadcast_to(jnp.asarray(ssprompt.grid_points(N, cfg.image_size)), (2, N, 2))
    want, _ = sam_model.predict_masks(
        params,
        emb,
        config=cfg,
        points=grid,
        point_labels=jnp.ones((2, N), jnp.int32),
        multimask_output=False,
    )
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(want[:, 0]))
    # and a nonzero weight does change it
    other = _config(fixed_weight=0.5, semantic=False)
    moved = ssprompt.decode(
        params, emb, ssprompt.prompt_tokens({"spatial": {"z_hat": z_hat}}, dflt, None, other),
        dflt, other,
    )  # fmt: skip
    assert np.abs(np.asarray(moved) - np.asarray(want[:, 0])).max() > 1e-2


def test_gradients_reach_the_prompts_only(sam):
    params, _ = sam
    config = _config()
    dflt = ssprompt.defaults(params, config)
    rs = np.random.default_rng(3)
    p = ssprompt.init_prompts(
        rs.standard_normal((N, 64)).astype(np.float32),
        rs.standard_normal((1, 64)).astype(np.float32),
        config,
    )
    zs = rs.standard_normal((1, 64)).astype(np.float32)
    emb, ann = _embeddings(2, 4), jnp.asarray(_discs(1, 2)[0])
    loss = partial(ssprompt.reference_loss, config=config)
    g_p, g_sam = jax.jit(
        jax.grad(lambda pp, sp: loss(pp, sp, emb, ann, jnp.ones(2, bool), dflt, zs), (0, 1))
    )(p, params)
    leaves = jax.tree_util.tree_leaves_with_path(g_p)
    assert {jax.tree_util.keystr(k) for k, _ in leaves} == {
        "['semantic']['theta']",
        "['semantic']['z_hat']",
        "['spatial']['theta']",
        "['spatial']['z_hat']",
    }
    for k, v in leaves:
        assert np.abs(np.asarray(v)).max() > 0, jax.tree_util.keystr(k)
    assert all(np.all(np.asarray(v) == 0) for v in jax.tree.leaves(g_sam))


@pytest.fixture(scope="module")
def episodes(sam):
    """Three 2-shot episodes on random embeddings: vmapped, and each alone (same keys)."""
    params, _ = sam
    config = _config(steps=6, lr=5e-2)
    dflt = ssprompt.defaults(params, config)
    b, k = 3, 2
    ref = _embeddings(b * k, 5).reshape(b, k, 16, 16, 64)
    query = _embeddings(b, 6)
    ann = _discs(b, k, 7)
    ann[2, 1] = 0  # an empty shot: left out of the loss
    keys = jax.random.split(jax.random.key(0), b)
    run = partial(ssprompt.episode, params, dflt=dflt, out_size=(SIZE, SIZE), config=config)
    batched = jax.jit(jax.vmap(run))(ref, jnp.asarray(ann), query, keys)
    one = jax.jit(run)
    alone = [one(ref[i], jnp.asarray(ann[i]), query[i], keys[i]) for i in range(b)]
    return jax.tree.map(np.asarray, batched), [jax.tree.map(np.asarray, a) for a in alone]


def test_vmapped_fit_equals_each_episode_alone(episodes):
    batched, alone = episodes
    for i, a in enumerate(alone):
        np.testing.assert_allclose(batched["losses"][i], a["losses"], rtol=1e-5, atol=1e-6)
        # Adam amplifies the last-bit differences of batched matmuls: 1e-3 on O(1) logits
        np.testing.assert_allclose(batched["logits"][i], a["logits"], rtol=1e-3, atol=1e-3)
        for x, y in zip(
            jax.tree.leaves(batched["params"]), jax.tree.leaves(a["params"]), strict=True
        ):
            # Adam's g / sqrt(v) turns last-bit differences of near-zero gradients into
            # steps of up to lr: a few coordinates differ by ~1e-2 while the fit moves ẑ
            # by ~0.3 (checked in test_the_fit_lowers_the_reference_loss)
            np.testing.assert_allclose(x[i], y, rtol=1e-3, atol=2e-2)
    assert batched["valid"].all()
    # the episodes differ: the check above would catch a batch mixed up across episodes
    assert np.abs(batched["logits"][0] - alone[1]["logits"]).max() > 0.1


def test_the_fit_lowers_the_reference_loss(episodes):
    batched, _ = episodes
    losses = batched["losses"]  # (B, steps), the loss before each step
    assert losses.shape == (3, 6)
    assert np.all(losses[:, -1] < losses[:, 0] - 1e-3), losses
    # θ moved away from 0 and ẑ from its initial point embeddings
    assert np.abs(batched["params"]["spatial"]["theta"]).max() > 0.2


def test_points_are_sampled_in_the_annotation():
    ann = np.zeros((2, 20, 30), np.float32)
    ann[1, 5:8, 10:12] = 1
    pts, ok = ssprompt.sample_points(jnp.asarray(ann), jax.random.key(1), 50, 60)
    pts = np.asarray(pts) / np.array([60 / 30, 60 / 20])  # back to annotation pixels
    assert bool(ok) and np.all(ann[1, pts[:, 1].astype(int), pts[:, 0].astype(int)] == 1)
    again, _ = ssprompt.sample_points(jnp.asarray(ann), jax.random.key(1), 50, 60)
    np.testing.assert_array_equal(np.asarray(again) / np.array([2, 3]), pts)
    _, ok = ssprompt.sample_points(jnp.zeros((1, 8, 8)), jax.random.key(1), 4, 16)
    assert not bool(ok)


def test_kshot_subset_is_seeded_and_saved(tmp_path):
    rs = np.random.default_rng(0)
    classes_of = {f"img{i:03d}": sorted(set(rs.integers(1, 5, 2).tolist())) for i in range(60)}
    a = s1.select_shots(classes_of, [1, 2, 3, 4], 5, seed=7)
    assert a == s1.select_shots(dict(reversed(classes_of.items())), [4, 3, 2, 1], 5, seed=7)
    assert a != s1.select_shots(classes_of, [1, 2, 3, 4], 5, seed=8)
    for c, ids in a.items():
        assert len(set(ids)) == 5 and ids == sorted(ids) and all(c in classes_of[i] for i in ids)
    with pytest.raises(ValueError, match="class 9 is in 0 images"):
        s1.select_shots(classes_of, [9], 1, seed=0)
    config = ssprompt_config.get_config("semantic,runlocal,shots=5")
    saved = s1.shot_list(config, tmp_path, classes_of, [1, 2, 3, 4])
    assert saved == s1.select_shots(classes_of, [1, 2, 3, 4], 5, config.data.shot_seed)
    body = json.loads((tmp_path / "kshot.json").read_text())
    assert body["shots"] == 5 and body["images"]["1"] == saved[1]
    assert s1.shot_list(config, tmp_path, {}, [1, 2, 3, 4]) == saved  # read back, not redrawn
    other = ssprompt_config.get_config("semantic,runlocal,shots=4")
    with pytest.raises(ValueError, match="kshot.json was made for"):
        s1.shot_list(other, tmp_path, classes_of, [1, 2, 3, 4])


def test_semantic_miou_and_loss_by_hand():
    label = np.array([[0, 1, 1], [2, 255, 0]])
    pred = np.array([[0, 1, 2], [2, 0, 1]])
    conf = s1.confusion_matrix(pred, label, 4)  # label 3 is absent from both: not averaged
    assert conf.sum() == 5 and conf[0, 0] == conf[1, 1] == conf[1, 2] == conf[2, 2] == 1
    r = s1.semantic_miou(conf)
    # IoU0 = 1 / (1 + 0 + 1), IoU1 = 1 / (1 + 1 + 1), IoU2 = 1 / (1 + 1 + 0)
    assert r["per_class_iou"] == pytest.approx({0: 1 / 2, 1: 1 / 3, 2: 1 / 2})
    assert r["miou"] == pytest.approx(4 / 9) and r["pixel_accuracy"] == pytest.approx(3 / 5)
    # the loss: softmax over [0, l] per pixel, 255 left out
    logits = jnp.array([1.5, -0.5, 3.0]).reshape(1, 1, 1, 3)
    labels = jnp.array([1, 0, 255]).reshape(1, 1, 3)
    want = (np.log1p(np.exp(-1.5)) + np.log1p(np.exp(-0.5))) / 2
    assert float(s1.semantic_loss(logits, labels)) == pytest.approx(want, rel=1e-6)
    np.testing.assert_array_equal(s1.predict_labels(logits), [[[1, 0, 1]]])
    table = s1.label_table([3, 7])
    assert table[3] == 1 and table[7] == 2 and table[5] == 0 and table[255] == 255


def test_the_protocol():
    learner = registry.get("ssprompt")
    assert not learner.trainable and learner.title == "SSPrompt"
    config = learner.make_config(sam="tiny_128", num_prompts=4, fixed_weight=None)
    assert learner.frozen(config).backbone is None and learner.init(None, config) == {}
    seeds = learner.prepare({"episode": np.array([3, 2**40 + 5])}, config)["episode_seed"]
    assert seeds.dtype == np.int32 and seeds.tolist() == [3, 5]


def test_setting_one_gradients_and_loss_falls(sam):
    """The semantic loss on per-class params: gradients reach every prompt leaf (not SAM),
    and a few optimiser steps on a fixed batch lower it."""
    params, _ = sam
    cfg = _config(num_prompts=4)
    dflt = ssprompt.defaults(params, cfg)
    c, rs = 3, np.random.default_rng(9)
    z = jnp.broadcast_to(dflt["spatial"], (c, 4, 64)) + 0.1 * rs.standard_normal((c, 4, 64))
    p = ssprompt.init_prompts(z, rs.standard_normal((c, 1, 64)), cfg)
    consts = {
        "sam": params,
        "defaults": dflt,
        "z_semantic": jnp.asarray(rs.standard_normal((c, 1, 64)), jnp.float32),
    }
    labels = np.zeros((2, 32, 32), np.int32)
    labels[0, 4:20, 6:22], labels[1, 10:30, 2:12], labels[1, 0:4] = 1, 3, 255
    batch = {"embedding": _embeddings(2, 10), "label": jnp.asarray(labels)}
    grad = jax.jit(jax.value_and_grad(s1.loss_fn, argnums=(0, 2)), static_argnums=3)
    (first, (g, g_consts)) = grad(p, batch, consts, cfg)
    assert all(np.abs(np.asarray(v)).max() > 0 for v in jax.tree.leaves(g))
    assert all(np.all(np.asarray(v) == 0) for v in jax.tree.leaves(g_consts["sam"]))
    opt = optax.adam(5e-2)
    state = opt.init(p)
    for _ in range(5):
        _, (g, _) = grad(p, batch, consts, cfg)
        updates, state = opt.update(g, state, p)
        p = optax.apply_updates(p, updates)
    assert float(grad(p, batch, consts, cfg)[0]) < float(first) - 1e-3


def _tiny(config, tmp_path):
    config.unlock()
    config.data.data_dir = str(tmp_path.parent / "tfds")  # one procedural build for all
    config.batch_size = 8  # the 8 simulated devices
    # the embedded SAM: loading it is instant, compiling a random SAM's init is not
    config.model.sam = "tiny_128"
    config.frozen.sam_checkpoint = str(assets.default_sam_dir())
    config.lock()
    return config


def test_setting_two_runlocal_through_the_evaluator(tmp_path):
    config = _tiny(ssprompt_config.get_config("runlocal"), tmp_path)
    assert train.train(config, tmp_path / "w") == {}  # training-free: nothing to train
    result = evaluate.evaluate(config)
    assert result["episodes"] == 8 and 0.0 <= result["miou"] <= 1.0


def test_setting_one_runlocal_and_as_sweep_points(tmp_path):
    """Setting 1 end to end, as two points of a `jaxvrp.sweep` (2 and 1 shots per class):
    each point trains and scores through `ssprompt_semantic.train`; the sweep's table holds
    their semantic mIoU and pixel accuracy; a finished point is skipped; --vmap is refused."""
    from jaxvrp import sweep

    base = _tiny(ssprompt_config.get_config("semantic,runlocal,shots=2"), tmp_path)
    with base.unlocked():
        base.data.max_eval_images = 8
    points = [
        sweep.Point(i, f"shots={k}", {"data.shots": k}, sweep.point_config(base, {"data.shots": k}))
        for i, k in enumerate((2, 1))
    ]
    work = tmp_path / "sweep"
    got = [sweep.run_point(p, work) for p in points]
    s1_dir = work / "shots=2"
    steps = [json.loads(x)["step"] for x in open(s1_dir / "metrics.jsonl")]
    assert steps == [1, 2, 3]
    saved = json.loads((s1_dir / "semantic_results.json").read_text())
    assert saved["train"]["step"] == 3
    ev = saved["eval"]
    assert ev["images"] == 8 and 0.0 <= ev["miou"] <= 1.0 and "0" in ev["per_class_iou"]
    kshot = json.loads((s1_dir / "kshot.json").read_text())
    assert len(kshot["images"]) == 20 and all(len(v) == 2 for v in kshot["images"].values())
    for p, result in zip(points, got, strict=True):
        (name,) = result
        point_saved = json.loads((work / p.name / "semantic_results.json").read_text())
        assert result[name]["miou"] == pytest.approx(point_saved["eval"]["miou"])
        assert json.loads((work / p.name / "eval" / "results.json").read_text())[name][
            "miou"
        ] == pytest.approx(result[name]["miou"])
    assert sweep.run_point(points[0], work) is None  # finished: skipped
    table = sweep.write_results(work)
    assert list(table["metrics"]) == ["miou", "pixel_accuracy"]
    by_shots = {r["keys"]["data.shots"]: r["metrics"] for r in table["rows"]}
    for p, result in zip(points, got, strict=True):
        (r,) = result.values()
        cells = by_shots[p.overrides["data.shots"]]
        assert cells["miou"]["folds"]["all"]["mean"] == pytest.approx(100 * r["miou"])
        assert cells["pixel_accuracy"]["folds"]["all"]["mean"] == pytest.approx(
            100 * r["pixel_accuracy"]
        )
    md = (work / "results.md").read_text()
    assert "## semantic mIoU" in md and "FB-IoU" not in md
    stacked_point = sweep.Point(2, "stack", {}, base, members=[{"seed": 0}, {"seed": 1}])
    with pytest.raises(ValueError, match="setting 1.*grid"):
        sweep.run_point(stacked_point, work)
    assert not (work / "stack").exists()  # refused before anything is written


def test_segment_method_ssprompt(tmp_path):
    """`jaxvrp segment --method ssprompt` with only a SAM checkpoint (the embedded one)."""
    from PIL import Image

    from jaxvrp import cli

    rs = np.random.default_rng(11)
    Image.fromarray(rs.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "r.png")
    mask = np.zeros((40, 50), np.uint8)
    mask[10:30, 15:35] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    Image.fromarray(rs.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    argv = [
        "segment", "--method", "ssprompt", "--option", "num_prompts=4", "--option", "steps=2",
        "--sam", str(assets.default_sam_dir()), "--reference", str(tmp_path / "r.png"),
        "--reference-mask", str(tmp_path / "m.png"), "--targets", str(tmp_path / "t.png"),
        "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    with Image.open(tmp_path / "out" / "t_mask.png") as m:
        assert m.size == (20, 30) and set(np.unique(np.asarray(m))) <= {0, 255}
