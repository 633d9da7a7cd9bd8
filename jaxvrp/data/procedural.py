"""A procedural few-shot segmentation benchmark: 20 shape × texture classes, 4 folds.

Pure numpy; builds offline in seconds and deterministically from a seed. Used by the tests,
the CPU demo and sanity checks; `jaxvrp.data.builders.procedural` wraps it as the TFDS
dataset "procedural_fss" in the shared record format (`jaxvrp.data.schema`).

Classes. A class is a (shape, texture) pair: 5 shapes (`SHAPES`: disc, square, triangle,
cross, ring) × 4 textures (`TEXTURES`: solid, stripes, checker, dots). Colours are drawn per
instance (two contrasting colours for a textured object), so colour is never the class cue:
an object's class is its outline together with its surface pattern.

Folds (as PASCAL-5i): fold f's novel classes are ids 5f+1..5f+5, the other 15 are its base
classes. Class c (1-based, k = c - 1) is

    shape = k % 5,   texture = (k % 5 + k // 5) % 4,

so each fold holds every shape exactly once, and over the 4 folds a shape meets each of the
4 textures exactly once (the grid is a Latin-square layout, a bijection onto the 20 cells):

    fold 0 (1-5):   disc/solid     square/stripes  triangle/checker  cross/dots     ring/solid
    fold 1 (6-10):  disc/stripes   square/checker  triangle/dots     cross/solid    ring/stripes
    fold 2 (11-15): disc/checker   square/dots     triangle/solid    cross/stripes  ring/checker
    fold 3 (16-20): disc/dots      square/solid    triangle/stripes  cross/checker  ring/dots

A novel class is therefore a novel *combination*: its shape appears among the base classes
with the 3 other textures and its texture with 3 or 4 other shapes. A learner that keys on
one cue alone (outline or pattern) confuses a novel class with base classes; the few-shot
reference must tell it which combination is meant.

Images. Each image (`generate_image`) is a square RGB image on a random background: smooth
low-frequency noise plus a linear gradient, often a low-contrast stripe / checker / dot
pattern (the same pattern families as the object textures) and random line segments, then
per-pixel Gaussian noise. On it 1-4 instances of 1-2 classes are drawn with random size,
aspect, position, rotation, texture orientation / period / phase and colours; later
instances occlude earlier ones and the mask follows the occlusion (a ring's hole is
background). A layout is accepted only if every instance keeps at least
`min_visible_pixels(image_size)` visible pixels and `MIN_VISIBLE_FRACTION` of its in-image
area, so every class in the mask has a usable, unambiguous mask; otherwise it is redrawn.

Guarantees. Image i of a split always contains class `i % 20 + 1` (round-robin), so a split
of n images has every class in at least n // 20 images. Image i depends only on
(seed, split, i, image_size), through `np.random.default_rng([seed, split_id, i])`: images
can be generated in any order or in parallel, and the train and test splits (split ids 0
and 1) are different random streams. The result is byte-identical for a given platform and
numpy version (numpy's SIMD transcendental functions may differ in the last bit across CPUs).
"""

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

SHAPES = ("disc", "square", "triangle", "cross", "ring")
TEXTURES = ("solid", "stripes", "checker", "dots")
NUM_CLASSES = len(SHAPES) * len(TEXTURES)  # 20
NUM_FOLDS = 4
CLASSES_PER_FOLD = NUM_CLASSES // NUM_FOLDS  # 5
SPLIT_IDS = {"train": 0, "test": 1}

MIN_VISIBLE_FRACTION = 0.35  # of an instance's in-image area that must stay visible
MIN_VISIBLE_AREA = 0.005  # of the image area: the least visible pixels of any instance
MAX_INSTANCES = 4
MAX_LAYOUT_TRIES = 50


def class_shape_texture(class_id: int) -> tuple[int, int]:
    """(shape index, texture index) of a 1-based class id, as laid out in the module doc."""
    _check_class(class_id)
    k = int(class_id) - 1
    shape = k % len(SHAPES)
    return shape, (shape + k // CLASSES_PER_FOLD) % len(TEXTURES)


def class_id(shape: int, texture: int) -> int:
    """The 1-based class id of (shape index, texture index); inverse of `class_shape_texture`."""
    if not 0 <= shape < len(SHAPES) or not 0 <= texture < len(TEXTURES):
        raise ValueError(
            f"shape must be in 0..{len(SHAPES) - 1} and texture in 0..{len(TEXTURES) - 1}, "
            f"got shape={shape}, texture={texture}"
        )
    fold = (texture - shape) % len(TEXTURES)
    return fold * CLASSES_PER_FOLD + shape + 1


def _check_class(class_id: int) -> None:
    if not isinstance(class_id, int | np.integer) or not 1 <= class_id <= NUM_CLASSES:
        raise ValueError(f"class id must be an int in 1..{NUM_CLASSES}, got {class_id!r}")


# CLASS_NAMES[c - 1] names class c, e.g. CLASS_NAMES[0] == "disc_solid".
CLASS_NAMES: tuple[str, ...] = tuple(
    f"{SHAPES[s]}_{TEXTURES[t]}"
    for s, t in (class_shape_texture(c) for c in range(1, NUM_CLASSES + 1))
)


def procedural_classes(fold: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(base, novel) sorted 1-based class ids of a fold: novel = 5·fold+1 .. 5·fold+5."""
    if not isinstance(fold, int | np.integer) or not 0 <= fold < NUM_FOLDS:
        raise ValueError(f"fold must be an int in 0..{NUM_FOLDS - 1}, got {fold!r}")
    novel = tuple(range(CLASSES_PER_FOLD * fold + 1, CLASSES_PER_FOLD * (fold + 1) + 1))
    base = tuple(c for c in range(1, NUM_CLASSES + 1) if c not in novel)
    return base, novel


def min_visible_pixels(image_size: int) -> int:
    """The least number of visible pixels of any instance (hence class) in an image."""
    return math.ceil(MIN_VISIBLE_AREA * image_size * image_size)


class Sample(NamedTuple):
    """One generated image.

    image: (S, S, 3) uint8 RGB. mask: (S, S) uint8 class-index map, 0 background, 1..20 the
    class ids. classes: sorted class ids present in `mask` (each with at least
    `min_visible_pixels(S)` pixels). image_id: "{split}_{index:06d}".
    """

    image: np.ndarray
    mask: np.ndarray
    classes: tuple[int, ...]
    image_id: str


class _Instance(NamedTuple):
    class_id: int
    cx: float
    cy: float
    radius: float
    aspect: float
    angle: float


# --------------------------------------------------------------------------------------
# Patterns, shapes and colours. Coordinates are pixel centres: xx, yy (S, S) float32.


def _rotate(dx: np.ndarray, dy: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) = (dx, dy) rotated by -angle: coordinates in a frame turned by `angle`."""
    c, s = math.cos(angle), math.sin(angle)
    return c * dx + s * dy, -s * dx + c * dy


def _pattern(
    kind: str, xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator, size: int
) -> np.ndarray:
    """A binary (S, S) float32 pattern of one texture family, random orientation and phase.

    Periods scale with the image size `size` (and are at least a few pixels, so that a
    64-pixel image still shows them): stripes 6-10 %, checker cells 5-8 %, dot lattice
    9-13 % of the image side.
    """
    u, v = _rotate(xx, yy, rng.uniform(0.0, math.pi))
    if kind == "solid":
        return np.zeros_like(xx)
    if kind == "stripes":
        period = max(4.0, rng.uniform(0.06, 0.10) * size)
        return (np.floor(u / (period / 2) + rng.uniform(0, 2)) % 2).astype(np.float32)
    if kind == "checker":
        cell = max(3.0, rng.uniform(0.05, 0.08) * size)
        a = np.floor(u / cell + rng.uniform(0, 2))
        b = np.floor(v / cell + rng.uniform(0, 2))
        return ((a + b) % 2).astype(np.float32)
    if kind == "dots":
        period = max(5.0, rng.uniform(0.09, 0.13) * size)
        radius = rng.uniform(0.26, 0.34)  # in periods
        fu = u / period + rng.uniform(0, 1)
        fv = v / period + rng.uniform(0, 1)
        fu, fv = fu - np.round(fu), fv - np.round(fv)
        return (fu * fu + fv * fv <= radius * radius).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}; expected one of {TEXTURES}")


def _shape_mask(shape: str, inst: _Instance, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """bool (S, S) silhouette of an instance: its shape at its centre, radius, aspect, angle."""
    u, v = _rotate(xx - inst.cx, yy - inst.cy, inst.angle)
    r = inst.radius
    v = v / inst.aspect
    if shape == "disc":
        return u * u + v * v <= r * r
    if shape == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
    if shape == "square":
        half = 0.85 * r
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if shape == "triangle":  # equilateral, circumradius 1.15 r, one vertex up in its frame
        inradius = 0.575 * r
        inside = np.ones(u.shape, bool)
        for k in range(3):
            a = math.pi / 2 + 2 * math.pi * k / 3  # edge normals point away from the vertices
            inside &= u * math.cos(a) + v * math.sin(a) <= inradius
        return inside
    if shape == "cross":
        arm = 0.34 * r
        au, av = np.abs(u), np.abs(v)
        return ((au <= arm) & (av <= r)) | ((av <= arm) & (au <= r))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A (3,) float32 RGB colour in [0, 1], uniform in the cube."""
    return rng.uniform(0.0, 1.0, 3).astype(np.float32)


def _contrasting_colour(
    rng: np.random.Generator, other: np.ndarray, min_dist: float = 0.45
) -> np.ndarray:
    """A random colour at RGB distance >= min_dist from `other` (the first of 20 tries if
    none is; the farthest cube corner otherwise)."""
    for _ in range(20):
        c = _random_colour(rng)
        if np.linalg.norm(c - other) >= min_dist:
            return c
    return (other < 0.5).astype(np.float32)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a (g, g, C) grid to (size, size, C), corners aligned."""
    g = grid.shape[0]
    pos = np.linspace(0.0, g - 1.0, size, dtype=np.float32)
    i0 = np.minimum(np.floor(pos).astype(np.int64), g - 2)
    w = (pos - i0)[:, None]
    rows = grid[i0] * (1 - w)[..., None] + grid[i0 + 1] * w[..., None]  # (size, g, C)
    return rows[:, i0] * (1 - w)[None] + rows[:, i0 + 1] * w[None]


def _background(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """(S, S, 3) float32 background: smooth noise + gradient [+ pattern] [+ line clutter]."""
    size = xx.shape[0]
    g = int(rng.integers(2, 7))
    bg = _upsample(rng.uniform(0.0, 1.0, (g, g, 3)).astype(np.float32), size)
    ramp = _rotate(xx / size - 0.5, yy / size - 0.5, rng.uniform(0, 2 * math.pi))[0]
    bg = bg + ramp[..., None] * rng.uniform(-0.6, 0.6, 3).astype(np.float32)
    if rng.uniform() < 0.45:  # a low-contrast pattern of one of the object textures' families
        kind = TEXTURES[int(rng.integers(1, len(TEXTURES)))]
        pat = _pattern(kind, xx, yy, rng, size)
        bg = bg + (pat - 0.5)[..., None] * rng.uniform(-0.35, 0.35, 3).astype(np.float32)
    for _ in range(int(rng.integers(0, 4)) if rng.uniform() < 0.5 else 0):  # line segments
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        width = rng.uniform(0.5, max(1.0, 0.02 * size))
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
        dist2 = (xx - x0 - t * dx) ** 2 + (yy - y0 - t * dy) ** 2
        bg = np.where((dist2 <= width * width)[..., None], _random_colour(rng), bg)
    return np.clip(bg, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------
# Layout and rendering.


def _sample_instance(rng: np.random.Generator, cls: int, size: int) -> _Instance:
    shape = SHAPES[class_shape_texture(cls)[0]]
    lo, hi = (0.20, 0.32) if shape == "ring" else (0.13, 0.28)  # a ring needs a thick band
    radius = rng.uniform(lo, hi) * size
    margin = 0.7 * radius
    return _Instance(
        class_id=cls,
        cx=float(rng.uniform(margin, size - margin)),
        cy=float(rng.uniform(margin, size - margin)),
        radius=float(radius),
        aspect=float(rng.uniform(0.8, 1.0)),
        angle=float(rng.uniform(0, 2 * math.pi)),
    )


def _layout(
    rng: np.random.Generator, classes: Sequence[int], xx: np.ndarray, yy: np.ndarray
) -> tuple[list[_Instance], list[np.ndarray], np.ndarray]:
    """Instances (of `classes`, in drawing order), their silhouettes and the (S, S) int16
    index of the top instance per pixel (-1: background), every instance enough visible."""
    size = xx.shape[0]
    min_pixels = min_visible_pixels(size)
    for _ in range(MAX_LAYOUT_TRIES):
        insts = [_sample_instance(rng, c, size) for c in classes]
        order = rng.permutation(len(insts))
        insts = [insts[i] for i in order]
        sils = [_shape_mask(SHAPES[class_shape_texture(i.class_id)[0]], i, xx, yy) for i in insts]
        top = np.full((size, size), -1, np.int16)
        for k, sil in enumerate(sils):
            top[sil] = k
        visible = np.bincount(top.ravel() + 1, minlength=len(insts) + 1)[1:]
        areas = np.array([s.sum() for s in sils])
        if np.all(visible >= np.maximum(min_pixels, MIN_VISIBLE_FRACTION * areas)):
            return insts, sils, top
    # Rare fallback (never hit by the shipped configs): one instance of the first class,
    # redrawn until big enough; its visible area is its whole in-image area.
    while True:
        inst = _sample_instance(rng, classes[0], size)
        sil = _shape_mask(SHAPES[class_shape_texture(classes[0])[0]], inst, xx, yy)
        if sil.sum() >= min_pixels:
            return [inst], [sil], np.where(sil, 0, -1).astype(np.int16)


def _paint(
    rng: np.random.Generator,
    canvas: np.ndarray,
    inst: _Instance,
    sil: np.ndarray,
    xx: np.ndarray,
    yy: np.ndarray,
) -> None:
    """Paints an instance's texture with random colours into `canvas` (S, S, 3) where `sil`."""
    size = xx.shape[0]
    texture = TEXTURES[class_shape_texture(inst.class_id)[1]]
    under = canvas[sil].mean(axis=0)
    for _ in range(10):  # colours that stand out from the background under the object
        a = _random_colour(rng)
        b = _contrasting_colour(rng, a) if texture != "solid" else a
        if np.linalg.norm(0.5 * (a + b) - under) >= 0.2:
            break
    pat = _pattern(texture, xx, yy, rng, size)[sil][:, None]
    u = _rotate(xx[sil] - inst.cx, yy[sil] - inst.cy, rng.uniform(0, 2 * math.pi))[0]
    shading = 1.0 + rng.uniform(0.0, 0.15) * (u / inst.radius)[:, None]
    canvas[sil] = (a * (1 - pat) + b * pat) * shading


def generate_image(seed: int, split: str, index: int, image_size: int = 128) -> Sample:
    """Image `index` of `split` ("train" or "test") for `seed`, as a `Sample`.

    Depends only on (seed, split, index, image_size); contains class `index % 20 + 1` and
    possibly a second class, 1-4 instances in all.
    """
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLIT_IDS)}")
    for name, value, low in (
        ("seed", seed, 0),
        ("index", index, 0),
        ("image_size", image_size, 32),
    ):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    rng = np.random.default_rng([int(seed), SPLIT_IDS[split], int(index)])
    size = int(image_size)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) + np.float32(0.5)

    primary = index % NUM_CLASSES + 1
    num_instances = int(rng.integers(1, MAX_INSTANCES + 1))
    chosen = [primary]
    if num_instances > 1 and rng.uniform() < 0.5:
        other = int(rng.integers(1, NUM_CLASSES))  # 1..19, skipping the primary class
        chosen.append(other + (other >= primary))
    extra = num_instances - len(chosen)  # every chosen class has an instance; the rest random
    classes = chosen + [chosen[int(rng.integers(len(chosen)))] for _ in range(extra)]

    canvas = _background(rng, xx, yy)
    insts, sils, top = _layout(rng, classes, xx, yy)
    for inst, sil in zip(insts, sils, strict=True):
        _paint(rng, canvas, inst, sil, xx, yy)
    canvas += rng.normal(0.0, rng.uniform(0.0, 0.04), canvas.shape).astype(np.float32)
    image = np.clip(np.round(canvas * 255.0), 0, 255).astype(np.uint8)

    ids = np.array([0] + [i.class_id for i in insts], np.uint8)
    mask = ids[top + 1]
    present = tuple(int(c) for c in np.unique(mask) if c != 0)
    return Sample(image, mask, present, f"{split}_{index:06d}")


def generate_split(seed: int, split: str, num_images: int, image_size: int = 128):
    """Yields `generate_image(seed, split, i, image_size)` for i in 0..num_images-1."""
    for i in range(num_images):
        yield generate_image(seed, split, i, image_size)


# --------------------------------------------------------------------------------------
# For humans.


def _class_colours() -> np.ndarray:
    """(21, 3) uint8 display colours: 0 black, classes on a fixed hue wheel."""
    out = np.zeros((NUM_CLASSES + 1, 3), np.uint8)
    for c in range(1, NUM_CLASSES + 1):
        h = (c - 1) / NUM_CLASSES * 6.0
        x = 1 - abs(h % 2 - 1)
        rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(h) % 6]
        out[c] = np.round(np.array(rgb) * 255)
    return out


def render_grid(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], columns: int = 8
) -> np.ndarray:
    """A uint8 (rows·S, columns·2·S, 3) grid: each image beside its colour-coded mask.

    images: (S, S, 3) uint8; masks: (S, S) or (S, S, 1) class-index maps, same count.
    """
    if len(images) != len(masks) or not images:
        raise ValueError(f"need as many masks as images (>= 1), got {len(images)}, {len(masks)}")
    colours = _class_colours()
    tiles = []
    for img, m in zip(images, masks, strict=True):
        m = np.asarray(m).reshape(img.shape[:2])
        shown = colours[np.where(m == 255, 0, np.minimum(m, NUM_CLASSES))]
        tiles.append(np.concatenate([img, shown], axis=1))
    rows = math.ceil(len(tiles) / columns)
    blank = np.zeros_like(tiles[0])
    tiles += [blank] * (rows * columns - len(tiles))
    return np.concatenate(
        [np.concatenate(tiles[r * columns : (r + 1) * columns], axis=1) for r in range(rows)]
    )


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m jaxvrp.data.procedural --out grid.png`: writes a grid of samples."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", choices=tuple(SPLIT_IDS))
    parser.add_argument("--num", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--columns", type=int, default=4)
    args = parser.parse_args(argv)
    samples = list(generate_split(args.seed, args.split, args.num, args.image_size))
    grid = render_grid([s.image for s in samples], [s.mask for s in samples], args.columns)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(args.out)
    for s in samples:
        print(s.image_id, [CLASS_NAMES[c - 1] for c in s.classes])


if __name__ == "__main__":
    main()
