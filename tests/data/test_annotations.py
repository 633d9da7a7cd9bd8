"""Tests of the simulated reference annotations (point, box, scribble, mask)."""

import random

import numpy as np
import pytest
from scipy import ndimage

from jaxvrp.data.annotations import (
    ANNOTATION_TYPES,
    STROKE_PRESET_PROBS,
    STROKE_PRESETS,
    Stroke,
    draw_strokes,
    point_coords,
    random_stroke,
    sample_strokes,
    simulate_annotation,
    simulate_batch,
    tight_box,
)

EIGHT = np.ones((3, 3), bool)  # 8-connectivity for ndimage.label


def _blob(shape: tuple[int, int] = (48, 64), seed: int = 0) -> np.ndarray:
    """A non-convex, non-square bool (H, W) mask: an ellipse plus a detached rectangle."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    rng = np.random.default_rng(seed)
    cy, cx = rng.uniform(0.3, 0.6) * h, rng.uniform(0.3, 0.6) * w
    m = ((yy - cy) / (0.25 * h)) ** 2 + ((xx - cx) / (0.2 * w)) ** 2 <= 1
    m[h - 6 : h - 2, 2:9] = True
    return m


def _square(size: int = 128, lo: int = 24, hi: int = 104) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[lo:hi, lo:hi] = True
    return m


def _uniform_mean_tolerance(lo: int, hi: int, n: int, sigmas: float = 4.0) -> float:
    """`sigmas` standard deviations of the mean of n draws uniform on lo..hi (inclusive)."""
    var = ((hi - lo + 1) ** 2 - 1) / 12
    return sigmas * np.sqrt(var / n)


# --- shapes, dtypes, determinism ------------------------------------------------------------


def test_annotation_types():
    assert ANNOTATION_TYPES == ("point", "box", "scribble", "mask")


@pytest.mark.parametrize("kind", ANNOTATION_TYPES)
@pytest.mark.parametrize("training", [True, False])
def test_shape_dtype_binary(kind, training):
    mask = _blob((37, 53))
    out = simulate_annotation(mask, kind, seed=0, training=training)
    assert out.shape == (37, 53)
    assert out.dtype == np.float32
    assert set(np.unique(out)) <= {0.0, 1.0}


@pytest.mark.parametrize("kind", ANNOTATION_TYPES)
def test_same_seed_same_annotation(kind):
    mask = _blob()
    a = simulate_annotation(mask, kind, seed=7)
    b = simulate_annotation(mask, kind, seed=7)
    c = simulate_annotation(mask, kind, seed=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("kind", ["point", "scribble"])
def test_different_seeds_differ(kind):
    mask = _square()
    outs = [simulate_annotation(mask, kind, seed=s) for s in range(5)]
    for i in range(5):
        for j in range(i + 1, 5):
            assert not np.array_equal(outs[i], outs[j]), (i, j)


def test_generator_seed_advances():
    mask = _square()
    rng = np.random.default_rng(0)
    a = simulate_annotation(mask, "scribble", seed=rng)
    b = simulate_annotation(mask, "scribble", seed=rng)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.int64, np.float32, np.float64])
@pytest.mark.parametrize("kind", ANNOTATION_TYPES)
def test_mask_dtypes_agree(dtype, kind):
    mask = _blob()
    expected = simulate_annotation(mask, kind, seed=3)
    np.testing.assert_array_equal(simulate_annotation(mask.astype(dtype), kind, seed=3), expected)


# --- relation to the mask -------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_point_and_scribble_inside_mask(training):
    mask = _blob()
    for seed in range(20):
        for kind in ("point", "scribble"):
            out = simulate_annotation(mask, kind, seed=seed, training=training)
            assert not np.any(out.astype(bool) & ~mask), (kind, seed)


def test_box_contains_mask_and_is_filled_tight_box():
    mask = _blob()
    box = simulate_annotation(mask, "box", seed=0).astype(bool)
    assert np.all(box[mask])
    x0, y0, x1, y1 = tight_box(mask).astype(int)
    expected = np.zeros_like(mask)
    expected[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(box, expected)
    # tight: every edge row/column of the box touches the mask
    assert mask[y0].any() and mask[y1 - 1].any()
    assert mask[:, x0].any() and mask[:, x1 - 1].any()


def test_mask_is_mask():
    mask = _blob()
    np.testing.assert_array_equal(simulate_annotation(mask, "mask", seed=0), mask)


# --- points ---------------------------------------------------------------------------------


def test_point_counts_training_in_range_and_eval_fixed():
    mask = _blob()
    area = int(mask.sum())
    assert area > 20
    counts = [int(simulate_annotation(mask, "point", seed=s).sum()) for s in range(200)]
    assert min(counts) >= 1 and max(counts) <= 20
    for s in range(5):
        assert simulate_annotation(mask, "point", seed=s, training=False).sum() == 20
        assert simulate_annotation(mask, "point", seed=s, training=False, max_points=7).sum() == 7
    small = np.zeros((10, 10), bool)
    small[2, 3:8] = True  # area 5 < 20
    assert simulate_annotation(small, "point", seed=0, training=False).sum() == 5
    assert all(1 <= simulate_annotation(small, "point", seed=s).sum() <= 5 for s in range(30))


def test_point_count_statistics():
    """k uniform in 1..20: mean 10.5, every value reached."""
    mask = _square(64, 8, 56)
    n = 500
    counts = np.array([simulate_annotation(mask, "point", seed=s).sum() for s in range(n)])
    assert abs(counts.mean() - 10.5) < _uniform_mean_tolerance(1, 20, n)
    assert set(counts.astype(int)) == set(range(1, 21))


def test_point_coords():
    mask = _blob()
    coords, valid = point_coords(mask, seed=0, num_points=8)
    assert coords.shape == (8, 2) and coords.dtype == np.float32
    assert valid.shape == (8,) and valid.dtype == np.bool_ and valid.all()
    xs, ys = coords[:, 0].astype(int), coords[:, 1].astype(int)
    assert np.all(mask[ys, xs])  # (x, y) = (column, row)
    assert len({(x, y) for x, y in zip(xs, ys, strict=True)}) == 8  # distinct

    tiny = np.zeros((6, 9), bool)
    tiny[1, 7] = tiny[4, 2] = True
    coords, valid = point_coords(tiny, seed=1, num_points=5)
    np.testing.assert_array_equal(valid, [True, True, False, False, False])
    assert sorted(map(tuple, coords[:2].tolist())) == [(2.0, 4.0), (7.0, 1.0)]
    np.testing.assert_array_equal(coords[2:], 0)

    coords, valid = point_coords(np.zeros((5, 5)), seed=0, num_points=4)
    assert not valid.any() and coords.shape == (4, 2) and not coords.any()
    c1, v1 = point_coords(mask, seed=3, num_points=5)
    c2, v2 = point_coords(mask, seed=3, num_points=5)
    np.testing.assert_array_equal(c1, c2)


# --- boxes ----------------------------------------------------------------------------------


def test_tight_box_hand_made():
    m = np.zeros((5, 7), bool)
    m[2, 3] = True
    np.testing.assert_array_equal(tight_box(m), [3, 2, 4, 3])
    assert tight_box(m).dtype == np.float32

    m = np.zeros((6, 8), np.uint8)
    m[1:4, 2] = 1  # vertical bar, column 2, rows 1..3
    m[3, 2:6] = 1  # horizontal foot, row 3, columns 2..5
    np.testing.assert_array_equal(tight_box(m), [2, 1, 6, 4])
    expected = np.zeros((6, 8), np.float32)
    expected[1:4, 2:6] = 1
    np.testing.assert_array_equal(simulate_annotation(m, "box", seed=0), expected)

    np.testing.assert_array_equal(tight_box(np.ones((4, 9))), [0, 0, 9, 4])
    m = np.zeros((4, 9), bool)
    m[0, 0] = m[3, 8] = True  # opposite corners
    np.testing.assert_array_equal(tight_box(m), [0, 0, 9, 4])
    np.testing.assert_array_equal(tight_box(np.zeros((4, 9))), [0, 0, 0, 0])


# --- scribbles ------------------------------------------------------------------------------


def _shift_into_canvas(strokes: list[Stroke], margin: int = 12) -> tuple[list[Stroke], tuple]:
    """The strokes translated by whole pixels onto a canvas that holds all of them."""
    xs = np.concatenate([s.xs for s in strokes])
    ys = np.concatenate([s.ys for s in strokes])
    dx, dy = margin - int(np.floor(xs.min())), margin - int(np.floor(ys.min()))
    shape = (int(np.ceil(ys.max())) + dy + margin, int(np.ceil(xs.max())) + dx + margin)
    return [s._replace(xs=s.xs + dx, ys=s.ys + dy) for s in strokes], shape


def _distance_to_polyline(px: np.ndarray, py: np.ndarray, s: Stroke) -> np.ndarray:
    """(P,) distance of pixels (px, py) to the stroke's polyline."""
    ax, ay, bx, by = s.xs[:-1], s.ys[:-1], s.xs[1:], s.ys[1:]
    dx, dy = bx - ax, by - ay
    len2 = np.maximum(dx * dx + dy * dy, 1e-12)
    t = ((px[:, None] - ax) * dx + (py[:, None] - ay) * dy) / len2
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(px[:, None] - ax - t * dx, py[:, None] - ay - t * dy).min(axis=1)


def test_scribble_equals_drawn_sampled_strokes():
    mask = _blob()
    for seed in range(5):
        for training in (True, False):
            strokes = sample_strokes(mask, seed=seed, training=training)
            expected = draw_strokes(mask.shape, strokes) & mask
            out = simulate_annotation(mask, "scribble", seed=seed, training=training)
            np.testing.assert_array_equal(out, expected)


def test_scribble_nonempty_for_large_mask():
    mask = _square()
    for seed in range(30):
        out = simulate_annotation(mask, "scribble", seed=seed)
        assert out.sum() > 0, seed


def test_stroke_parameters_within_official_ranges():
    assert STROKE_PRESETS["rand_curve"].width_range == (3, 9)
    assert STROKE_PRESETS["rand_curve_small"].width_range == (2, 4)
    assert STROKE_PRESETS["rand_curve"].vertex_range == (10, 29)
    assert STROKE_PRESETS["rand_curve_small"].vertex_range == (6, 21)
    assert STROKE_PRESETS["rand_curve"].jitter_range == (-3, 2)
    assert STROKE_PRESETS["rand_curve_small"].jitter_range == (-1, 0)
    mask = _square()
    widths = {name: set() for name in STROKE_PRESETS}
    for seed in range(100):
        strokes = sample_strokes(mask, seed=seed)
        assert len({s.preset for s in strokes}) == 1  # one preset per scribble
        starts = [s.start for s in strokes]
        assert len(set(starts)) == len(starts)  # distinct start pixels
        for s in strokes:
            p = STROKE_PRESETS[s.preset]
            widths[s.preset].add(s.width)
            assert p.vertex_range[0] + 1 <= s.xs.size <= p.vertex_range[1] + 1
            assert s.xs.shape == s.ys.shape
            assert mask[s.start[1], s.start[0]]
            # first point = start + integer translation (|N(0, v/2)| < 5 sd) + jitter
            reach = 5 * p.max_init_speed / 2 + p.max_point_move + 1
            assert abs(s.xs[0] - s.start[0]) <= reach and abs(s.ys[0] - s.start[1]) <= reach
            steps = np.hypot(np.diff(s.xs), np.diff(s.ys))
            assert steps.max() <= p.max_head_speed + 2 * p.max_point_move * np.sqrt(2) + 1e-9
    for name, p in STROKE_PRESETS.items():
        assert widths[name] == set(range(p.width_range[0], p.width_range[1] + 1)), name


def test_stroke_count_and_preset_statistics():
    """Training: n uniform in 1..20 (mean 10.5), preset 50/50."""
    mask = _square(64, 8, 56)
    n = 500
    scribbles = [sample_strokes(mask, seed=s) for s in range(n)]
    counts = np.array([len(s) for s in scribbles])
    assert counts.min() >= 1 and counts.max() <= 20
    assert abs(counts.mean() - 10.5) < _uniform_mean_tolerance(1, 20, n)
    assert set(counts) == set(range(1, 21))
    frac = np.mean([s[0].preset == "rand_curve" for s in scribbles])
    p = STROKE_PRESET_PROBS[0]
    assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / n)
    capped = [len(sample_strokes(mask, seed=s, max_strokes=3)) for s in range(50)]
    assert set(capped) == {1, 2, 3}


def test_eval_strokes_follow_official_fixed_choice():
    """Official evaluation: random.Random(321) picks the preset and the count."""
    expected = [1, 2, 2, 3, 3, 3, 3] + [5] * 8 + [9] * 5  # m = min(20, area) = 1..20
    official = [random.Random(321).randint(1, m) for m in range(1, 21)]
    assert official == expected
    names = list(STROKE_PRESETS)
    assert random.Random(321).choices(names, weights=STROKE_PRESET_PROBS)[0] == "rand_curve"
    for area in list(range(1, 22)) + [400]:
        mask = np.zeros((30, 30), bool)
        mask.flat[np.linspace(0, 899, area).astype(int)] = True
        for seed in range(2):
            strokes = sample_strokes(mask, seed=seed, training=False)
            assert len(strokes) == expected[min(20, area) - 1], area
            assert {s.preset for s in strokes} == {"rand_curve"}
    # the geometry stays seeded
    a = simulate_annotation(_square(), "scribble", seed=0, training=False)
    b = simulate_annotation(_square(), "scribble", seed=1, training=False)
    assert not np.array_equal(a, b)


def test_each_stroke_is_one_connected_curve_of_its_width():
    rng = np.random.default_rng(0)
    for i in range(80):
        name = ("rand_curve", "rand_curve_small")[i % 2]
        stroke = random_stroke((0, 0), name, rng)
        (stroke,), shape = _shift_into_canvas([stroke])
        img = draw_strokes(shape, [stroke])
        assert ndimage.label(img, structure=EIGHT)[1] == 1, i
        py, px = np.nonzero(img)
        dist = _distance_to_polyline(px.astype(float), py.astype(float), stroke)
        # Pillow truncates wide-line end points to whole pixels (up to sqrt(2) px) and
        # rasterises to pixel centres (0.5 px): half the width plus 2 px bounds the stroke.
        assert dist.max() <= stroke.width / 2 + 2, (i, stroke.width, dist.max())
        length = np.hypot(np.diff(stroke.xs), np.diff(stroke.ys)).sum()
        if length > 6 * stroke.width:  # area / length estimates the width away from the ends
            est = img.sum() / length
            assert 0.5 * stroke.width <= est <= 1.3 * stroke.width + 0.5, (i, stroke.width, est)


def test_scribble_components_at_most_strokes():
    mask = _square()
    for seed in range(20):
        strokes = sample_strokes(mask, seed=seed)
        shifted, shape = _shift_into_canvas(strokes)
        num = ndimage.label(draw_strokes(shape, shifted), structure=EIGHT)[1]
        assert 1 <= num <= len(strokes), (seed, num, len(strokes))


# --- empty, tiny and bad inputs -------------------------------------------------------------


@pytest.mark.parametrize("kind", ANNOTATION_TYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [bool, np.float32])
def test_empty_mask_gives_zeros(kind, training, dtype):
    out = simulate_annotation(np.zeros((9, 11), dtype), kind, seed=0, training=training)
    assert out.shape == (9, 11) and out.dtype == np.float32 and not out.any()


def test_empty_mask_helpers():
    assert sample_strokes(np.zeros((4, 4)), seed=0) == []
    np.testing.assert_array_equal(tight_box(np.zeros((4, 4))), np.zeros(4))


@pytest.mark.parametrize("training", [True, False])
def test_single_pixel_mask(training):
    mask = np.zeros((7, 9), bool)
    mask[5, 2] = True
    for seed in range(10):
        for kind in ("point", "box", "mask"):
            out = simulate_annotation(mask, kind, seed=seed, training=training)
            np.testing.assert_array_equal(out, mask)
        scribble = simulate_annotation(mask, "scribble", seed=seed, training=training)
        assert not np.any(scribble.astype(bool) & ~mask)
        assert len(sample_strokes(mask, seed=seed, training=training)) == 1
    np.testing.assert_array_equal(tight_box(mask), [2, 5, 3, 6])
    one = np.ones((1, 1), bool)
    for kind in ANNOTATION_TYPES:
        assert simulate_annotation(one, kind, seed=0).shape == (1, 1)


def test_bad_inputs():
    mask = _blob()
    with pytest.raises(ValueError, match="unknown annotation kind 'polygon'"):
        simulate_annotation(mask, "polygon", seed=0)
    with pytest.raises(ValueError, match=r"2-D \(H, W\).*\(1, 48, 64\)"):
        simulate_annotation(mask[None], "point", seed=0)
    with pytest.raises(ValueError, match="2-D"):
        simulate_annotation(np.ones(5), "box", seed=0)
    bad = mask.astype(np.uint8) * 255
    with pytest.raises(ValueError, match="binary.*255"):
        simulate_annotation(bad, "mask", seed=0)
    with pytest.raises(ValueError, match="dtype"):
        simulate_annotation(mask.astype(str), "mask", seed=0)
    with pytest.raises(TypeError, match="seed"):
        simulate_annotation(mask, "point", seed=1.5)
    with pytest.raises(TypeError, match="seed"):
        simulate_annotation(mask, "point", seed=None)
    with pytest.raises(ValueError, match="seed"):
        simulate_annotation(mask, "point", seed=-1)
    with pytest.raises(ValueError, match="max_points"):
        simulate_annotation(mask, "point", seed=0, max_points=0)
    with pytest.raises(ValueError, match="max_strokes"):
        sample_strokes(mask, seed=0, max_strokes=0)
    with pytest.raises(ValueError, match="num_points"):
        point_coords(mask, seed=0, num_points=-1)
    with pytest.raises(ValueError, match="stroke preset 'zigzag'"):
        random_stroke((0, 0), "zigzag", np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"masks must be 3-D \(B, H, W\)"):
        simulate_batch(mask, "point", seeds=[0])
    with pytest.raises(ValueError, match="2 seeds for 3 masks"):
        simulate_batch(np.stack([mask] * 3), "point", seeds=[0, 1])
    with pytest.raises(TypeError, match="sequence"):
        simulate_batch(np.stack([mask] * 3), "point", seeds=0)
    with pytest.raises(ValueError, match="unknown annotation kind"):
        simulate_batch(np.stack([mask] * 3), "scribbles", seeds=[0, 1, 2])


# --- batches and global state ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ANNOTATION_TYPES)
def test_batch_matches_per_sample(kind):
    masks = np.stack([_blob(seed=0), _blob(seed=1), np.zeros((48, 64), bool), _blob(seed=2)])
    seeds = np.array([10, 11, 12, 13])
    out = simulate_batch(masks, kind, seeds=seeds, training=True)
    assert out.shape == masks.shape and out.dtype == np.float32
    for b in range(4):
        expected = simulate_annotation(masks[b], kind, seed=int(seeds[b]), training=True)
        np.testing.assert_array_equal(out[b], expected)
    assert simulate_batch(masks[:0], kind, seeds=[]).shape == (0, 48, 64)


def test_global_random_state_untouched():
    np.random.seed(1234)
    random.seed(1234)
    np_state = np.random.get_state()
    py_state = random.getstate()
    mask = _blob()
    for training in (True, False):
        for kind in ANNOTATION_TYPES:
            simulate_annotation(mask, kind, seed=0, training=training)
        simulate_batch(np.stack([mask, mask]), "scribble", seeds=[1, 2], training=training)
        sample_strokes(mask, seed=3, training=training)
    point_coords(mask, seed=0, num_points=5)
    after = np.random.get_state()
    assert np_state[0] == after[0]
    np.testing.assert_array_equal(np_state[1], after[1])
    assert np_state[2:] == after[2:]
    assert random.getstate() == py_state
