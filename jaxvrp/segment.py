"""`jaxvrp segment`: segment target images like one or a few annotated reference images.

    jaxvrp segment (--learner DIR | --method NAME [--option KEY=VALUE ...]) [--sam DIR] \\
        --reference IMG (--reference-mask PNG | --points "x,y;x,y" | --box x0,y0,x1,y1 |
                         --scribble PNG) \\
        [--reference IMG (...) ...] --targets DIR_OR_GLOB --out DIR

Every `--reference` is one shot (K references: a K-shot prompt) and must be followed by
exactly one annotation option, which belongs to it. `--learner` is a learner checkpoint
(`jaxvrp.learners.checkpoint`, written by `jaxvrp.train`), `--sam` the SAM checkpoint it
prompts (`jaxvrp.sam.load`; by default the embedded SAM, `jaxvrp.assets.default_sam_dir()`),
which must have the architecture the learner was trained with. `--method NAME` runs a
training-free learner of the registry instead (e.g. `gp_sam`), with nothing but the SAM:
`--option KEY=VALUE` (repeatable; values read as JSON, else as text) are its `make_config`
arguments; `sam` defaults to the `--sam` checkpoint's variant and `backbone`, if the method
takes one, to that SAM's own encoder (`sam_<variant>`), or to the architecture of
`--backbone DIR` (a `jaxvrp convert backbone` checkpoint); images are brought to
`--image-size` (default: the SAM's input size). A method that reads the target's ground
truth (the oracle box) cannot segment new images and is refused. For every target image
`<stem>.<ext>`, `--out` receives `<stem>_mask.png` (mode "L", 0 / 255, the target's size) and
`<stem>_overlay.png` (the target with the mask tinted red at 50 % and its boundary outlined
in opaque red, 1 px).

    from jaxvrp.segment import Shot, segment
    segment("learner/", "sam/", [Shot("ref.png", "mask", "ref_mask.png")], "photos/", "out/")

Choices:

- Images are read with Pillow as a viewer shows them: the EXIF orientation is applied
  (`ImageOps.exif_transpose`), so coordinates, masks and outputs are in the orientation a
  person sees and annotates; converted to 8-bit RGB (`jaxvrp.image.rgb8`: grayscale,
  palette and RGBA as they look, 16-bit scaled to 8 bits), resized to the learner's
  `image_size` square (bilinear, aspect not kept) and ImageNet-normalised: exactly the
  training episodes' preprocessing (`jaxvrp.image.normalized_image`). Masks and scribbles:
  foreground = every pixel that is not black and not transparent (`jaxvrp.image.binary_mask`,
  any bit depth or mode). docs/segment.md has the table of bad inputs and what each gives.
- Annotations are binary (S, S) maps in the representation the learners were trained on
  (`jaxvrp.data.annotations`): points are single pixels, a box is a filled rectangle, a
  scribble its stroke pixels, a mask itself. They are validated against the reference
  image's original size, then brought to S x S:
  - `--points x,y;...`: integer pixel coordinates (x = column in 0..W-1, y = row in 0..H-1);
    each point sets the one S x S pixel that contains the original pixel's centre,
    `floor((x + 0.5) * S / W)`, so no point is lost, however much the image shrinks.
  - `--box x0,y0,x1,y1`: integer pixel edges, x1 and y1 exclusive (columns x0..x1-1), with
    0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H; the edges are scaled and rounded, and the
    box keeps at least one pixel.
  - `--reference-mask` / `--scribble`: a PNG (any format Pillow reads) of exactly the
    reference image's (displayed) size, foreground = not black. A mask is brought
    to S x S exactly as training episodes resize dataset masks (PIL nearest,
    `jaxvrp.image.resized_mask`), so the learner sees the reference as in training; a
    scribble by "any" pooling (`jaxvrp.masks.any_pool`: an S x S pixel is set when any
    original pixel of its adaptive-pooling window is), since training draws strokes at S x S
    and a thin stroke of a large image would vanish under nearest sampling.
  An annotation with no foreground pixel is an error.
- `--targets`: a directory (its image files, not recursive, hidden files skipped; suffixes
  .png .jpg .jpeg .bmp .webp .tif .tiff in any case) or a glob pattern (`**` recurses), both
  sorted by path. Two targets whose stems are equal ignoring case are an error, since their
  outputs would collide (also on case-insensitive file systems).
- Prediction: the learner's `apply` (any registered learner, `jaxvrp.learners.registry`;
  no dropout, `rng = jax.random.key(0)`, so sampling inference modes are deterministic) on
  one target at a time, logits (S, S) upsampled to the target's size (bilinear,
  align_corners=False); mask = logit > 0.
- Nothing half-written: every argument, both checkpoints, every reference, annotation and
  target image is read and checked before `--out` is created or any file written; each
  output goes to a hidden temporary name in `--out` and is renamed into place. Existing
  outputs of the same names are replaced.
- Errors are `SegmentError`s; `main` prints `jaxvrp segment: error: ...` and returns 2, as
  for usage errors.
"""

import argparse
import dataclasses
import functools
import glob
import inspect
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from jaxvrp import assets, backbones, params_io, point_store
from jaxvrp import frozen as frozen_lib
from jaxvrp import sam as sam_lib
from jaxvrp.image import binary_mask, normalized_image, resize_bilinear, resized_mask, rgb8
from jaxvrp.learners import checkpoint, registry
from jaxvrp.masks import any_pool, erode
from jaxvrp.paths import absolute, as_path, write_atomic

PROG = "jaxvrp segment"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# annotation kind (`jaxvrp.data.annotations.ANNOTATION_TYPES`) -> its command-line option
OPTIONS = {
    "mask": "--reference-mask",
    "point": "--points",
    "box": "--box",
    "scribble": "--scribble",
}
TINT = np.array([255, 0, 0], np.float32)  # the mask's colour in the overlay, at TINT_ALPHA
TINT_ALPHA = 0.5
OUTLINE = np.array([255, 0, 0], np.uint8)  # the mask boundary, opaque


class SegmentError(ValueError):
    """An input of `jaxvrp segment` is missing, unreadable or inconsistent."""


@dataclasses.dataclass(frozen=True)
class Shot:
    """One reference: its image and its annotation.

    kind: "mask" or "scribble" (value: the PNG's path), "point" (value: ((x, y), ...) integer
    pixel coordinates) or "box" (value: (x0, y0, x1, y1), x1 and y1 exclusive).
    """

    image: str | os.PathLike
    kind: str
    value: Any


# ---------------------------------------------------------------------------------------
# Images and annotations (host side, numpy)


def read_rgb(path: str | os.PathLike, option: str) -> np.ndarray:
    """The image at `path` as (H, W, 3) uint8; errors name `option` and the path."""
    path = Path(path)
    if not path.is_file():
        raise SegmentError(f"{option}: no such file: {path}")
    try:
        with Image.open(path) as im:
            return rgb8(ImageOps.exif_transpose(im))
    except Exception as e:  # Pillow raises many types for a bad file; all mean the same here
        raise SegmentError(
            f"{option}: cannot read {path} as an image ({type(e).__name__}: {e})"
        ) from e


def _point_index(v: int, n: int, size: int) -> int:
    """The index in 0..S-1 of the S-grid pixel holding the centre of pixel v of n."""
    return min(((2 * v + 1) * size) // (2 * n), size - 1)


def _edge(v: int, n: int, size: int) -> int:
    """Pixel edge v of 0..n scaled to 0..S, rounded half up."""
    return (2 * v * size + n) // (2 * n)


def annotation_map(shot: Shot, image_hw: tuple[int, int], size: int) -> np.ndarray:
    """The shot's annotation, validated at the reference's original (H, W), as a binary
    float32 (S, S) map (see the module docstring for each kind)."""
    h, w = image_hw
    option = OPTIONS.get(shot.kind)
    if option is None:
        raise SegmentError(f"unknown annotation kind {shot.kind!r}; known: {sorted(OPTIONS)}")
    where = f"for --reference {shot.image} ({w}x{h})"
    ann = np.zeros((size, size), np.float32)
    if shot.kind == "point":
        if not shot.value:
            raise SegmentError(f"{option}: no point given {where}")
        for x, y in shot.value:
            if not (0 <= x < w and 0 <= y < h):
                raise SegmentError(
                    f"{option}: point {x},{y} is outside the reference image {where}: "
                    f"x must be in 0..{w - 1} and y in 0..{h - 1}"
                )
            ann[_point_index(y, h, size), _point_index(x, w, size)] = 1.0
        return ann
    if shot.kind == "box":
        x0, y0, x1, y1 = shot.value
        if not (x0 < x1 and y0 < y1):
            raise SegmentError(f"{option}: box {x0},{y0},{x1},{y1} needs x0 < x1 and y0 < y1")
        if not (0 <= x0 and x1 <= w and 0 <= y0 and y1 <= h):
            raise SegmentError(
                f"{option}: box {x0},{y0},{x1},{y1} is outside the reference image {where}: "
                f"x0, x1 must be in 0..{w} and y0, y1 in 0..{h} (x1, y1 exclusive)"
            )
        r0, c0 = min(_edge(y0, h, size), size - 1), min(_edge(x0, w, size), size - 1)
        r1 = min(max(_edge(y1, h, size), r0 + 1), size)
        c1 = min(max(_edge(x1, w, size), c0 + 1), size)
        ann[r0:r1, c0:c1] = 1.0
        return ann
    path = Path(shot.value)
    if not path.is_file():
        raise SegmentError(f"{option}: no such file: {path}")
    try:
        with Image.open(path) as im:
            m = binary_mask(ImageOps.exif_transpose(im))
    except Exception as e:
        raise SegmentError(
            f"{option}: cannot read {path} as an image ({type(e).__name__}: {e})"
        ) from e
    if m.shape != (h, w):
        raise SegmentError(
            f"{option}: {path} is {m.shape[1]}x{m.shape[0]} but its reference image "
            f"{shot.image} is {w}x{h} (width x height); they must be the same size"
        )
    if not m.any():
        raise SegmentError(f"{option}: {path} is empty (no nonzero pixel)")
    if shot.kind == "mask":
        ann = (resized_mask(m.astype(np.uint8), size) > 0).astype(np.float32)
        if not ann.any():
            raise SegmentError(
                f"{option}: {path} has no foreground pixel left at the learner's {size}x{size} "
                "input (the mask is too small for it)"
            )
        return ann
    return np.asarray(any_pool(m, (size, size)))


def overlay(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 with the binary (H, W) mask tinted and its boundary outlined (1 px:
    mask pixels with a 4-neighbour outside the mask; the image border is not a boundary)."""
    out = rgb.astype(np.float32)
    out[mask] = (1.0 - TINT_ALPHA) * out[mask] + TINT_ALPHA * TINT
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    out[mask & ~erode(mask, outside=True)] = OUTLINE
    return out


# ---------------------------------------------------------------------------------------
# Inputs


def find_targets(targets: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Target image paths: a directory's image files, a glob pattern's matches (both
    sorted), or a sequence of paths as given; an empty result or colliding stems raise."""
    if isinstance(targets, str | os.PathLike):
        spec = os.fspath(targets)
        if os.path.isdir(spec):
            paths = sorted(
                p
                for p in Path(spec).iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not paths:
                raise SegmentError(
                    f"--targets: directory {spec} holds no image file ({' '.join(IMAGE_SUFFIXES)})"
                )
        else:
            paths = sorted(Path(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not paths:
                raise SegmentError(f"--targets: no file matches {spec!r}")
    else:
        paths = [Path(p) for p in targets]
        if not paths:
            raise SegmentError("--targets: no target given")
    seen: dict[str, Path] = {}
    for p in paths:
        other = seen.setdefault(p.stem.casefold(), p)
        if other != p:
            raise SegmentError(
                f"--targets: {other} and {p} have the same name stem; their outputs "
                f"({p.stem}_mask.png, {p.stem}_overlay.png) would collide"
            )
    return paths


def load_learner(learner_dir: str | os.PathLike) -> checkpoint.LearnerCheckpoint:
    if not as_path(learner_dir).is_dir():
        raise SegmentError(f"--learner: no such directory: {learner_dir}")
    try:
        return checkpoint.load(learner_dir)
    except (params_io.CheckpointError, ValueError, KeyError, OSError) as e:
        raise SegmentError(f"--learner {learner_dir}: not a usable learner checkpoint: {e}") from e


def sam_variant(config) -> str | None:
    """The name of the `jaxvrp.sam.VARIANTS` entry with `config`'s architecture."""
    for name, v in sam_lib.VARIANTS.items():
        if v.architecture() == config.architecture():
            return name
    return None


def _option_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def load_method(
    method: str,
    options: Sequence[str],
    sam_dir,
    backbone_dir=None,
    image_size: int | None = None,
) -> checkpoint.LearnerCheckpoint:
    """A training-free learner as a `LearnerCheckpoint` (empty params), configured from
    `--option`s, the SAM checkpoint and `--backbone`."""
    try:
        learner = registry.get(method)
    except (ValueError, ImportError) as e:
        raise SegmentError(f"--method: {e}") from e
    if learner.trainable:
        raise SegmentError(
            f"--method {method}: {learner.title} is trained; train it (python -m jaxvrp.train) "
            "and pass --learner DIR with its checkpoint"
        )
    model = {}
    for item in options:
        if "=" not in item:
            raise SegmentError(f"--option {item!r} is not KEY=VALUE")
        key, value = item.split("=", 1)
        model[key.strip()] = _option_value(value)
    takes = inspect.signature(learner.make_config).parameters
    sam_params, sam_config = _read_sam(sam_dir)
    variant = sam_variant(sam_config)
    if "sam" in takes and "sam" not in model:
        if variant is None:
            raise SegmentError(
                f"--sam {sam_dir}: its architecture is none of jaxvrp.sam.VARIANTS; "
                "pass --option sam=VARIANT"
            )
        model["sam"] = variant
    backbone = None
    if backbone_dir is not None:
        try:
            backbone = backbones.load(str(backbone_dir))
        except (params_io.CheckpointError, ValueError, KeyError, OSError) as e:
            raise SegmentError(f"--backbone {backbone_dir}: not a backbone checkpoint: {e}") from e
    if "backbone" in takes and "backbone" not in model:
        if backbone is not None:
            arch = [a for a in backbones.ARCHS if backbones.get_config(a) == backbone[1]]
            if not arch:
                raise SegmentError(f"--backbone {backbone_dir}: pass --option backbone=ARCH")
            model["backbone"] = arch[0]
        else:
            model["backbone"] = f"sam_{variant}"
    try:
        config = learner.make_config(**model)
    except (TypeError, ValueError) as e:
        raise SegmentError(f"--method {method} --option ...: {e}") from e
    spec = learner.frozen(config)
    if spec.backbone is not None and not spec.backbone_is_sam_encoder:
        if backbone is None:
            raise SegmentError(
                f"--method {method} reads backbone {model.get('backbone')!r}: pass --backbone "
                "DIR (jaxvrp convert backbone)"
            )
        if backbone[1] != spec.backbone:
            raise SegmentError(f"--backbone {backbone_dir} is not {model.get('backbone')!r}")
    size = image_size or (spec.sam.image_size if spec.sam is not None else 512)
    return checkpoint.LearnerCheckpoint(
        learner=learner,
        config=config,
        params=learner.init(jax.random.key(0), config),
        backbone_params=None if backbone is None else backbone[0],
        image_size=int(size),
        metadata={"kind": learner.name, "config": model},
    )


def _sam_summary(d: dict) -> str:
    return (
        f"encoder {d['encoder_embed_dim']} wide, {d['encoder_depth']} deep, "
        f"{d['image_size']}-pixel input, prompts {d['prompt_embed_dim']} wide"
    )


def load_frozen(sam_dir, ckpt: checkpoint.LearnerCheckpoint, learner_dir) -> dict:
    """The frozen tree the learner needs (`Learner.frozen`): the SAM from `sam_dir` (None:
    the embedded SAM), whose architecture must be the learner's SAM, and the backbone from
    the learner checkpoint or, for a SAM-encoder backbone, from the SAM."""
    spec = ckpt.frozen_spec
    out = {}
    if spec.sam is not None:
        out["sam"] = _load_sam(sam_dir, spec.sam, ckpt, learner_dir)
    if spec.backbone is not None:
        try:
            out["backbone"] = (
                ckpt.backbone_params
                if ckpt.backbone_params is not None
                else frozen_lib.sam_backbone_params(out.get("sam"), spec)
            )
        except ValueError as e:
            raise SegmentError(f"--learner {learner_dir}: {e}") from e
    return out


def _sam_dir(sam_dir):
    if sam_dir is not None:
        return sam_dir
    try:
        return assets.default_sam_dir()
    except FileNotFoundError as e:
        raise SegmentError(f"--sam not given and {e}; pass --sam DIR") from e


@functools.cache
def _read_sam_cached(sam_dir: str):
    if not as_path(sam_dir).is_dir():
        raise SegmentError(f"--sam: no such directory: {sam_dir}")
    try:
        return sam_lib.load(sam_dir)
    except (params_io.CheckpointError, ValueError, KeyError, TypeError, OSError) as e:
        raise SegmentError(f"--sam {sam_dir}: not a usable SAM checkpoint: {e}") from e


def _read_sam(sam_dir):
    """(params, config) of `sam_dir` (None: the embedded SAM), read once per run."""
    return _read_sam_cached(str(absolute(_sam_dir(sam_dir))))


def _load_sam(sam_dir, want_config, ckpt: checkpoint.LearnerCheckpoint, learner_dir):
    hint = ""
    if sam_dir is None:
        hint = " (the embedded default SAM; pass --sam with the SAM the learner was trained with)"
    sam_dir = _sam_dir(sam_dir)
    sam_params, sam_config = _read_sam(sam_dir)
    have, want = sam_config.architecture(), want_config.architecture()
    if have != want:
        diff = ", ".join(f"{k} {have[k]} != {want[k]}" for k in sorted(have) if have[k] != want[k])
        name = ckpt.metadata.get("config", {}).get("sam", "?")
        raise SegmentError(
            f"--sam {sam_dir}{hint} is a SAM with {_sam_summary(have)}, but the learner "
            f"{learner_dir} was trained with SAM {name!r}: {_sam_summary(want)} ({diff})"
        )
    return sam_params


# ---------------------------------------------------------------------------------------
# Prediction and output


@functools.cache
def _predictor(learner, config):
    """The learner's jitted `apply` for one config (compiled once per input shape)."""

    def predict(params, frozen, batch):
        return learner.apply(params, frozen, batch, config=config, rng=jax.random.key(0))

    return jax.jit(predict)


def _prepared(ckpt, batch: dict) -> dict:
    """The batch after the learner's host-side `prepare` (protocol), if it has one."""
    prepare = ckpt.learner.prepare
    return batch if prepare is None else prepare(batch, ckpt.config)


def _with_greedy_points(ckpt, frozen, support: dict) -> dict:
    """The references' "sam_greedy" points, computed once here with the frozen SAM, for a
    learner that reads them from `jaxvrp.point_store` in training and evaluation (SAMIC
    with `point_source="sam_greedy"`): the user's references are in no store."""
    if not point_store.wanted(ckpt.config):
        return support
    from jaxvrp.learners import samic

    out = samic.greedy_points(support, jax.device_get(frozen["sam"]), ckpt.config)
    return {k: out[k] for k in (*support, "support_points", "support_point_valid")}


def _check_inputs(ckpt, frozen, support: dict) -> None:
    """Trace the learner on the segment batch (no compute): a learner that reads something
    a new image does not have (the ground truth, extra batch keys) is refused by name."""
    s = support["support_images"].shape[2]
    batch = {"query_image": np.zeros((1, s, s, 3), np.float32), **support}
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _prepared(ckpt, batch))
    try:
        jax.eval_shape(
            lambda p, f, b: ckpt.learner.apply(p, f, b, config=ckpt.config),
            ckpt.params,
            frozen,
            batch,
        )
    except KeyError as e:
        raise SegmentError(
            f"{ckpt.learner.title} reads {e} of the target, which a new image does not have; "
            "it cannot segment new images"
        ) from e


def _write_png(array: np.ndarray, path) -> None:
    """Write atomically: a hidden per-process temporary file in the same directory, then a
    rename (`jaxvrp.paths.write_atomic`; `path` local or remote, e.g. gs://...)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    try:
        write_atomic(path, buf.getvalue())
    except OSError as e:
        raise SegmentError(f"--out: cannot write {path}: {e}") from e


def segment(
    learner_dir: str | os.PathLike | None,
    sam_dir: str | os.PathLike | None,
    shots: Sequence[Shot],
    targets: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    method: str | None = None,
    options: Sequence[str] = (),
    backbone_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    progress: bool = True,
) -> list[tuple[Path, Path]]:
    """Segment every target like the annotated references, with the trained learner of
    `learner_dir` or the training-free `method`; (mask, overlay) paths written per target,
    in target order. Everything is validated before anything is written."""
    if (learner_dir is None) == (method is None):
        raise SegmentError("give exactly one of --learner DIR and --method NAME")
    _read_sam_cached.cache_clear()  # the SAM is read once per call, never across calls
    out = as_path(out_dir)  # gs://... stays remote
    if out.exists() and not out.is_dir():
        raise SegmentError(f"--out: {out} exists and is not a directory")
    if not shots:
        raise SegmentError("no --reference given")
    for i, shot in enumerate(shots):  # cheap checks first: nothing is loaded yet
        if shot.kind not in OPTIONS:
            raise SegmentError(f"shot {i + 1}: unknown annotation kind {shot.kind!r}")
        if not Path(shot.image).is_file():
            raise SegmentError(f"--reference: no such file: {shot.image}")
        if shot.kind in ("mask", "scribble") and not Path(shot.value).is_file():
            raise SegmentError(f"{OPTIONS[shot.kind]}: no such file: {shot.value}")
    paths = find_targets(targets)

    if method is not None:
        ckpt = load_method(method, options, sam_dir, backbone_dir, image_size)
        learner_dir = f"--method {method}"
    else:
        ckpt = load_learner(learner_dir)
    frozen = load_frozen(sam_dir, ckpt, learner_dir)
    size = ckpt.image_size
    images, anns = [], []
    for shot in shots:
        rgb = read_rgb(shot.image, "--reference")
        anns.append(annotation_map(shot, rgb.shape[:2], size))
        images.append(normalized_image(rgb, size))
    for p in paths:  # decode every target now, so that a bad one stops the run before output
        read_rgb(p, "--targets")
    _read_sam_cached.cache_clear()  # `frozen` holds what is needed
    support = {
        "support_images": np.stack(images)[None],
        "support_annotations": np.stack(anns)[None],
    }
    support = _with_greedy_points(ckpt, frozen, support)
    _check_inputs(ckpt, frozen, support)

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SegmentError(f"--out: cannot create {out}: {e}") from e
    predict = _predictor(ckpt.learner, ckpt.config)
    params, frozen = jax.device_put((ckpt.params, frozen))
    support = jax.device_put(support)
    written = []
    for p in tqdm(paths, desc="segment", unit="image", file=sys.stderr, disable=not progress):
        rgb = read_rgb(p, "--targets")
        batch = _prepared(ckpt, {"query_image": normalized_image(rgb, size)[None], **support})
        logits = predict(params, frozen, batch)[0]  # (S, S)
        logits = resize_bilinear(logits, rgb.shape[:2], channels_last=False)
        mask = np.asarray(logits) > 0
        mask_path, overlay_path = out / f"{p.stem}_mask.png", out / f"{p.stem}_overlay.png"
        _write_png(np.where(mask, 255, 0).astype(np.uint8), mask_path)
        _write_png(overlay(rgb, mask), overlay_path)
        written.append((mask_path, overlay_path))
    return written


# ---------------------------------------------------------------------------------------
# Command line


def _int_list(text: str, n: int | None, what: str) -> list[int]:
    parts = [s.strip() for s in text.split(",")]
    try:
        values = [int(s) for s in parts]
    except ValueError:
        values = None
    if values is None or (n is not None and len(values) != n):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what} (integer pixel coordinates)")
    return values


def parse_points(text: str) -> tuple[tuple[int, int], ...]:
    """ "x,y;x,y;..." -> ((x, y), ...)."""
    items = [s for s in text.split(";") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r} holds no point; write x,y;x,y;...")
    return tuple(tuple(_int_list(s, 2, "a point x,y")) for s in items)


def parse_box(text: str) -> tuple[int, int, int, int]:
    """ "x0,y0,x1,y1" -> (x0, y0, x1, y1)."""
    return tuple(_int_list(text, 4, "a box x0,y0,x1,y1"))


class _Reference(argparse.Action):
    """--reference IMG: starts a shot; the previous one must have its annotation."""

    def __call__(self, parser, namespace, value, option_string=None):
        shots = getattr(namespace, self.dest) or []
        if shots and shots[-1].get("kind") is None:
            raise argparse.ArgumentError(
                self, f"--reference {shots[-1]['image']} has no annotation: {_FOLLOW}"
            )
        setattr(namespace, self.dest, [*shots, {"image": value}])


class _Annotation(argparse.Action):
    """An annotation option: belongs to the last --reference, which must have none yet."""

    def __init__(self, *args, kind: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.kind = kind

    def __call__(self, parser, namespace, value, option_string=None):
        shots = getattr(namespace, self.dest) or []
        if not shots:
            raise argparse.ArgumentError(
                self, "comes before any --reference: each annotation follows its --reference IMG"
            )
        last = shots[-1]
        if last.get("kind") is not None:
            raise argparse.ArgumentError(
                self,
                f"--reference {last['image']} already has an annotation "
                f"({OPTIONS[last['kind']]}); give exactly one per --reference",
            )
        setattr(namespace, self.dest, [*shots[:-1], {**last, "kind": self.kind, "value": value}])


_FOLLOW = "follow it with one of " + ", ".join(OPTIONS.values())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Segment target images like one or a few annotated reference images, "
        "with a trained learner and the frozen SAM it prompts.",
        epilog="Each --reference IMG must be followed by exactly one annotation option, which "
        "belongs to it; repeat --reference for K shots. Coordinates are integer pixels "
        "(x = column, y = row) of the reference image. Writes <stem>_mask.png and "
        "<stem>_overlay.png per target into --out.",
        allow_abbrev=False,
    )
    parser.set_defaults(shots=None)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--learner", metavar="DIR", help="a trained learner's checkpoint")
    which.add_argument(
        "--method",
        metavar="NAME",
        help="a training-free learner instead (e.g. gp_sam): needs only the SAM",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='an option of --method\'s config (repeatable; JSON values, e.g. mode="box")',
    )
    parser.add_argument("--backbone", metavar="DIR", help="backbone checkpoint for --method")
    parser.add_argument(
        "--image-size", type=int, metavar="S", help="--method's input side (default: SAM's)"
    )
    parser.add_argument(
        "--sam",
        metavar="DIR",
        help="SAM checkpoint the learner prompts (default: the embedded SAM)",
    )
    parser.add_argument(
        "--reference", action=_Reference, dest="shots", metavar="IMG", help="a reference image"
    )
    annotation = parser.add_argument_group("annotations (one after each --reference)")
    annotation.add_argument(
        "--reference-mask",
        action=_Annotation,
        kind="mask",
        dest="shots",
        metavar="PNG",
        help="mask of the reference's size, nonzero = object",
    )
    annotation.add_argument(
        "--points",
        action=_Annotation,
        kind="point",
        dest="shots",
        type=parse_points,
        metavar='"x,y;x,y"',
        help="points on the object",
    )
    annotation.add_argument(
        "--box",
        action=_Annotation,
        kind="box",
        dest="shots",
        type=parse_box,
        metavar="x0,y0,x1,y1",
        help="box around the object (x1, y1 exclusive)",
    )
    annotation.add_argument(
        "--scribble",
        action=_Annotation,
        kind="scribble",
        dest="shots",
        metavar="PNG",
        help="strokes on the object, of the reference's size, nonzero = stroke",
    )
    parser.add_argument(
        "--targets",
        required=True,
        metavar="DIR_OR_GLOB",
        help="directory of images, or a glob pattern (quote it)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    return parser


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[Shot]]:
    """Parsed options and the shots; usage errors exit (SystemExit 2), as argparse does."""
    parser = build_parser()
    args = parser.parse_args(argv)
    shots = args.shots or []
    if not shots:
        parser.error(f"give at least one --reference IMG and {_FOLLOW}")
    if shots[-1].get("kind") is None:
        parser.error(f"--reference {shots[-1]['image']} has no annotation: {_FOLLOW}")
    return args, [Shot(s["image"], s["kind"], s["value"]) for s in shots]


def main(argv: Sequence[str] | None = None) -> int:
    """`jaxvrp segment` with `argv` (default: sys.argv[1:]); the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, shots = parse_args(argv)
    except SystemExit as e:  # usage error (2) or --help (0)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        written = segment(
            args.learner,
            args.sam,
            shots,
            args.targets,
            args.out,
            method=args.method,
            options=args.option,
            backbone_dir=args.backbone,
            image_size=args.image_size,
        )
    except SegmentError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(f"{PROG}: wrote the masks and overlays of {len(written)} targets to {args.out}")
    return 0
