"""SAMIC: heat maps, the saliency losses, connected components, peaks -> prompts, points
from masks (interior, SAM-greedy) and the learner (jit, gradients, a few Adam steps)."""

from functools import cache, partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import ndimage

from jaxvrp import backbones
from jaxvrp.learners import heatmaps, hsnet, mask_points, registry, samic
from jaxvrp.sam import model as sam_model
from tests.learners.common import make_batch

prompts_jit = jax.jit(
    heatmaps.heatmap_prompts, static_argnames=("threshold", "max_components", "point")
)
loss_jit = jax.jit(
    heatmaps.heatmap_loss, static_argnames=("kld_weight", "cc_weight", "nss_weight", "nss")
)

EPS = 1e-6
EIGHT = np.ones((3, 3), int)
FOUR = ndimage.generate_binary_structure(2, 1)


# --------------------------------------------------------------------------- heat maps


def numpy_heatmap(points, valid, h, w, sigma):
    """§3.2 pixel by pixel, float64."""
    g = np.zeros((h, w))
    for (xk, yk), v in zip(points, valid, strict=True):
        if not v:
            continue
        for y in range(h):
            for x in range(w):
                g[y, x] += np.exp(-(((x - xk) / w) ** 2 + ((y - yk) / h) ** 2) / (2 * sigma**2))
    return g / g.max() if g.max() > 0 else g


def test_gaussian_heatmap_matches_the_formula():
    rs = np.random.RandomState(0)
    h, w = 24, 40
    pts = np.stack([rs.uniform(0, w - 1, (3, 4)), rs.uniform(0, h - 1, (3, 4))], -1)
    valid = np.array([[1, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    for sigma in (0.02, 0.1):
        got = np.asarray(heatmaps.gaussian_heatmap(pts, valid, (h, w), sigma))
        assert got.shape == (3, h, w)
        for i in range(3):
            want = numpy_heatmap(pts[i], valid[i], h, w, sigma)
            np.testing.assert_allclose(got[i], want, atol=1e-6)
    assert got[0].max() == pytest.approx(1.0) and not got[2].any()  # no point: all zeros
    # padding points change nothing, wherever they lie
    moved = pts.copy()
    moved[~valid] = 1e3
    np.testing.assert_array_equal(
        np.asarray(heatmaps.gaussian_heatmap(moved, valid, (h, w), 0.1)), got
    )


# ------------------------------------------------------------------------------ losses


def _maps(seed=0, b=3, h=16, w=20):
    rs = np.random.RandomState(seed)
    target = np.stack(
        [
            numpy_heatmap(
                np.stack([rs.uniform(0, w, 2), rs.uniform(0, h, 2)], -1), [1, 1], h, w, 0.1
            )
            for _ in range(b)
        ]
    ).astype(np.float32)
    pred = rs.uniform(0, 1, (b, h, w)).astype(np.float32)
    return pred, target


def np_kld(p, g, normalize):
    p, g = p.astype(np.float64), g.astype(np.float64)
    if normalize:
        p, g = p / (p.sum() + EPS), g / (g.sum() + EPS)
    return np.sum(g * np.log(EPS + g / (p + EPS)))


def np_cc(p, g):
    return 1.0 - np.corrcoef(p.ravel(), g.ravel())[0, 1]


def np_nss(p, g, form):
    f = g > 0.5
    zp = (p - p.mean()) / p.std()
    zg = (g - g.mean()) / g.std()
    if form == "standard":
        return -zp[f].mean()
    return (zg - zp)[f].sum() / f.sum()


def test_loss_terms_match_numpy():
    pred, target = _maps()
    for normalize in (True, False):
        got = np.asarray(heatmaps.kld(pred, target, normalize=normalize))
        want = [np_kld(p, g, normalize) for p, g in zip(pred, target, strict=True)]
        np.testing.assert_allclose(got, want, rtol=1e-4)
    np.testing.assert_allclose(
        np.asarray(heatmaps.cc_loss(pred, target)),
        [np_cc(p, g) for p, g in zip(pred, target, strict=True)],
        rtol=1e-4,
        atol=1e-5,
    )
    for form in ("printed", "standard"):
        got = np.asarray(heatmaps.nss_loss(pred, target, form=form))
        want = [np_nss(p, g, form) for p, g in zip(pred, target, strict=True)]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # the two NSS forms differ by mean z(G) over the fixations, a constant of the target
    fix = target > 0.5
    zg = (target - target.mean((1, 2), keepdims=True)) / target.std((1, 2), keepdims=True)
    np.testing.assert_allclose(
        np.asarray(
            heatmaps.nss_loss(pred, target) - heatmaps.nss_loss(pred, target, form="standard")
        ),
        [zg[i][fix[i]].mean() for i in range(len(pred))],
        rtol=1e-4,
    )
    # a perfect prediction: CC loss 0 up to eps / var(G), KLD ~ 0
    assert np.abs(np.asarray(heatmaps.cc_loss(target, target))).max() < 1e-4
    assert np.abs(np.asarray(heatmaps.kld(target, target))).max() < 1e-3


def test_heatmap_loss_weights_and_valid_maps():
    pred, target = _maps(seed=1)
    target[1] = 0.0  # a target without points: CC would be 0/0
    valid = np.array([True, False, True])
    w = {"kld_weight": 0.5, "cc_weight": 2.0, "nss_weight": 0.0}
    loss, terms = loss_jit(pred, target, valid=valid, nss="standard", **w)
    assert np.isfinite(float(loss))
    keep = [0, 2]
    want = {
        "kld": np.mean([np_kld(pred[i], target[i], True) for i in keep]),
        "cc": np.mean([np_cc(pred[i], target[i]) for i in keep]),
        "nss": np.mean([np_nss(pred[i], target[i], "standard") for i in keep]),
    }
    for k, v in want.items():
        assert float(terms[k]) == pytest.approx(v, rel=1e-4), k
    assert float(loss) == pytest.approx(0.5 * want["kld"] + 2.0 * want["cc"], rel=1e-4)
    empty, _ = loss_jit(pred, target, valid=np.zeros(3, bool))
    assert float(empty) == 0.0
    grads = jax.jit(jax.grad(lambda p: heatmaps.heatmap_loss(p, target, valid=valid)[0]))(pred)
    assert np.isfinite(np.asarray(grads)).all()


# --------------------------------------------------------------- connected components


def random_masks(n, seed=0, h=23, w=31):
    """Blobs of varied density and smoothness, plus single pixels and diagonal chains."""
    rs = np.random.RandomState(seed)
    out = []
    for i in range(n):
        noise = ndimage.gaussian_filter(rs.randn(h, w), sigma=rs.uniform(0.0, 2.0))
        m = noise > np.quantile(noise, rs.uniform(0.3, 0.9))
        if i % 4 == 0:  # diagonal-only contacts: one component in 8-, many in 4-connectivity
            m |= np.eye(h, w, k=rs.randint(-5, 5), dtype=bool)
        out.append(m)
    out.append(np.zeros((h, w), bool))
    out.append(np.ones((h, w), bool))
    snake = np.zeros((h, w), bool)  # a long serpentine: many propagation steps
    snake[::4] = True
    snake[1::8, -1] = snake[3::8, 0] = True
    out.append(snake)
    return np.stack(out)


def same_partition(ours, ref):
    """ours and ref label the same pixels and match one to one."""
    assert ((ours > 0) == (ref > 0)).all()
    pairs = set(zip(ours[ref > 0].tolist(), ref[ref > 0].tolist(), strict=True))
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_label_components_matches_scipy():
    masks = random_masks(24)
    for conn, structure in ((8, EIGHT), (4, FOUR)):
        labels = np.asarray(
            jax.jit(heatmaps.label_components, static_argnames="connectivity")(
                masks, connectivity=conn
            )
        )
        for m, lab in zip(masks, labels, strict=True):
            ref, n = ndimage.label(m, structure=structure)
            same_partition(lab, ref)
            assert len(np.unique(lab[lab > 0])) == n
            # our label is 1 + the raster index of the component's first pixel
            for c in np.unique(lab[lab > 0]):
                assert np.flatnonzero(lab.ravel() == c)[0] == c - 1


def test_components_are_padded_and_largest_first():
    masks = random_masks(20, seed=3)
    m_max = 5
    out = jax.jit(heatmaps.components, static_argnums=1)(masks, m_max)
    for i, m in enumerate(masks):
        ref, n = ndimage.label(m, structure=EIGHT)
        areas = np.sort(np.bincount(ref.ravel())[1:])[::-1]
        assert int(out["count"][i]) == n
        kept = min(n, m_max)
        np.testing.assert_array_equal(np.asarray(out["valid"][i]), np.arange(m_max) < kept)
        np.testing.assert_array_equal(np.asarray(out["areas"][i])[:kept], areas[:kept])
        assert not np.asarray(out["masks"][i, kept:]).any()
        assert not np.asarray(out["areas"][i, kept:]).any()
        comp = np.asarray(out["masks"][i, :kept])
        assert (comp.sum((1, 2)) == areas[:kept]).all()
        for c in comp:  # each kept mask is exactly one scipy component
            assert len(np.unique(ref[c])) == 1 and (ref == ref[c][0]).sum() == c.sum()


# ------------------------------------------------------------------ peaks -> prompts


def blob_heat(centres, radii, h=40, w=48):
    """A heat map with one disc of value 0.9 per (x, y) centre on 0.1."""
    yy, xx = np.mgrid[:h, :w]
    heat = np.full((h, w), 0.1, np.float32)
    for (x, y), r in zip(centres, radii, strict=True):
        d2 = (xx - x) ** 2 + (yy - y) ** 2
        heat = np.where(d2 <= r * r, np.maximum(heat, 0.9 - 0.01 * np.sqrt(d2)), heat)
    return heat


def test_heatmap_prompts_zero_one_and_too_many_components():
    m_max = 3
    centres = [(6, 6), (30, 8), (10, 30), (38, 30)]
    radii = [2, 5, 3, 4]  # areas differ: 13, 81, 29, 49
    odd = np.zeros((40, 48), np.float32)  # an L-shaped component, its maximum off-centre
    odd[2:5, 3:9] = 0.8
    odd[5:9, 3] = 0.7
    odd[3, 7] = 0.95
    heats = np.stack(
        [
            np.full((40, 48), 0.2, np.float32),
            blob_heat(centres[1:2], radii[1:2]),
            blob_heat(centres, radii),
            odd,
        ]
    )
    ys, xs = np.nonzero(odd > 0.5)
    for point, odd_point in (("centroid", [xs.mean(), ys.mean()]), ("peak", [7, 3])):
        out = prompts_jit(heats, max_components=m_max, point=point)
        valid, pts = np.asarray(out["valid"]), np.asarray(out["points"])
        assert not valid[0].any() and (pts[0] == 0).all()  # no peak: no prompt
        np.testing.assert_array_equal(valid[1], [True, False, False])
        np.testing.assert_allclose(pts[1, 0], centres[1], atol=1e-4)
        assert valid[2].all() and int(out["count"][2]) == 4
        # M + 1 components: the smallest (radius 2) is dropped, the rest largest first
        np.testing.assert_allclose(pts[2], [centres[1], centres[3], centres[2]], atol=1e-4)
        np.testing.assert_array_equal(valid[3], [True, False, False])
        np.testing.assert_allclose(pts[3, 0], odd_point, rtol=1e-6)


# ---------------------------------------------------------------- points from masks


def test_interior_points_are_farthest_from_the_boundary():
    masks = random_masks(20, seed=5)
    for m in masks:
        pts = mask_points.interior_points(m, max_points=4)
        ref, n = ndimage.label(m, structure=EIGHT)
        assert len(pts) == min(n, 4)
        areas = np.bincount(ref.ravel(), minlength=n + 1)[1:]
        seen, prev = set(), np.inf
        for x, y in pts.astype(int):
            c = ref[y, x]
            assert c > 0 and c not in seen  # inside, one per component
            seen.add(c)
            assert areas[c - 1] <= prev  # largest components first
            prev = areas[c - 1]
            dist = ndimage.distance_transform_edt(np.pad(ref == c, 1))[1:-1, 1:-1]
            assert dist[y, x] == dist.max()
    assert mask_points.interior_points(np.zeros((5, 5)), max_points=3).shape == (0, 2)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        mask_points.interior_points(np.zeros((2, 5, 5)), max_points=3)


def disc_predict(radius, h, w):
    """A stand-in SAM: the union of discs of `radius` around the positive points."""
    yy, xx = np.mgrid[:h, :w]

    def predict(points, labels):
        out = np.zeros((h, w), bool)
        for (x, y), lab in zip(points, labels, strict=True):
            if lab == 1:
                out |= (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
        return out

    return predict


def test_sam_greedy_adds_points_while_iou_rises():
    h, w = 40, 50
    yy, xx = np.mgrid[:h, :w]
    mask = ((xx - 12) ** 2 + (yy - 12) ** 2 <= 36) | ((xx - 36) ** 2 + (yy - 26) ** 2 <= 36)
    predict = disc_predict(6, h, w)
    pts, hist = mask_points.sam_greedy_points(mask, predict, max_points=5, min_gain=0.01)
    # one point per disc at its centre gives IoU 1; a third point cannot help
    assert len(pts) == 2 and hist[-1] == pytest.approx(1.0)
    assert sorted(map(tuple, pts.astype(int).tolist())) == [(12, 12), (36, 26)]
    # a bound on the points, and a large min_gain stop earlier
    assert len(mask_points.sam_greedy_points(mask, predict, max_points=1)[0]) == 1
    small = disc_predict(2, h, w)
    pts, hist = mask_points.sam_greedy_points(mask, small, max_points=20, min_gain=0.01)
    assert 2 < len(pts) <= 20 and np.all(np.diff(hist) >= 0.01)
    assert hist[-1] == pytest.approx(mask_points.iou(small(pts, np.ones(len(pts))), mask))
    with pytest.raises(ValueError, match="min_gain"):
        mask_points.sam_greedy_points(mask, predict, max_points=3, min_gain=0.0)


# ------------------------------------------------------------------------- the learner
# A small SAMIC: the test ResNet (torchvision stem), one 4D layer per block, the 256-pixel
# test SAM, 64-pixel episodes.

SMALL = {"backbone": "resnet_test", "sam": "test_small_image", "num_4d_layers": 1}


def small_config(**options):
    return samic.make_config(**{**SMALL, "max_components": 3, **options})


def random_params(shapes, seed):
    """Seeded random parameters of a `param_shapes` tree, filled on the host: jitting the
    models' own initialisers costs far more compile time than the tests themselves.
    Kernels ~ N(0, 1 / fan_in), norm scales ~ 1 + N(0, 0.1^2), biases / running means
    ~ N(0, 0.1^2), running variances ~ U(0.5, 1.5)."""
    rs = np.random.RandomState(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        shape = leaf.shape
        if name.endswith("['var']"):
            x = rs.uniform(0.5, 1.5, shape)
        elif name.endswith("['scale']"):
            x = 1.0 + 0.1 * rs.randn(*shape)
        elif name.endswith("['bias']") or name.endswith("['mean']"):
            x = 0.1 * rs.randn(*shape)
        else:
            x = rs.randn(*shape) / np.sqrt(max(int(np.prod(shape[:-1])), 1))
        return jnp.asarray(x, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@cache
def frozen():
    cfg = small_config()
    return {
        "sam": random_params(sam_model.param_shapes(cfg.sam), 7),
        "backbone": random_params(backbones.param_shapes(cfg.hsnet.backbone), 8),
    }


def learner_params(seed, config=None):
    config = config or small_config()
    return random_params(hsnet.param_shapes(config.hsnet), seed)


def point_batch(b=2, k=1, seed=0):
    return mask_points.add_points(make_batch(b=b, k=k, size=64, seed=seed), max_points=3)


def test_config_registry_and_batch_keys():
    cfg = small_config(point="peak", kld_weight=0.0)
    assert cfg.point == "peak" and cfg.kld_weight == 0.0 and cfg.hsnet.num_4d_layers == 1
    learner = registry.get("samic")
    assert learner is samic.LEARNER and learner.trainable
    assert set(learner.batch_keys) == set(samic.POINT_KEYS)
    spec = learner.frozen(cfg)
    assert spec.keys == ("sam", "backbone") and spec.backbone == cfg.hsnet.backbone
    paper = samic.make_config()
    assert (paper.sigma, paper.threshold, paper.heatmap, paper.nss) == (
        0.02,
        0.5,
        "channel_softmax",
        "printed",
    )
    assert paper.hsnet.num_4d_layers == 3
    # SAMIC learns HSNet's parameters and nothing else: 2,573,794 with ResNet-50 ("2.6M")
    shapes = jax.eval_shape(partial(samic.init, config=paper), jax.random.key(0))
    assert samic.num_params(shapes) == 2_573_794
    for bad in ({"point": "mode"}, {"sam_calls": "all"}, {"heatmap": "sigmoid"}, {"nss": "x"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            small_config(**bad)
    with pytest.raises(TypeError, match="SAMIC's own options"):
        small_config(num_layers=2)
    batch = make_batch(b=1, size=64)
    with pytest.raises(KeyError, match="add_points"):
        samic.heatmap(learner_params(0), frozen(), batch, config=cfg)


def test_point_cache_computes_once(tmp_path):
    cache_ = mask_points.PointCache(str(tmp_path / "points"))
    calls = []

    def compute():
        calls.append(1)
        return np.array([[1.0, 2.0], [3.0, 4.0]])

    key = "image-7/sam_greedy/seed0"
    first = cache_.get(key, compute)
    again = mask_points.PointCache(str(tmp_path / "points")).get(key, compute)
    np.testing.assert_array_equal(first, again)
    assert len(calls) == 1 and again.dtype == np.float32


def test_add_points_from_masks():
    batch = make_batch(b=2, k=2, size=64, seed=3)
    out = mask_points.add_points(batch, max_points=3)
    assert out["support_points"].shape == (2, 2, 3, 2) and out["query_points"].shape == (2, 3, 2)
    assert out["support_point_valid"].dtype == bool
    for i in range(2):
        want = mask_points.interior_points(batch["query_mask"][i], max_points=3)
        n = len(want)
        np.testing.assert_array_equal(out["query_point_valid"][i], np.arange(3) < n)
        np.testing.assert_array_equal(out["query_points"][i, :n], want)
        for j in range(2):
            x, y = out["support_points"][i, j, 0].astype(int)
            assert batch["support_annotations"][i, j, y, x] > 0
    with pytest.raises(ValueError, match="method"):
        mask_points.add_points(batch, max_points=3, method="kmeans")
    with pytest.raises(ValueError, match="sam_predict"):
        mask_points.add_points(batch, max_points=3, method="sam_greedy")


def test_sam_greedy_with_the_small_sam():
    cfg = small_config()
    batch = make_batch(b=1, k=1, size=64, seed=4)
    predict = mask_points.make_sam_predict(frozen()["sam"], batch["query_image"][0], config=cfg.sam)
    mask = batch["query_mask"][0]
    pts, hist = mask_points.sam_greedy_points(mask, predict, max_points=2, min_gain=1e-3)
    assert len(pts) == len(hist) <= 2
    assert np.all(np.diff([0.0, *hist]) >= 1e-3)  # every accepted point raised the IoU
    if len(pts):
        assert hist[-1] == pytest.approx(mask_points.iou(predict(pts, np.ones(len(pts))), mask > 0))
        assert all(mask[int(y), int(x)] > 0 for x, y in pts)
    out = mask_points.add_points(
        batch,
        max_points=2,
        method="sam_greedy",
        sam_predict=partial(mask_points.make_sam_predict, frozen()["sam"], config=cfg.sam),
        min_gain=1e-3,
    )
    assert out["query_point_valid"].sum() == len(pts)


def test_prompt_sam_unites_components_and_empty_heatmaps_give_empty_masks():
    cfg, joint_cfg = small_config(), small_config(sam_calls="joint")
    sam = frozen()["sam"]
    images = make_batch(b=2, size=64)["query_image"]
    points = jnp.array([[[10.0, 12.0], [40.0, 50.0], [0.0, 0.0]], [[0.0, 0.0]] * 3])
    valid = jnp.array([[True, True, False], [False, False, False]])

    @jax.jit
    def run(sam, images, points, valid):
        emb = samic.sam_embeddings(sam, images, cfg)
        per = samic.prompt_sam(sam, emb, points, valid, (64, 64), config=cfg)
        joint = samic.prompt_sam(sam, emb, points, valid, (64, 64), config=joint_cfg)

        def single(pts, labels):  # SAM on image 0 alone with exactly these points
            scaled = samic.to_sam_frame(pts, (64, 64), cfg.sam.image_size)
            low, _ = sam_model.predict_masks(
                sam,
                emb[:1],
                config=cfg.sam,
                points=scaled[None],
                point_labels=labels[None],
                multimask_output=False,
            )
            size = (64, 64)
            return samic.resize_bilinear(low[0, 0], size, align_corners=True, channels_last=False)

        one = jnp.ones(1, jnp.int32)
        united = jnp.maximum(single(points[0, :1], one), single(points[0, 1:2], one))
        padded = single(points[0], jnp.array([1, 1, -1], jnp.int32))
        return per, joint, united, padded

    per, joint, united, padded = map(np.asarray, run(sam, images, points, valid))
    for out in (per, joint):
        assert out.shape == (2, 64, 64)
        assert (out[1] == samic.EMPTY_LOGIT).all()  # no peak: an empty mask
    # per component: the maximum of the one-point masks; joint: one call, -1 padding
    np.testing.assert_allclose(per[0], united, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(joint[0], padded, rtol=1e-4, atol=1e-4)
    assert (per[0] > 0).any() and (per[0] < 0).any()  # a non-trivial mask was compared


def test_apply_under_jit_and_the_k_shot_heatmap_is_the_mean_of_the_shots():
    cfg = small_config()
    batch = point_batch(b=1, k=2, seed=5)
    params = learner_params(1)

    @jax.jit
    def run(params, frozen, batch):
        return (
            samic.apply(params, frozen, batch, config=cfg),
            samic.heatmap(params, frozen, batch, config=cfg),
        )

    logits, heat = run(params, frozen(), batch)
    assert logits.shape == (1, 64, 64) and np.isfinite(np.asarray(logits)).all()
    assert float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0
    # the same query paired with each shot alone, as a batch of two one-shot episodes
    split = {k: np.repeat(v, 2, axis=0) for k, v in batch.items() if not k.startswith("support")}
    for key in ("support_images", "support_annotations", "support_points", "support_point_valid"):
        split[key] = np.swapaxes(batch[key], 0, 1)
    shots = jax.jit(samic.heatmap, static_argnames="config")(params, frozen(), split, config=cfg)
    np.testing.assert_allclose(np.asarray(heat[0]), np.asarray(shots.mean(axis=0)), atol=1e-6)


def test_precomputed_backbone_stages_give_the_same_heat_map_and_loss():
    """HSNet's stages (`hsnet.precomputable_stages`) as `jaxvrp.precompute` stores them, in
    the batch: the 2-shot heat map and loss equal the backbone pass in the step."""
    from jaxvrp.learners import vrp

    cfg = small_config()
    learner = registry.get("samic")
    assert learner.backbone_stages(cfg) == hsnet.precomputable_stages(cfg.hsnet)
    names = learner.backbone_stages(cfg)["query"]
    f, params = frozen(), learner_params(2)
    plain = point_batch(b=2, k=2, seed=9)
    stages = jax.jit(lambda p, x: vrp.stored_stages(p, x, cfg.hsnet.backbone, names))
    q = stages(f["backbone"], plain["query_image"])
    s = stages(f["backbone"], plain["support_images"].reshape(4, 64, 64, 3))
    served = {
        **plain,
        **{f"query_features/{n}": np.asarray(v) for n, v in q.items()},
        **{
            f"support_features/{n}": np.asarray(v).reshape(2, 2, *v.shape[1:]) for n, v in s.items()
        },
    }

    @jax.jit
    def run(params, frozen, batch):
        heat = samic.heatmap(params, frozen, batch, config=cfg)
        return heat, samic.loss_fn(params, frozen, batch, config=cfg)[0]

    want, want_loss = run(params, f, plain)
    got, got_loss = run(params, f, served)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    assert abs(float(got_loss - want_loss)) <= 1e-5 * abs(float(want_loss))
    # another query's stages change it: the stored arrays are what the step reads
    swapped = {**served, **{f"query_features/{n}": np.asarray(v)[::-1] for n, v in q.items()}}
    assert np.abs(np.asarray(run(params, f, swapped)[0]) - np.asarray(want)).max() > 1e-3


def test_loss_gradients_are_finite_and_adam_lowers_the_loss():
    cfg = small_config()
    batch = point_batch(b=2, k=1, seed=6)
    params = learner_params(2)
    opt = optax.adam(1e-3)  # §4.2

    @jax.jit
    def step(params, state, frozen, batch):
        (loss, terms), grads = jax.value_and_grad(
            lambda p: samic.loss_fn(p, frozen, batch, config=cfg), has_aux=True
        )(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss, terms, grads

    state = opt.init(params)
    losses = []
    for i in range(6):
        params, state, loss, terms, grads = step(params, state, frozen(), batch)
        if i == 0:
            assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
            assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(grads))
            assert set(terms) == {"kld", "cc", "nss"}
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses


def test_configs_file_defaults_and_sweeps():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[2] / "configs" / "samic.py"
    spec = importlib.util.spec_from_file_location("samic_configs", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    assert c.learner == "samic" and c.data.image_size == 224 and c.batch_size == 4
    assert (c.optimizer.lr, c.epochs, c.optimizer.weight_decay) == (1e-3, 300, 0.0)
    assert c.model.max_points == 8 and not c.frozen.allow_random
    cfg = registry.get(c.learner).make_config(**c.model)
    assert cfg.hsnet.num_4d_layers == 3 and cfg.sam.image_size == 1024
    local = mod.get_config("runlocal")
    sweeps = (mod.sweep_depth, 4), (mod.sweep_loss, 6), (mod.sweep_prompting, 4)
    sweeps += ((mod.sweep_points, 2),)
    for sweep, n in sweeps:
        rows = []
        sweep(lambda **kw: rows.append(kw))  # noqa: B023
        assert len(rows) == n
        for row in rows:  # every key exists in the locked config and makes a valid model
            trial = mod.get_config("runlocal")
            for key, value in row.items():
                block, name = key.split(".")
                trial[block][name] = value
            samic.make_config(**trial.model)
    assert mod.LOSS_ROWS[-1] == ("kld", "cc", "nss")  # the paper's loss is the last row
    assert samic.make_config(**local.model).max_components == 3
    with pytest.raises(ValueError, match="label"):
        mod.get_config("label=point")
