"""Reference annotations simulated from a ground-truth mask, as VRP-SAM trains and evaluates.

VRP-SAM (following SEEM) has no point, box or scribble labels: it simulates them from the
reference mask on every episode. This module does the same on the host, in numpy, with an
explicit seed (an int or a `np.random.Generator`); it never touches `np.random`'s or
`random`'s global state. Every annotation is a float32 (H, W) mask of 0/1 with the shape of
the ground truth (H, W):

- ``point``: k distinct foreground pixels, k uniform in 1..min(max_points, area) when
  training; at evaluation k = min(max_points, area), as the official code does (the paper
  says "randomly (1, 20)" for evaluation too; the code is followed).
- ``box``: the filled tight bounding box of the mask (`tight_box`).
- ``scribble``: n free-form strokes, n uniform in 1..min(max_strokes, area) when training,
  started at n distinct foreground pixels, drawn with one of the official presets
  (`STROKE_PRESETS`, 'rand_curve' or 'rand_curve_small' with probability 0.5 each) and
  intersected with the mask. The strokes are not guaranteed to cover their start pixel, so
  the scribble of a tiny mask can be empty, as in the official code.
- ``mask``: the ground truth itself.

The official stroke generator (`common/utils.py` of syp2ysy/VRP-SAM, from SEEM, after the
free-form masks of Yu et al., "Free-Form Image Inpainting with Gated Convolution") draws each
stroke in two "frames" and keeps only the second:

1. brush width ~ randint(*brushWidthBound), vertex count ~ randint(*nVertexBound) (upper
   bounds exclusive; the float bounds are truncated, so 'rand_curve_small' draws widths
   2..4 and 'rand_curve' 3..9);
2. a random walk from the start point: initial angle U(0, 2π), speed U(0, maxHeadSpeed); per
   vertex speed += U(-a, a) and angle += U(-b, b) with (a, b) = maxHeadAcceleration, speed
   clipped to [0, maxHeadSpeed], x += speed·sin(angle), y += speed·cos(angle); no border
   clipping (boarderGap is None in both presets);
3. a line velocity (speed |N(0, maxInitSpeed/2)|, angle U(0, 2π)); the first frame is drawn
   and thrown away, then every control point is translated by
   (trunc(speed·cos(angle)), trunc(speed·sin(angle))) and int(0.5·#points) distinct points
   are jittered by randint(-maxPiontMove, maxPiontMove) in x and in y (truncated bounds:
   -3..2 for 'rand_curve', -1..0 for 'rand_curve_small'; the asymmetry is the official
   code's). The line acceleration drawn after the translation is never used.
4. Drawing on a PIL mode '1' canvas: one `ImageDraw.line` of width w per segment, then a
   disc (`ellipse`) of radius w // 2 - 1 on every control point.

The inversion: the official canvas starts white (1) and strokes are drawn black (fill=0), so
`np.array(canvas)` is a bool array that is False exactly on the strokes; `~mask` (logical not
of a bool tensor) is therefore True on the strokes, and `~mask * gt` is *strokes ∩ GT*. There
is no bug: the scribble is the drawn strokes restricted to the object. Here strokes are drawn
as 1 on a 0 canvas (same rasterisation) and intersected directly.

At evaluation the official code picks the preset and the stroke count with fresh
`random.Random(321)` instances: always 'rand_curve', and n = Random(321).randint(1, m) with
m = min(20, area), i.e. 1, 2, 2, 3, 3, 3, 3, 5 (×8), 9 (×5) for m = 1..20, so 9 strokes for
any mask of 16 pixels or more. `training=False` reproduces this exactly with its own private
`random.Random(321)` instance (not the global one); the stroke geometry stays seeded.

Deliberate differences from the official code:

- One explicit numpy Generator replaces the global `np.random`, `torch.randperm` and
  unseeded `random.Random()`: same distributions, different random streams.
- k, n and the preset are drawn per sample from that sample's area. The official code draws
  them once per batch from `mask.sum()` over the whole batch, so with a batch of several
  references a small object could be asked for more points than it has (it then gets all of
  them) and shares the count of the other references.
- An empty mask gives an all-zero annotation; the official training path raises in
  `randint(1, 0)` (the scribble path raises at evaluation too).
- Stroke start points are the exact pixels (column, row). The official code computes the row
  as `torch.div(index, w)`, a true division in current PyTorch, which adds column / w < 1
  pixel to the row.
- The discarded first frame is not drawn and the unused line acceleration is not sampled;
  neither affects the output.

The drawing uses Pillow's rasteriser like the official code; wide-line rasterisation has
changed across Pillow versions, so single pixels may differ from an old install.
"""

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

ANNOTATION_TYPES = ("point", "box", "scribble", "mask")

Seed = int | np.integer | np.random.Generator


@dataclasses.dataclass(frozen=True)
class StrokePreset:
    """Parameters of the official free-form stroke generator (names follow SEEM's).

    Bounds are stored as in the official presets; the integer ranges actually sampled (the
    official code passes float bounds to `np.random.randint`, which truncates them) are given
    by `width_range`, `vertex_range` and `jitter_range`, all inclusive.
    """

    num_vertex_bound: tuple[int, int]  # nVertexBound, randint(lo, hi): hi exclusive
    max_head_speed: float  # maxHeadSpeed
    max_head_acceleration: tuple[float, float]  # maxHeadAcceleration: (speed, angle)
    brush_width_bound: tuple[float, float]  # brushWidthBound, randint(lo, hi)
    move_point_ratio: float  # nMovePointRatio
    max_point_move: float  # maxPiontMove, randint(-m, m)
    max_init_speed: float  # maxInitSpeed

    @property
    def width_range(self) -> tuple[int, int]:
        """Inclusive range of brush widths drawn."""
        return int(self.brush_width_bound[0]), int(self.brush_width_bound[1]) - 1

    @property
    def vertex_range(self) -> tuple[int, int]:
        """Inclusive range of the number of segments (a stroke has one more control point)."""
        return int(self.num_vertex_bound[0]), int(self.num_vertex_bound[1]) - 1

    @property
    def jitter_range(self) -> tuple[int, int]:
        """Inclusive range of the per-point jitter, in pixels, in x and in y."""
        return int(-self.max_point_move), int(self.max_point_move) - 1


# The official presets (SEEM's get_stroke_preset); maxLineAcceleration ((5, 0.5) and (3, 0.5))
# and boarderGap (None) are left out: the former never reaches the output, the latter is off.
STROKE_PRESETS: Mapping[str, StrokePreset] = MappingProxyType(
    {
        "rand_curve": StrokePreset(
            num_vertex_bound=(10, 30),
            max_head_speed=20.0,
            max_head_acceleration=(15.0, 0.5),
            brush_width_bound=(3.0, 10.0),
            move_point_ratio=0.5,
            max_point_move=3.0,
            max_init_speed=6.0,
        ),
        "rand_curve_small": StrokePreset(
            num_vertex_bound=(6, 22),
            max_head_speed=12.0,
            max_head_acceleration=(8.0, 0.5),
            brush_width_bound=(2.5, 5.0),
            move_point_ratio=0.5,
            max_point_move=1.5,
            max_init_speed=3.0,
        ),
    }
)
STROKE_PRESET_PROBS = (0.5, 0.5)  # over tuple(STROKE_PRESETS), when training
_EVAL_SEED = 321  # the official evaluation's fixed seed for the preset and stroke count


class Stroke(NamedTuple):
    """One free-form stroke: control points in pixels and a brush width.

    xs, ys: (V + 1,) float64 control-point coordinates (x = column, y = row), after the
    official translation and jitter. width: brush width in pixels. preset: name in
    `STROKE_PRESETS`. start: the (x, y) foreground pixel the random walk started from.
    """

    xs: np.ndarray
    ys: np.ndarray
    width: int
    preset: str
    start: tuple[int, int]


def _as_generator(seed: Seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, int | np.integer) and not isinstance(seed, bool | np.bool_):
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed}")
        return np.random.default_rng(int(seed))
    raise TypeError(f"seed must be an int or a numpy Generator, got {type(seed).__name__}")


def _check_count(name: str, value: int, minimum: int = 1) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_kind(kind: str) -> None:
    if kind not in ANNOTATION_TYPES:
        raise ValueError(f"unknown annotation kind {kind!r}; expected one of {ANNOTATION_TYPES}")


def _as_binary(mask: np.ndarray, ndim: int = 2, name: str = "mask") -> np.ndarray:
    """The foreground of a 0/1 or bool mask as bool, after checking its rank and values."""
    arr = np.asarray(mask)
    if arr.ndim != ndim:
        shape = "(H, W)" if ndim == 2 else "(B, H, W)"
        raise ValueError(f"{name} must be {ndim}-D {shape}, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be bool or numeric 0/1, got dtype {arr.dtype}")
    fg = arr == 1
    bad = ~(fg | (arr == 0))
    if bad.any():
        raise ValueError(
            f"{name} must be binary (0/1 or bool), found value {arr[bad].flat[0]!r}; "
            "map ignore labels (e.g. 255) before simulating annotations"
        )
    return fg


def tight_box(mask: np.ndarray) -> np.ndarray:
    """Tight bounding box of a binary (H, W) mask as (4,) float32 (x0, y0, x1, y1).

    x0, y0 are the first foreground column and row, x1, y1 the last plus one (exclusive, as
    the official `get_bounding_boxes`), so the box covers `mask[y0:y1, x0:x1]`. An empty mask
    gives (0, 0, 0, 0), the official convention; any non-empty mask has x1 > x0, so the zero
    box is unambiguous.
    """
    fg = _as_binary(mask)
    cols = np.flatnonzero(fg.any(axis=0))
    rows = np.flatnonzero(fg.any(axis=1))
    if cols.size == 0:
        return np.zeros(4, np.float32)
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def point_coords(mask: np.ndarray, *, seed: Seed, num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `num_points` distinct random foreground pixels of an (H, W) mask, padded.

    Returns coords (num_points, 2) float32 as (x, y) pixel indices (column, row; SAM's prompt
    encoder adds the half-pixel offset itself) and valid (num_points,) bool. The first
    min(num_points, area) entries are valid, in random order; the rest are (0, 0) and
    invalid. An empty mask gives all-invalid points.
    """
    fg = _as_binary(mask)
    num_points = _check_count("num_points", num_points, minimum=0)
    rng = _as_generator(seed)
    idx = np.flatnonzero(fg)
    k = min(num_points, idx.size)
    chosen = rng.choice(idx, size=k, replace=False) if k else idx[:0]
    coords = np.zeros((num_points, 2), np.float32)
    coords[:k, 0] = chosen % fg.shape[1]
    coords[:k, 1] = chosen // fg.shape[1]
    return coords, np.arange(num_points) < k


def random_stroke(
    start: tuple[int, int], preset: str | StrokePreset, rng: np.random.Generator
) -> Stroke:
    """One free-form stroke from `start` (x, y) with the official generator's geometry.

    See the module docstring for the steps; `preset` is a name in `STROKE_PRESETS` or a
    `StrokePreset`.
    """
    if isinstance(preset, str):
        if preset not in STROKE_PRESETS:
            raise ValueError(
                f"unknown stroke preset {preset!r}; expected one of {tuple(STROKE_PRESETS)}"
            )
        name, params = preset, STROKE_PRESETS[preset]
    else:
        name, params = "custom", preset
    w_lo, w_hi = params.width_range
    v_lo, v_hi = params.vertex_range
    j_lo, j_hi = params.jitter_range
    width = int(rng.integers(w_lo, w_hi, endpoint=True))
    num_vertex = int(rng.integers(v_lo, v_hi, endpoint=True))

    # Random walk of the head: accelerate, clip the speed, step (x with sin, y with cos).
    max_speed = params.max_head_speed
    d_speed, d_angle = params.max_head_acceleration
    angle = rng.uniform(0.0, 2.0 * np.pi)
    speed = rng.uniform(0.0, max_speed)
    speed_steps = rng.uniform(-d_speed, d_speed, num_vertex)
    angle_steps = rng.uniform(-d_angle, d_angle, num_vertex)
    xs = np.empty(num_vertex + 1)
    ys = np.empty(num_vertex + 1)
    xs[0], ys[0] = start
    for i in range(num_vertex):
        speed = min(max(speed + speed_steps[i], 0.0), max_speed)
        angle += angle_steps[i]
        xs[i + 1] = xs[i] + speed * math.sin(angle)
        ys[i + 1] = ys[i] + speed * math.cos(angle)

    # The kept "second frame": translate by the line velocity, jitter half of the points.
    line_speed = abs(rng.normal(0.0, params.max_init_speed / 2.0))
    line_angle = rng.uniform(0.0, 2.0 * np.pi)
    xs += math.trunc(line_speed * math.cos(line_angle))
    ys += math.trunc(line_speed * math.sin(line_angle))
    num_move = int(xs.size * params.move_point_ratio)
    moved = rng.permutation(xs.size)[:num_move]
    xs[moved] += rng.integers(j_lo, j_hi, num_move, endpoint=True)
    ys[moved] += rng.integers(j_lo, j_hi, num_move, endpoint=True)
    return Stroke(xs, ys, width, name, (int(start[0]), int(start[1])))


def draw_strokes(shape: tuple[int, int], strokes: Sequence[Stroke]) -> np.ndarray:
    """Rasterise strokes into a bool (H, W) canvas as the official code does.

    Each segment is one PIL line of the stroke's width; each control point gets a disc of
    radius width // 2 - 1. Parts outside the canvas are clipped.
    """
    height, width = shape
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for stroke in strokes:
        points = list(zip(stroke.xs.tolist(), stroke.ys.tolist(), strict=True))
        for p, q in zip(points[:-1], points[1:], strict=True):
            draw.line(p + q, fill=1, width=stroke.width)
        r = stroke.width // 2 - 1
        for x, y in points:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=1)
    return np.array(canvas, dtype=bool)


def _official_eval_strokes(max_count: int) -> tuple[str, int]:
    """The official evaluation's preset and stroke count: fresh `random.Random(321)`s."""
    names = list(STROKE_PRESETS)
    preset = random.Random(_EVAL_SEED).choices(names, weights=STROKE_PRESET_PROBS, k=1)[0]
    return preset, random.Random(_EVAL_SEED).randint(1, max_count)


def sample_strokes(
    mask: np.ndarray, *, seed: Seed, training: bool = True, max_strokes: int = 20
) -> list[Stroke]:
    """The strokes of a scribble annotation of an (H, W) mask, before drawing.

    Training: preset 'rand_curve' or 'rand_curve_small' (probability 0.5 each), n uniform in
    1..min(max_strokes, area). Evaluation: the official fixed choice (see the module
    docstring). Starts are n distinct foreground pixels. An empty mask gives no strokes.
    `simulate_annotation(mask, "scribble", seed=s)` is
    `draw_strokes(mask.shape, sample_strokes(mask, seed=s)) & mask`.
    """
    fg = _as_binary(mask)
    max_strokes = _check_count("max_strokes", max_strokes)
    rng = _as_generator(seed)
    return _sample_strokes(fg, rng, training, max_strokes)


def _sample_strokes(
    fg: np.ndarray, rng: np.random.Generator, training: bool, max_strokes: int
) -> list[Stroke]:
    idx = np.flatnonzero(fg)
    if idx.size == 0:
        return []
    max_count = min(max_strokes, idx.size)
    if training:
        names = tuple(STROKE_PRESETS)
        preset = names[int(rng.choice(len(names), p=STROKE_PRESET_PROBS))]
        count = int(rng.integers(1, max_count, endpoint=True))
    else:
        preset, count = _official_eval_strokes(max_count)
    starts = rng.choice(idx, size=count, replace=False)
    cols, rows = starts % fg.shape[1], starts // fg.shape[1]
    return [random_stroke((int(x), int(y)), preset, rng) for x, y in zip(cols, rows, strict=True)]


def simulate_annotation(
    mask: np.ndarray,
    kind: str,
    *,
    seed: Seed,
    training: bool = True,
    max_points: int = 20,
    max_strokes: int = 20,
) -> np.ndarray:
    """Simulate a reference annotation of `kind` from a binary (H, W) mask.

    mask: (H, W) bool or 0/1 numbers. kind: one of `ANNOTATION_TYPES`. seed: an int or a
    numpy Generator (advanced in place); the result is a deterministic function of the
    seed. training: the official training sampling (random counts) or evaluation (fixed
    counts); `box` and `mask` ignore it. Returns float32 (H, W) of 0/1; an empty mask gives
    all zeros for every kind.
    """
    _check_kind(kind)
    fg = _as_binary(mask)
    max_points = _check_count("max_points", max_points)
    max_strokes = _check_count("max_strokes", max_strokes)
    rng = _as_generator(seed)

    if kind == "mask":
        out = fg
    elif kind == "box":
        x0, y0, x1, y1 = tight_box(fg).astype(int)
        out = np.zeros_like(fg)
        out[y0:y1, x0:x1] = True
    elif kind == "point":
        idx = np.flatnonzero(fg)
        out = np.zeros(fg.size, bool)
        if idx.size:
            max_count = min(max_points, idx.size)
            count = int(rng.integers(1, max_count, endpoint=True)) if training else max_count
            out[rng.choice(idx, size=count, replace=False)] = True
        out = out.reshape(fg.shape)
    else:  # scribble
        strokes = _sample_strokes(fg, rng, training, max_strokes)
        out = draw_strokes(fg.shape, strokes) & fg if strokes else np.zeros_like(fg)
    return out.astype(np.float32)


def simulate_batch(
    masks: np.ndarray,
    kind: str,
    *,
    seeds: Sequence[int] | np.ndarray,
    training: bool = True,
    max_points: int = 20,
    max_strokes: int = 20,
) -> np.ndarray:
    """`simulate_annotation` over a (B, H, W) batch, sample b with seed `seeds[b]`.

    Counts and presets are drawn per sample (see the module docstring). Returns float32
    (B, H, W).
    """
    _check_kind(kind)
    fg = _as_binary(masks, ndim=3, name="masks")
    if isinstance(seeds, int | np.integer | np.random.Generator):
        raise TypeError("seeds must be a sequence of B ints, one per mask, got a single seed")
    seeds = list(seeds)
    if len(seeds) != fg.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for {fg.shape[0]} masks; need one per mask")
    out = np.zeros(fg.shape, np.float32)
    for b in range(fg.shape[0]):
        out[b] = simulate_annotation(
            fg[b],
            kind,
            seed=seeds[b],
            training=training,
            max_points=max_points,
            max_strokes=max_strokes,
        )
    return out
