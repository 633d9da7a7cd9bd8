"""`jaxvrp segment` and the `jaxvrp` console script, on tiny seeded checkpoints (no download).

Two learners share one random "tiny_128" SAM: A is VRP-SAM on the SAM's own encoder
(K = 2 shots in the end-to-end runs), B is ProSAM on a small ResNet (K = 1); each compiles
once for the whole module.
"""

import shutil
import subprocess
from functools import partial

import jax
import numpy as np
import pytest
from PIL import Image

from jaxvrp import backbones, cli, params_io
from jaxvrp import sam as sam_lib
from jaxvrp import segment as seg
from jaxvrp.image import IMAGENET_MEAN, IMAGENET_STD, normalized_image, resize_bilinear
from jaxvrp.learners import checkpoint, prosam, vrp
from jaxvrp.masks import any_pool

S = 64  # the learners' image_size
TARGETS = {"t1.png": (40, 56), "t2.jpg": (30, 20), "t3.png": (64, 64)}  # name: (W, H)
POINTS = ((5, 7), (30, 40))  # on the 64 x 64 reference b.png


def _noise(path, w, h, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def _random(shapes, seed: int):
    """Seeded random float32 params of the given shapes (much faster than compiling `init`
    here): weights N(0, 1 / fan_in), small biases, unit norm scales and BatchNorm variances."""
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = path[-1].key
        if name in ("scale", "var"):
            return np.ones(s.shape, np.float32)
        if name == "mean":
            return np.zeros(s.shape, np.float32)
        std = 0.1 if name == "bias" else 1.0 / np.sqrt(max(1, int(np.prod(s.shape[:-1]))))
        return (std * rng.standard_normal(s.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("segment")
    sam_cfg = sam_lib.get_config("tiny_128")
    sam_params = _random(sam_lib.param_shapes(sam_cfg), 0)
    params_io.save_params(root / "sam", sam_params, {"kind": "sam", "config": sam_cfg.to_dict()})
    # a SAM of another architecture (its weights are never used: the check comes first)
    other = sam_lib.get_config("test_small_image")
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), sam_lib.param_shapes(other))
    params_io.save_params(root / "sam_other", zeros, {"kind": "sam", "config": other.to_dict()})

    model_a = {"backbone": "sam_tiny_128", "sam": "tiny_128", "num_queries": 4}
    config_a = vrp.make_config("sam_tiny_128", "tiny_128", num_queries=4)
    checkpoint.save(
        root / "learner_a",
        learner="vrp_sam",
        model=model_a,
        params=_random(vrp.param_shapes(config_a), 1),
        image_size=S,
    )
    bb = "resnet_test_deepstem"  # dilated, as VRP-SAM's encoder needs (layer3 = layer4 size)
    model_b = {"backbone": bb, "sam": "tiny_128", "num_queries": 4, "num_samples": 2}
    config_b = prosam.make_config(bb, "tiny_128", num_queries=4, num_samples=2)
    checkpoint.save(
        root / "learner_b",
        learner="prosam",
        model=model_b,
        params=_random(jax.eval_shape(partial(prosam.init, config=config_b), jax.random.key(0)), 2),
        image_size=S,
        backbone_params=_random(backbones.param_shapes(backbones.get_config(bb)), 3),
    )

    refs = root / "refs"
    refs.mkdir()
    _noise(refs / "a.png", 64, 64, 10)
    _noise(refs / "b.png", 64, 64, 11)
    _noise(refs / "c.png", 40, 56, 12)
    _noise(refs / "d.jpg", 30, 20, 13)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 30) ** 2 + (xx - 25) ** 2 < 12**2
    Image.fromarray(np.where(disc, 255, 0).astype(np.uint8)).save(refs / "a_mask.png")
    stroke = np.zeros((56, 40), np.uint8)  # a 1-pixel diagonal stroke on c.png
    stroke[np.arange(10, 40), np.arange(5, 35)] = 255
    Image.fromarray(stroke).save(refs / "c_scribble.png")

    targets = root / "targets"
    targets.mkdir()
    for i, (name, (w, h)) in enumerate(TARGETS.items()):
        _noise(targets / name, w, h, 20 + i)
    (targets / "notes.txt").write_text("not an image, and not picked from a directory\n")
    return root


def _a_args(files, out, targets=None):
    r = files / "refs"
    return [
        "segment",
        "--learner",
        str(files / "learner_a"),
        "--sam",
        str(files / "sam"),
        "--reference",
        str(r / "a.png"),
        "--reference-mask",
        str(r / "a_mask.png"),
        "--reference",
        str(r / "b.png"),
        "--points",
        ";".join(f"{x},{y}" for x, y in POINTS),
        "--targets",
        str(targets or files / "targets"),
        "--out",
        str(out),
    ]


@pytest.fixture(scope="module")
def runs(files):
    """Learner A, K = 2: once through the CLI, once through `segment` (same inputs)."""
    out_cli, out_fn = files / "out_cli", files / "out_fn"
    rc = cli.main(_a_args(files, out_cli))
    r = files / "refs"
    shots = [
        seg.Shot(r / "a.png", "mask", r / "a_mask.png"),
        seg.Shot(r / "b.png", "point", POINTS),
    ]
    written = seg.segment(
        files / "learner_a", files / "sam", shots, files / "targets", out_fn, progress=False
    )
    return rc, out_cli, out_fn, written


def test_end_to_end(runs, capsys):
    rc, out_cli, out_fn, written = runs
    assert rc == 0
    names = sorted(p.name for p in out_cli.iterdir())
    stems = sorted(n.split(".")[0] for n in TARGETS)
    assert names == sorted([f"{s}_mask.png" for s in stems] + [f"{s}_overlay.png" for s in stems])
    assert [m.name for m, _ in written] == [f"{s}_mask.png" for s in stems]
    for name, (w, h) in TARGETS.items():
        stem = name.split(".")[0]
        with Image.open(out_cli / f"{stem}_mask.png") as m:
            assert (m.mode, m.size) == ("L", (w, h))
            assert set(np.unique(np.asarray(m)).tolist()) <= {0, 255}
        with Image.open(out_cli / f"{stem}_overlay.png") as o:
            assert (o.mode, o.size) == ("RGB", (w, h))
    for name in names:  # deterministic: the two runs wrote the same bytes
        assert (out_cli / name).read_bytes() == (out_fn / name).read_bytes(), name


def test_prediction_is_the_learners(files, runs):
    """The written mask is `module.apply` on the batch built here independently."""
    _, out_cli, _, _ = runs
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)

    def image(path):
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((S, S), Image.BILINEAR)
        return (np.asarray(rgb, np.float32) / 255.0 - mean) / std

    with Image.open(files / "refs" / "a_mask.png") as m:
        mask_ann = (np.asarray(m) > 0).astype(np.float32)  # already S x S
    point_ann = np.zeros((S, S), np.float32)
    for x, y in POINTS:  # b.png is S x S: one pixel per point, where it was clicked
        point_ann[y, x] = 1.0
    batch = {
        "query_image": image(files / "targets" / "t1.png")[None],
        "support_images": np.stack([image(files / "refs" / n) for n in ("a.png", "b.png")])[None],
        "support_annotations": np.stack([mask_ann, point_ann])[None],
    }
    ckpt = checkpoint.load(files / "learner_a")
    sam_params, _ = sam_lib.load(files / "sam")
    frozen = {"sam": sam_params, "backbone": sam_params["image_encoder"]}
    # `segment`'s jitted `module.apply` (already compiled by `runs`; an eager apply or a
    # second compile would cost ~20 s here): the wiring checked is everything around it.
    predict = seg._predictor(ckpt.learner, ckpt.config)
    logits = predict(ckpt.params, frozen, batch)
    assert logits.shape == (1, S, S)
    w, h = TARGETS["t1.png"]
    up = np.asarray(resize_bilinear(logits[0], (h, w), channels_last=False))
    with Image.open(out_cli / "t1_mask.png") as m:
        written = np.asarray(m) > 0
    assert 0.05 < written.mean() < 0.95  # a mask with both classes, so the check means something
    sure = np.abs(up) > 1e-4
    assert sure.mean() > 0.9
    np.testing.assert_array_equal(written[sure], up[sure] > 0)


@pytest.mark.parametrize(
    "annotation",
    [["--reference", "d.jpg", "--box", "3,2,20,15"], ["--reference", "c.png", "--scribble"]],
    ids=["box", "scribble"],
)
def test_annotation_kinds(files, tmp_path, annotation):
    r = files / "refs"
    ann = [str(r / a) if a.endswith((".png", ".jpg")) else a for a in annotation]
    if ann[-1] == "--scribble":
        ann.append(str(r / "c_scribble.png"))
    out = tmp_path / "out"
    argv = ["segment", "--learner", str(files / "learner_b"), "--sam", str(files / "sam")]
    argv += ann + ["--targets", str(files / "targets" / "*.png"), "--out", str(out)]
    assert cli.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "t1_mask.png",
        "t1_overlay.png",
        "t3_mask.png",
        "t3_overlay.png",
    ]
    with Image.open(out / "t1_mask.png") as m:
        assert m.size == TARGETS["t1.png"]


def test_annotation_maps():
    """Validated at the original size, brought to S x S without losing anything."""
    pts = seg.annotation_map(seg.Shot("r.png", "point", ((0, 0), (999, 499))), (500, 1000), S)
    assert pts.sum() == 2 and pts[0, 0] == 1 and pts[S - 1, S - 1] == 1
    box = seg.annotation_map(seg.Shot("r.png", "box", (999, 0, 1000, 1)), (500, 1000), S)
    assert box.sum() == 1 and box[0, S - 1] == 1
    one = np.zeros((500, 1000), bool)
    one[250, 700] = True
    pooled = np.asarray(any_pool(one, (S, S)))
    assert pooled.sum() >= 1 and pooled[250 * S // 500, 700 * S // 1000] == 1
    np.testing.assert_array_equal(any_pool(np.eye(S, dtype=bool), (S, S)), np.eye(S))
    with pytest.raises(seg.SegmentError, match="outside"):
        seg.annotation_map(seg.Shot("r.png", "point", ((1000, 0),)), (500, 1000), S)
    with pytest.raises(seg.SegmentError, match="x0 < x1"):
        seg.annotation_map(seg.Shot("r.png", "box", (5, 0, 5, 9)), (500, 1000), S)


def test_reference_mask_is_prepared_like_training_episodes(tmp_path):
    """A --reference-mask reaches the learner exactly as a dataset mask reaches it in a
    training episode (`jaxvrp.data.episodes.load_example`: PIL nearest to S x S)."""
    from jaxvrp.data import episodes

    rs = np.random.RandomState(7)
    h, w = 93, 141  # neither a multiple of S nor square
    label = np.zeros((h, w), np.uint8)
    label[10:60, 20:90] = 3
    label[rs.rand(h, w) < 0.05] = 3  # scattered single pixels, which nearest may drop
    Image.fromarray(((label == 3) * 255).astype(np.uint8)).save(tmp_path / "m.png")
    got = seg.annotation_map(seg.Shot("r.png", "mask", tmp_path / "m.png"), (h, w), S)
    rgb = rs.randint(0, 255, (h, w, 3)).astype(np.uint8)
    source = [{"image": rgb, "mask": label[..., None]}]
    _, want, _ = episodes.load_example(source, 0, 3, S)
    assert got.dtype == want.dtype and got.shape == (S, S)
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, any_pool(label == 3, (S, S)))  # the other rule differs here


def test_overlay():
    rgb = np.full((6, 7, 3), 100, np.uint8)
    mask = np.zeros((6, 7), bool)
    mask[1:5, 2:6] = True
    mask[:, 0] = True  # along the image border: its outer side is not a boundary
    out = seg.overlay(rgb, mask)
    np.testing.assert_array_equal(out[~mask], rgb[~mask])
    np.testing.assert_array_equal(out[2:4, 3:5], np.full((2, 2, 3), [178, 50, 50]))  # tinted
    ring = mask.copy()
    ring[2:4, 3:5] = False
    np.testing.assert_array_equal(out[1:5, 2:6][ring[1:5, 2:6]], [[255, 0, 0]] * 12)
    np.testing.assert_array_equal(out[:, 0], [[255, 0, 0]] * 6)  # column 1 is background


def _error_cases():
    """(id, argv edit, expected text in the message)."""

    def replace(old, new):
        return lambda a: [new if x == old else x for x in a]

    def insert_at(i, *extra):
        return lambda a: a[:i] + list(extra) + a[i:]

    return [
        ("missing_reference", lambda a, f: replace(str(f / "refs/b.png"), "nope.png")(a),
         "--reference: no such file: nope.png"),
        ("mask_size", lambda a, f: replace(str(f / "refs/a.png"), str(f / "refs/c.png"))(a),
         "is 64x64 but its reference image"),
        ("learner_is_sam", lambda a, f: replace(str(f / "learner_a"), str(f / "sam"))(a),
         "holds a 'sam' checkpoint"),
        ("sam_mismatch", lambda a, f: replace(str(f / "sam"), str(f / "sam_other"))(a),
         "trained with SAM 'tiny_128'"),
        ("annotation_first", lambda a, f: insert_at(5, "--box", "1,1,5,5")(a),
         "--box: comes before any --reference"),
        ("two_annotations", lambda a, f: insert_at(9, "--box", "1,1,5,5")(a),
         "already has an annotation (--reference-mask)"),
        ("reference_without", lambda a, f: insert_at(5, "--reference", "x.png")(a),
         "--reference x.png has no annotation"),
        ("last_reference_without", lambda a, f: a[:-4] + ["--reference", "y.png"] + a[-4:],
         "--reference y.png has no annotation"),
        ("points_outside", lambda a, f: replace("5,7;30,40", "5,7;64,3")(a),
         "point 64,3 is outside the reference image"),
        ("bad_points", lambda a, f: replace("5,7;30,40", "5;7")(a), "is not a point x,y"),
        ("no_targets", lambda a, f: replace(str(f / "targets"), str(f / "targets/*.gif"))(a),
         "--targets: no file matches"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", _error_cases(), ids=lambda c: c[0])
def test_errors(files, tmp_path, capsys, case):
    _, edit, expected = case
    out = tmp_path / "out"
    argv = edit(_a_args(files, out), files)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "jaxvrp segment: error:" in err
    assert expected in err, err
    assert not out.exists()


def test_corrupt_target_writes_nothing(files, tmp_path, capsys):
    targets = tmp_path / "targets"
    targets.mkdir()
    shutil.copy(files / "targets" / "t1.png", targets / "good.png")
    (targets / "bad.png").write_bytes(np.random.default_rng(0).bytes(300))
    out = tmp_path / "out"
    assert cli.main(_a_args(files, out, targets)) == 2
    err = capsys.readouterr().err
    assert "--targets: cannot read" in err and "bad.png" in err, err
    assert not out.exists()


def test_colliding_stems(files, tmp_path, capsys):
    targets = tmp_path / "targets"
    targets.mkdir()
    shutil.copy(files / "targets" / "t1.png", targets / "x.png")
    shutil.copy(files / "targets" / "t2.jpg", targets / "x.jpg")
    out = tmp_path / "out"
    assert cli.main(_a_args(files, out, targets)) == 2
    assert "same name stem" in capsys.readouterr().err
    assert not out.exists()


def test_a_training_free_method_needs_only_the_sam(files, tmp_path, capsys):
    """--method gp_sam: configured from the SAM checkpoint and --option, it gives exactly
    the registered learner's prediction; the oracle box (reads the ground truth) and a
    trained learner are refused before anything is written."""
    from jaxvrp import baselines

    r = files / "refs"
    args = [
        "segment", "--method", "gp_sam", "--option", 'mode="box"', "--option", "num_points=3",
        "--sam", str(files / "sam"), "--reference", str(r / "a.png"),
        "--reference-mask", str(r / "a_mask.png"), "--targets", str(files / "targets" / "t1.png"),
    ]  # fmt: skip
    assert cli.main([*args, "--out", str(tmp_path / "gp")]) == 0
    config = baselines.make_gp_sam_config("sam_tiny_128", "tiny_128", mode="box", num_points=3)
    sam_params, _ = sam_lib.load(files / "sam")
    frozen = {"sam": sam_params, "backbone": sam_params["image_encoder"]}
    s = 128  # the SAM's input size: --method's default image size
    with Image.open(r / "a_mask.png") as m:
        ann = (np.asarray(m.resize((s, s), Image.NEAREST)) > 0).astype(np.float32)

    def image(path):
        with Image.open(path) as im:
            return normalized_image(np.asarray(im.convert("RGB")), s)

    batch = {
        "query_image": image(files / "targets" / "t1.png")[None],
        "support_images": image(r / "a.png")[None, None],
        "support_annotations": ann[None, None],
    }
    logits = baselines.gp_sam({}, frozen, batch, config=config, rng=jax.random.key(0))
    w, h = TARGETS["t1.png"]
    up = np.asarray(resize_bilinear(logits[0], (h, w), channels_last=False))
    with Image.open(tmp_path / "gp" / "t1_mask.png") as m:
        written = np.asarray(m) > 0
    sure = np.abs(up) > 1e-4
    assert sure.mean() > 0.9
    np.testing.assert_array_equal(written[sure], up[sure] > 0)

    capsys.readouterr()
    oracle = [a if a != "gp_sam" else "oracle_box" for a in args[:3]] + args[7:]
    assert cli.main([*oracle, "--out", str(tmp_path / "o")]) == 2
    assert "reads 'query_mask' of the target" in capsys.readouterr().err
    trained = [a if a != "gp_sam" else "vrp_sam" for a in args[:3]] + args[7:]
    assert cli.main([*trained, "--out", str(tmp_path / "v")]) == 2
    assert "pass --learner DIR" in capsys.readouterr().err
    bad = [*args[:3], "--option", "mode=3", *args[7:]]
    assert cli.main([*bad, "--out", str(tmp_path / "b")]) == 2
    assert "mode" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in ("o", "v", "b"))


@pytest.mark.parametrize(
    "method,options", [("persam", []), ("persam_f", ["--option", "train_steps=5"])]
)
def test_persam_through_segment(files, tmp_path, method, options):
    """PerSAM and PerSAM-F segment one's images with only a SAM checkpoint."""
    r = files / "refs"
    argv = [
        "segment", "--method", method, *options, "--sam", str(files / "sam"),
        "--reference", str(r / "a.png"), "--reference-mask", str(r / "a_mask.png"),
        "--targets", str(files / "targets"), "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    for name, (w, h) in TARGETS.items():
        stem = name.rsplit(".", 1)[0]
        with Image.open(tmp_path / "out" / f"{stem}_mask.png") as m:
            assert m.size == (w, h) and set(np.unique(np.asarray(m))) <= {0, 255}
        assert (tmp_path / "out" / f"{stem}_overlay.png").is_file()


def test_cli_dispatch(capsys):
    assert cli.main(["--help"]) == 0
    assert "segment" in capsys.readouterr().out
    assert cli.main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_console_script_help():
    exe = shutil.which("jaxvrp")
    if exe is None:
        pytest.skip("the jaxvrp console script is not installed (pip install -e .)")
    done = subprocess.run(
        [exe, "segment", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "--reference" in done.stdout


def test_samic_on_sam_greedy_points_computes_them_once_for_the_references(
    files, tmp_path, monkeypatch
):
    """A SAMIC learner trained on stored "sam_greedy" points: `segment` computes the greedy
    points of the user's reference mask once with the frozen SAM (not per target), and
    predicts what the learner gives on exactly those points."""
    from jaxvrp.learners import samic

    model = {"backbone": "resnet_test", "sam": "tiny_128", "num_4d_layers": 1}
    model.update(max_components=2, max_points=2, point_source="sam_greedy")
    cfg = samic.make_config(**model)
    shapes = jax.eval_shape(partial(samic.init, config=cfg), jax.random.key(0))
    checkpoint.save(
        tmp_path / "samic",
        learner="samic",
        model=model,
        params=_random(shapes, 4),
        image_size=S,
        backbone_params=_random(backbones.param_shapes(backbones.get_config("resnet_test")), 5),
    )
    calls, real = [], samic.greedy_points
    monkeypatch.setattr(samic, "greedy_points", lambda *a: calls.append(a) or real(*a))
    r = files / "refs"
    shots = [seg.Shot(r / "a.png", "mask", r / "a_mask.png")]
    out = tmp_path / "out"
    written = seg.segment(
        tmp_path / "samic", files / "sam", shots, files / "targets", out, progress=False
    )
    assert len(written) == len(TARGETS) and len(calls) == 1
    support, sam_params, _ = calls[0]
    want = real(support, sam_params, cfg)
    assert want["support_point_valid"].sum() > 0
    ckpt = checkpoint.load(tmp_path / "samic")
    frozen = {"sam": sam_lib.load(files / "sam")[0], "backbone": ckpt.backbone_params}
    with Image.open(files / "targets" / "t3.png") as im:  # S x S: no resize of the output
        query = normalized_image(np.asarray(im.convert("RGB")), S)[None]
    logits = seg._predictor(ckpt.learner, ckpt.config)(
        ckpt.params, frozen, {"query_image": query, **want}
    )
    with Image.open(out / "t3_mask.png") as m:
        np.testing.assert_array_equal(np.asarray(m) > 0, np.asarray(logits[0]) > 0)
