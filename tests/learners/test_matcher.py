"""Matcher (`jaxvrp.learners.matcher`): its matching and its mask scoring / filtering / merge
against a transcription of the official code (`matcher_reference.py`), on small random
inputs; the whole method through `jaxvrp segment`; bad options."""

import dataclasses
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

from jaxvrp import cli, params_io
from jaxvrp import sam as sam_lib
from jaxvrp import segment as seg
from jaxvrp.image import normalized_image, resize_bilinear
from jaxvrp.learners import matcher, registry
from jaxvrp.learners.protocol import FrozenSpec
from tests.learners import matcher_reference as ref
from tests.test_segment import _random

SAM = "tiny_128"  # 128-pixel input, 16 x 16 embedding grid: the "sam" encoder's patches are 8 px


def _disc(size, cy, cx, r):
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.float32)


def _features(rs, n_ref, n, c=16):
    """Unit features whose target half resembles the reference (so matching is not noise)."""
    base = rs.randn(n, c)
    tar = base + 0.5 * rs.randn(n, c)
    refs = np.concatenate([base[rs.permutation(n)] + 0.5 * rs.randn(n, c) for _ in range(n_ref)])
    norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return norm(refs), norm(tar)


@pytest.mark.parametrize(
    "shots,radii",
    [(1, (40,)), (1, (9,)), (2, (30, 12)), (2, (0, 0))],  # halving > 40, few, 2 shots, empty
)
def test_matching_matches_the_official(shots, radii):
    config = matcher.make_config(sam=SAM, encoder="sam", preset="coco", max_sample_iterations=7)
    g, f = config.grid, config.frame  # 16 patches of 8 px in the 128 frame
    rs = np.random.RandomState(shots * 100 + radii[0])
    ann = np.stack([_disc(f, 60, 70, r) for r in radii])[None]  # (1, K, 128, 128)
    pool = np.asarray(matcher.reference_pool(jnp.asarray(ann), config))[0]
    want_pool = ref.reference_masks_pool(torch.as_tensor(ann), config.patch).numpy() > 0
    np.testing.assert_array_equal(pool, want_pool)
    r_feat, t_feat = _features(rs, shots, g * g)
    s = r_feat @ t_feat.T
    points, box = matcher.patch_matching(s, pool, config)
    want_points, want_box = ref.patch_level_matching(
        torch.as_tensor(s), torch.as_tensor(want_pool).float(), g, config.patch, f
    )
    np.testing.assert_array_equal(points, want_points)
    np.testing.assert_array_equal(box, want_box)
    assert len(points) > 8 or radii[0] < 20
    # the subsets: random draws when n > 8, every combination otherwise (same seed)
    for pts in (points, points[:5]):
        for lo, hi in ((1, 6), (4, 6), (7, 9)):
            cfg = matcher.make_config(
                sam=SAM, encoder="sam", sample_range=(lo, hi), max_sample_iterations=7
            )
            got = matcher.sample_points(pts, cfg, random.Random(3))
            random.seed(3)
            want = ref.sample_points(pts, (lo, hi), 7)
            assert [v.tolist() for v in got.values()] == [w.tolist() for w in want]
    # the host step of `predict`: the same points, subsets padded to fixed slots
    all_pts, count, boxes, prompts, valid = matcher._host_prompts(
        s[None], pool[None], np.array([5], np.uint32), config
    )
    assert count[0] == len(points)
    np.testing.assert_array_equal(all_pts[0, : len(points)], points)
    drawn = matcher.sample_points(points, config, random.Random(5))
    for i, slots in matcher.group_slots(config).items():
        n_i = len(drawn.get(i, ()))
        assert prompts[i].shape == (1, slots, i, 2) and valid[i][0].sum() == n_i
        if n_i:
            np.testing.assert_array_equal(prompts[i][0, :n_i], drawn[i])


def _candidate_masks(rs, m, size):
    """Ellipse logits (m, size, size) (some empty, some nearly equal) and predicted IoUs."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    logits = []
    for i in range(m):
        cy, cx = rs.uniform(0, size, 2)
        ry, rx = rs.uniform(2, size / 2, 2)
        d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        logits.append(rs.uniform(4, 80) * (1 - d) - (8 if i % 11 == 10 else 0))
    logits = np.stack(logits).astype(np.float32)
    logits[5] = logits[4] + 0.01  # a near duplicate for NMS
    return logits, rs.uniform(0.8, 1.0, m).astype(np.float32)


SCORING_CASES = {
    "coco": dict(preset="coco"),  # score filter, purity filter, iou/stability filters, NMS
    "fss": dict(preset="fss"),  # top-k with alpha/beta/exp and the 0.7 score threshold
    "filters": dict(
        preset="fss",
        emd_filter=0.67,
        coverage_filter=0.3,
        topk_scores_threshold=0.0,
        box_nms_thresh=0.5,
        num_merging_mask=3,
        pred_iou_thresh=0.9,
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(SCORING_CASES))
def test_scoring_filtering_and_merge_match_the_official(case):
    config = matcher.make_config(sam=SAM, encoder="sam", **SCORING_CASES[case])
    g, f, h = config.grid, config.frame, 40  # 40 px masks -> 16 cells (2.5 px each)
    rs = np.random.RandomState(len(case))
    logits, iou = _candidate_masks(rs, 24, h)
    dense = np.arange(24) < 8
    r_feat, t_feat = _features(rs, 1, g * g)
    s = r_feat @ t_feat.T
    pool = np.zeros(g * g, bool)
    pool[rs.choice(g * g, 30, replace=False)] = True
    points = rs.randint(0, f, (20, 2)).astype(np.float32)

    masks, stab, boxes, cells, n_in = jax.jit(
        lambda x: matcher._mask_stats(x, jnp.asarray(points), 20, (h, h), config)
    )(logits)
    masks, stab, boxes, cells, n_in = map(np.asarray, (masks, stab, boxes, cells, n_in))
    np.testing.assert_array_equal(boxes, ref.batched_mask_box(torch.as_tensor(masks)).numpy())
    for i in range(24):
        np.testing.assert_allclose(cells[i], ref.area_resize(masks[i], g), atol=1e-6)
    chosen = matcher._host_select(
        iou[None], stab[None], np.ones((1, 24), bool), dense, boxes[None], cells[None],
        n_in[None], np.array([20]), s[None], pool[None], config,
    )[0]  # fmt: skip
    merged = masks[chosen].any(axis=0)

    cfg = dict(
        pred_iou_thresh=config.pred_iou_thresh,
        stability_score_thresh=config.stability_score_thresh,
        iou_filter=config.iou_filter, sel_stability_score_thresh=config.sel_stability_score_thresh,
        nms=config.box_nms_thresh, alpha=config.alpha, beta=config.beta, exp=config.exp,
        purity=config.purity_filter, coverage=config.coverage_filter, emd=config.emd_filter,
        score_filter=config.use_score_filter, score=config.deep_score_filter,
        score_norm=config.deep_score_norm_filter, num_merging_mask=config.num_merging_mask,
        topk_scores_threshold=config.topk_scores_threshold,
    )  # fmt: skip
    kept = ref.generator_filter(logits, iou, dense, cfg)
    q_points = points * (h / f)  # the matched points in the mask (query) frame
    cost = torch.as_tensor((1 - s) / 2)
    want, (purity, coverage, emd) = ref.mask_selection(
        kept, q_points, cost, torch.as_tensor(pool), g, cfg
    )
    # the generator's filters and NMS keep the same masks in the same order
    ids = np.nonzero(
        np.where(dense, iou > config.pred_iou_thresh if config.pred_iou_thresh > 0 else True,
                 iou > config.iou_filter if config.iou_filter > 0 else True)
        & np.where(dense, stab >= config.stability_score_thresh,
                   stab >= config.sel_stability_score_thresh)
    )[0]  # fmt: skip
    ids = ids[matcher.box_nms(boxes[ids], iou[ids], config.box_nms_thresh)]
    np.testing.assert_array_equal(masks[ids], kept)
    assert 3 <= len(kept) < 24  # the filters act
    for j, i in enumerate(ids):
        p, c, e = matcher.mask_scores(cells[i].reshape(-1), n_in[i], 20, (1 - s) / 2, pool)
        np.testing.assert_allclose([p, c, e], [purity[j], coverage[j], emd[j]], rtol=1e-6)
    assert 0 < chosen.sum() <= config.num_merging_mask
    np.testing.assert_array_equal(merged, want)


def test_the_official_presets_and_bad_options():
    coco, fss = matcher.make_config(preset="coco"), matcher.make_config(preset="fss")
    assert coco.dinov2.embed_dim == 1024 and coco.input_size == 518 and coco.grid == 37
    assert coco.sam.encoder_embed_dim == 1280  # official: SAM ViT-H
    assert (coco.sample_range, coco.max_sample_iterations, coco.num_merging_mask) == ((1, 6), 64, 9)
    assert coco.use_dense_mask and coco.use_score_filter and coco.use_points_or_centers
    assert (fss.alpha, fss.beta, fss.exp, fss.sample_range) == (0.8, 0.2, 1.0, (4, 6))
    assert not fss.use_points_or_centers and not fss.use_dense_mask
    assert matcher.make_config(preset="lvis") == coco
    learner = registry.get("matcher")
    assert learner.frozen(coco) == FrozenSpec(sam=coco.sam, backbone=coco.dinov2)
    config = learner.make_config(sam=SAM, encoder="sam")
    assert learner.frozen(config) == FrozenSpec(sam=config.sam, backbone=None)
    assert learner.init(jax.random.key(0), config) == {} and not learner.trainable
    with pytest.raises(ValueError, match="encoder must be one of"):
        matcher.make_config(sam=SAM, encoder="clip")
    with pytest.raises(ValueError, match="unknown preset"):
        matcher.make_config(sam=SAM, preset="pascal")
    with pytest.raises(TypeError, match="unknown Matcher options"):
        matcher.make_config(sam=SAM, num_points=3)
    with pytest.raises(ValueError, match="sample_range"):
        matcher.make_config(sam=SAM, sample_range=(3, 1))
    with pytest.raises(ValueError, match="not a multiple"):
        matcher.make_config(sam=SAM, input_size=500)
    with pytest.raises(ValueError, match="not a DINOv2"):
        matcher.make_config(sam=SAM, dinov2="vgg16_bn")
    with pytest.raises(ValueError, match="output_layer"):
        matcher.make_config(sam=SAM, output_layer=7)
    # `backbone` (what jaxvrp segment fills in) names the encoder
    assert matcher.make_config(sam=SAM, backbone="sam_tiny_128").encoder == "sam"
    assert matcher.make_config(sam=SAM, backbone="dinov2_test").dinov2.embed_dim == 64
    with pytest.raises(ValueError, match="not the SAM's encoder"):
        matcher.make_config(sam=SAM, backbone="sam_vit_b")
    with pytest.raises(ValueError, match="encoder='dinov2' conflicts with backbone='sam_tiny_128'"):
        matcher.make_config(sam=SAM, backbone="sam_tiny_128", encoder="dinov2")


def test_dinov2_encoder_points_are_patch_centres():
    """encoder="dinov2": the matched points are 14-px patch centres of the DINOv2 frame."""
    from jaxvrp import backbones

    config = matcher.make_config(
        sam=SAM, dinov2="dinov2_test", preset="fss", sample_range=(1, 2), max_sample_iterations=4
    )
    assert config.frame == 112 and config.grid == 8
    sam_params = _random(sam_lib.param_shapes(sam_lib.get_config(SAM)), 0)
    dino = _random(backbones.param_shapes(config.dinov2), 1)
    rs = np.random.RandomState(0)
    batch = {
        "query_image": rs.randn(1, 64, 64, 3).astype(np.float32),
        "support_images": rs.randn(1, 1, 64, 64, 3).astype(np.float32),
        "support_annotations": _disc(64, 30, 30, 15)[None, None],
    }
    out = jax.jit(lambda fr, b: matcher.predict(fr, b, config, jax.random.key(2)))(
        {"sam": sam_params, "backbone": dino}, batch
    )
    n = int(out["num_points"][0])
    pts = np.asarray(out["points"][0, :n])
    assert n > 0 and np.all(pts % 14 == 7) and np.all(pts < 112)
    assert out["logits"].shape == (1, 64, 64) and set(np.unique(out["logits"])) <= {-1.0, 1.0}


def test_matcher_through_segment(tmp_path, capsys):
    """`jaxvrp segment --method matcher` with only a SAM checkpoint (the SAM encoder): the
    masks written are Matcher's own prediction; a bad option is refused by name."""
    cfg = sam_lib.get_config(SAM)
    sam_params = _random(sam_lib.param_shapes(cfg), 0)
    params_io.save_params(tmp_path / "sam", sam_params, {"kind": "sam", "config": cfg.to_dict()})
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    ref_rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ref_rgb[(yy - 30) ** 2 + (xx - 25) ** 2 < 144] = (200, 40, 40)
    Image.fromarray(ref_rgb).save(tmp_path / "ref.png")
    disc = (yy - 30) ** 2 + (xx - 25) ** 2 < 12**2
    Image.fromarray(np.where(disc, 255, 0).astype(np.uint8)).save(tmp_path / "ref_mask.png")
    (tmp_path / "targets").mkdir()
    tgt = rng.integers(0, 256, (56, 40, 3), dtype=np.uint8)
    tgt[10:30, 5:25] = (200, 40, 40)
    Image.fromarray(tgt).save(tmp_path / "targets" / "t.png")
    options = [  # no encoder: with only a SAM checkpoint, its own encoder (backbone=sam_<v>)
        "--option", 'preset="fss"',
        "--option", "sample_range=[1, 3]", "--option", "max_sample_iterations=6",
    ]  # fmt: skip
    args = [
        "segment", "--method", "matcher", *options, "--sam", str(tmp_path / "sam"),
        "--reference", str(tmp_path / "ref.png"),
        "--reference-mask", str(tmp_path / "ref_mask.png"),
        "--targets", str(tmp_path / "targets"),
    ]  # fmt: skip
    assert cli.main([*args, "--out", str(tmp_path / "out")]) == 0
    with Image.open(tmp_path / "out" / "t_mask.png") as m:
        written = np.asarray(m)
    assert written.shape == (56, 40) and set(np.unique(written)) <= {0, 255}
    assert (tmp_path / "out" / "t_overlay.png").is_file()

    s = cfg.image_size  # --method's default image size
    with Image.open(tmp_path / "ref_mask.png") as m:
        ann = (np.asarray(m.resize((s, s), Image.NEAREST)) > 0).astype(np.float32)
    batch = {
        "query_image": normalized_image(tgt, s)[None],
        "support_images": normalized_image(ref_rgb, s)[None, None],
        "support_annotations": ann[None, None],
    }
    config = matcher.make_config(
        sam=SAM, encoder="sam", preset="fss", sample_range=(1, 3), max_sample_iterations=6
    )
    # the registered learner's apply, jitted as `jaxvrp segment` does (its compiled copy)
    logits = seg._predictor(registry.get("matcher"), config)({}, {"sam": sam_params}, batch)
    up = np.asarray(resize_bilinear(logits[0], (56, 40), channels_last=False))
    sure = np.abs(up) > 1e-4
    assert sure.mean() > 0.9 and (logits > 0).any()
    np.testing.assert_array_equal(written[sure] > 0, up[sure] > 0)

    capsys.readouterr()
    bad = [
        "segment",
        "--method",
        "matcher",
        "--option",
        'encoder="clip"',
        *args[3 + len(options) :],
    ]
    assert cli.main([*bad, "--out", str(tmp_path / "bad")]) == 2
    assert "encoder must be one of" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_config_file_and_the_multi_device_guard():
    """configs/matcher.py: the official presets per dataset; `jaxvrp.evaluate` with the
    batch sharded over the 8 simulated CPU devices is refused with a clear error (XLA's
    CPU callbacks stall there; one CPU device, GPU and TPU run)."""
    from configs import matcher as matcher_config

    c = matcher_config.get_config(None)
    config = registry.get(c.learner).make_config(**c.model)
    assert config == matcher.make_config() and c.data.image_size == 518
    fss = matcher_config.get_config("dataset=fss1000")
    assert registry.get("matcher").make_config(**fss.model) == matcher.make_config(preset="fss")
    sam = matcher_config.get_config("encoder=sam,preset=lvis")
    assert registry.get("matcher").make_config(**sam.model).encoder == "sam"
    with pytest.raises(ValueError, match="unknown config arg"):
        matcher_config.get_config("backbone=vgg16_bn")
    off = registry.get("matcher").make_config(**matcher_config.get_config("filters=off").model)
    thresholds = dict.fromkeys(matcher_config.QUALITY_FILTERS, 0.0)
    assert off == dataclasses.replace(matcher.make_config(), **thresholds)
    assert matcher.make_config().iou_filter == 0.85  # coco.sh: the preset's differ from 0
    with pytest.raises(ValueError, match="filters must be 'preset' or 'off', got 'of'"):
        matcher_config.get_config("filters=of")
    c = matcher_config.get_config("runlocal")
    config = registry.get("matcher").make_config(**c.model)
    assert config.encoder == "sam" and config.sample_range == (1, 2)
    batch = {  # what `jaxvrp.evaluate` passes with batch_size 8: one example per device
        "query_image": jnp.zeros((8, 32, 32, 3)),
        "support_images": jnp.zeros((8, 1, 32, 32, 3)),
        "support_annotations": jnp.zeros((8, 1, 32, 32)),
    }
    with pytest.raises(ValueError, match="sharded over 8 CPU devices"):
        jax.eval_shape(lambda b: matcher.predict({"sam": None}, b, config), batch)


def test_kmeans_centres_match_the_official_on_separated_clusters():
    """FSS's clustering: on well-separated blobs both k-means++ (numpy draws here, torch's
    officially) converge to the same centres, truncated to int64 pixels."""
    rs = np.random.RandomState(0)
    means = np.array([[20, 30], [100, 40], [60, 110], [120, 120]], np.float32)
    pts = np.concatenate([m + rs.randint(-6, 7, (9, 2)) for m in means]).astype(np.int64)
    config = matcher.make_config(sam=SAM, encoder="sam", preset="fss", num_centers=4)
    got = matcher.clustering(pts, config, np.random.default_rng(1))
    torch.manual_seed(0)
    want, _ = ref.kmeans_pp(pts, 4)
    assert got.dtype == np.int64
    key = lambda c: sorted(map(tuple, c.tolist()))
    assert key(got) == key(np.asarray(want.numpy()).astype(np.int64))


def test_skipping_map_decodes_only_the_chunks_with_a_drawn_subset():
    """`skipping_map` equals the vmapped function on every chunk holding an `ok` entry and
    gives zeros on the others (whose function is not run: a NaN there would show)."""
    xs = jnp.arange(10.0).reshape(10, 1) + 1.0
    ok = jnp.asarray([1, 1, 0, 0, 0, 0, 0, 1, 0, 0], bool)  # chunks of 3: [0-2] [3-5] [6-8] [9]
    calls = lambda x: (jnp.where(x[:, 0] > 3.5, jnp.log(x[:, 0]), x[:, 0] * 2), x + 1)
    a, b = matcher.skipping_map(calls, xs, ok, 3)
    want_a, want_b = calls(xs)
    run = np.asarray([1, 1, 1, 0, 0, 0, 1, 1, 1, 0], bool)
    np.testing.assert_array_equal(np.asarray(a)[run], np.asarray(want_a)[run])
    np.testing.assert_array_equal(np.asarray(b)[run], np.asarray(want_b)[run])
    assert not np.asarray(a)[~run].any() and not np.asarray(b)[~run].any()
    assert a.shape == (10,) and b.shape == (10, 1)
    nan = lambda x: jnp.where(x > 3.5, jnp.nan, x)
    assert not np.isnan(np.asarray(matcher.skipping_map(nan, xs, ok, 3))[~run]).any()


def test_the_decoding_chunk_size_changes_no_prediction():
    """Matcher end to end with `points_per_batch` 3 (most subset slots' chunks skipped) and
    512 (one chunk per subset size: nothing skipped where a size has any subset): the same
    matched points, chosen masks and merged logits."""
    cfg = sam_lib.get_config(SAM)
    sam_params = _random(sam_lib.param_shapes(cfg), 3)
    rs = np.random.default_rng(5)
    s = cfg.image_size
    ann = np.stack([_disc(s, 60, 50, 30), _disc(s, 40, 80, 12)])[:, None]
    batch = {
        "query_image": jnp.asarray(rs.normal(size=(2, s, s, 3)), jnp.float32),
        "support_images": jnp.asarray(rs.normal(size=(2, 1, s, s, 3)), jnp.float32),
        "support_annotations": jnp.asarray(ann),
    }
    out = {}
    for ppb in (3, 512):
        config = matcher.make_config(
            sam=SAM, encoder="sam", preset="coco", max_sample_iterations=2, points_per_side=4,
            points_per_batch=ppb, iou_filter=0.0, sel_stability_score_thresh=0.0,
            pred_iou_thresh=0.0, stability_score_thresh=0.0,
        )  # fmt: skip
        out[ppb] = jax.jit(lambda b, c=config: matcher.predict({"sam": sam_params}, b, c))(batch)
    for k in ("points", "num_points", "chosen", "logits"):
        np.testing.assert_array_equal(np.asarray(out[3][k]), np.asarray(out[512][k]), err_msg=k)
    assert np.asarray(out[3]["chosen"]).any()
