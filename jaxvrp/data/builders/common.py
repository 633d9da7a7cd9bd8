"""What every few-shot dataset builder shares: layout checks, image/mask readers, skip log, base.

The builders read the user's local copy of a dataset (TFDS "manual" data, nothing is
downloaded) and write one ArrayRecord record per image in the format of
`jaxvrp.data.schema`. Conventions common to all of them (`FewShotBuilder`):

- **Layout checks.** Before anything is written, a missing directory, file or split list
  raises `FileNotFoundError`, and a malformed one (empty list, unknown or overlapping class
  names) raises `ValueError`; both name the path and print the expected layout. A failure
  during the build (COCO's annotation JSON, parsed while its split is written, is malformed;
  no image of a split could be read) raises too; TFDS writes into an `incomplete.*`
  directory and deletes it on failure, so no prepared dataset is left behind
  (`tfds.data_source(name, data_dir=..., download=False)` then finds no split).
- **Corrupt images never crash a build.** An image or mask that cannot be read or fully
  decoded (truncated JPEG, broken PNG, missing file), whose mask does not match the image
  size or holds values that are not class ids, is skipped; each split logs
  `N images skipped: [...]` (absl, warning) and the list is kept in
  `info.metadata["skipped"][split]`.
- **Empty masks are dropped.** A record whose mask has no pixel of any class (only
  background/ignore) can serve neither as a reference nor as a target of any class, so it is
  not written; the ids are logged and kept in `info.metadata["empty"][split]`.
- **Images are stored as the source file's own bytes** when it is an RGB or grayscale JPEG
  (grayscale decodes to 3 equal channels); any other file (CMYK/palette/RGBA JPEG, PNG named
  .jpg, ...) is converted to RGB (`jaxvrp.image.rgb8`: 16-bit images scaled to 8 bits, not
  clipped) and re-encoded as JPEG (quality 95), and counted in the log. EXIF orientation is
  not applied: the datasets' masks and annotations are made on the stored pixels.
- **Bugs stop the build.** Only what a bad file raises (`BAD_FILE_ERRORS`: OSError,
  ValueError, a decompression bomb, ...) skips it; any other exception is a bug and stops.
- **Record order.** `disable_shuffling=True`: TFDS then keeps the order in which the
  generator yields the records (with string keys it replaces each key by its position; with
  shuffling on it would order them by a hash of the key). Each builder yields in a documented
  deterministic order, so record index i is stable across builds and machines. Shuffling is
  grain's job.
- **Class ids** are 1-based; `info.metadata["class_names"][c - 1]` is class c's name.
"""

from __future__ import annotations

import abc
import dataclasses
import io
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from jaxvrp.data import schema
from jaxvrp.image import rgb8

PathLike = str | os.PathLike

# Shown in the log; the full list is in info.metadata.
_LOG_MAX_ENTRIES = 50
# What one bad file raises (missing, unreadable, truncated or corrupt image, a mask of the
# wrong size or values, a bad annotation entry): the file is skipped and counted. Anything
# else (TypeError, AttributeError, NameError, ...) is a bug and stops the build.
BAD_FILE_ERRORS = (
    OSError,  # missing / unreadable files, PIL's UnidentifiedImageError, truncated images
    ValueError,  # wrong mask shape or values, bad annotations, UnicodeDecodeError
    SyntaxError,  # PIL on some corrupt headers
    EOFError,
    KeyError,  # an annotation entry without a field
    Image.DecompressionBombError,
    zlib.error,
    struct.error,
)


def _layout_message(dataset: str, layout: str) -> str:
    return f"Expected layout of the {dataset} manual directory:\n{layout.strip()}"


def require_dir(path: PathLike, *, dataset: str, what: str, layout: str) -> Path:
    """`path` if it is a directory, else `FileNotFoundError` naming it and the layout."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{dataset}: {what} directory not found: {path}\n{_layout_message(dataset, layout)}"
        )
    return path


def require_file(path: PathLike, *, dataset: str, what: str, layout: str) -> Path:
    """`path` if it is a file, else `FileNotFoundError` naming it and the layout."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset}: {what} not found: {path}\n{_layout_message(dataset, layout)}"
        )
    return path


def read_list(
    path: PathLike, *, dataset: str, what: str, layout: str, stems: bool = False
) -> list[str]:
    """The entries of a list file, one per line, in file order, duplicates dropped.

    Blank lines and lines starting with '#' are ignored and surrounding whitespace is
    stripped. With `stems`, only a line's first whitespace-separated token counts, reduced to
    its file stem, so both bare ids (`2007_000032`) and DeepLab-style lines
    (`/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png`) give the id.
    Raises `FileNotFoundError` if the file is missing, `ValueError` if it lists nothing.
    """
    path = require_file(path, dataset=dataset, what=what, layout=layout)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{dataset}: cannot read {what} {path}: {e}") from e
    entries: dict[str, None] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entries.setdefault(Path(line.split()[0]).stem if stems else line)
    if not entries:
        raise ValueError(
            f"{dataset}: {what} {path} lists no entries\n{_layout_message(dataset, layout)}"
        )
    return list(entries)


def subdirs(path: Path) -> list[str]:
    """Sorted names of the non-hidden subdirectories of `path`."""
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


class SkipLog:
    """Collects the images a build skipped (and why) and logs them once per split.

    `add(source, reason)` records one skipped file (the reason may be the exception);
    `log()` writes `<dataset> <split>: N images skipped: [...]` via absl logging (warning).
    """

    def __init__(self, label: str):
        self.label = label
        self.entries: list[str] = []

    def add(self, source: PathLike | str, reason: BaseException | str) -> None:
        if isinstance(reason, BaseException):
            reason = f"{type(reason).__name__}: {reason}"
        self.entries.append(f"{source} ({reason})")

    def __len__(self) -> int:
        return len(self.entries)

    def log(self) -> None:
        if not self.entries:
            logging.info("%s: 0 images skipped", self.label)
            return
        shown = self.entries[:_LOG_MAX_ENTRIES]
        more = len(self.entries) - len(shown)
        logging.warning(
            "%s: %d images skipped: %s%s",
            self.label,
            len(self.entries),
            shown,
            f" (+{more} more, see info.metadata['skipped'])" if more else "",
        )


def read_image(path: PathLike) -> tuple[io.BytesIO, tuple[int, int], bool]:
    """An image file -> (encoded bytes for TFDS, (H, W), whether it was re-encoded).

    The file is fully decoded once so that truncated or corrupt files raise here (OSError,
    SyntaxError, ...), not later in training. RGB and grayscale JPEGs are returned as the
    file's own bytes; anything else is converted to RGB and re-encoded as JPEG (quality 95).
    """
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        width, height = image.size
        if image.format == "JPEG" and image.mode in ("RGB", "L"):
            return io.BytesIO(data), (height, width), False
        rgb = rgb8(image)  # 16-bit scaled to 8 bits, not clipped
    return schema.encode_jpeg(rgb), (height, width), True


def read_index_mask(path: PathLike) -> np.ndarray:
    """A single-channel class-index PNG (palette or grayscale) -> (H, W) uint8 class ids.

    For a palette PNG the palette indices are the class ids (as in VOC's
    SegmentationClass); RGB masks are rejected (`ValueError`), they are not index maps.
    """
    with Image.open(path) as image:
        image.load()
        if image.mode not in ("P", "L"):
            raise ValueError(f"expected a palette or grayscale class-index PNG, got {image.mode}")
        return np.array(image, np.uint8)


def read_grey_mask(path: PathLike, threshold: int = 128) -> np.ndarray:
    """A mask image -> (H, W) bool: PIL's grey level (`convert("L")`) >= `threshold`.

    HSNet's rule for FSS-1000 (`Image.open(...).convert('L')`, then >= 128).
    """
    with Image.open(path) as image:
        image.load()
        return np.asarray(image.convert("L")) >= threshold


def read_nonzero_mask(path: PathLike) -> np.ndarray:
    """A mask image -> (H, W) bool: foreground where any value is non-zero.

    Palette masks: palette index != 0; others: any colour channel != 0 (alpha ignored).
    """
    with Image.open(path) as image:
        image.load()
        if image.mode in ("P", "PA", "1", "L", "I", "I;16", "F"):
            array = np.asarray(image)
            return (array[..., 0] if array.ndim == 3 else array) != 0
        array = np.asarray(image.convert("RGB"))
    return array.any(axis=-1)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One image to write: its id, image file and a reader of its (H, W) uint8 mask.

    `load_mask` gets the image's (H, W) and returns the class-index map; it may raise, the
    image is then skipped. `source` names the files in the skip log.
    """

    image_id: str
    image_path: Path
    load_mask: Callable[[tuple[int, int]], np.ndarray]
    source: str = ""


class FewShotBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the few-shot builders: manual data in, one ArrayRecord record per image out.

    Subclasses set `name`, `VERSION`, `SPLITS`, `LAYOUT` (the expected directory layout,
    also shown in every layout error) and implement `check_layout(root)` (raise on a
    missing/malformed layout; return a dict with the `class_names`, an optional `metadata`
    dict merged into `info.metadata`, and whatever `candidates` needs) and
    `candidates(root, split, layout)`.

    Args:
      manual_dir: the directory holding the user's copy of the dataset. If not given, TFDS's
        `DownloadConfig(manual_dir=...)` (or its default `<data_dir>/downloads/manual`) is
        used.
      **kwargs: for `tfds.core.GeneratorBasedBuilder` (`data_dir`, ...); `file_format`
        defaults to "array_record".
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    SPLITS: tuple[str, ...] = ()
    LAYOUT: str = ""
    DESCRIPTION: str = ""
    HOMEPAGE: str = ""
    CITATION: str = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.MANUAL_DOWNLOAD_INSTRUCTIONS = cls.LAYOUT

    def __init__(self, *, manual_dir: PathLike | None = None, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        self._manual_dir = None if manual_dir is None else Path(manual_dir)
        super().__init__(**kwargs)

    # ---- what subclasses define --------------------------------------------------------
    def class_names(self) -> Sequence[str]:
        """The class names if fixed by the dataset (id c is names[c - 1]), else () until
        `check_layout` has read them from the manual directory."""
        return ()

    @abc.abstractmethod
    def check_layout(self, root: Path) -> dict:
        """Raise FileNotFoundError / ValueError on a missing / malformed layout under `root`.

        Returns a dict with "class_names" (id c is class_names[c - 1]), optionally "metadata"
        (merged into `info.metadata`) and whatever `candidates` needs.
        """

    @abc.abstractmethod
    def candidates(self, root: Path, split: str, layout: dict) -> Iterable[Candidate]:
        """The images of `split` in record order."""

    # ---- TFDS ----------------------------------------------------------------------------
    def _info(self) -> tfds.core.DatasetInfo:
        names = self.class_names()
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=schema.features("jpeg"),
            homepage=self.HOMEPAGE or None,
            citation=self.CITATION or None,
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(class_names=list(names), skipped={}, empty={}),
        )

    def manual_root(self, dl_manager=None) -> Path:
        """The manual directory: the constructor's, else TFDS's `DownloadConfig` one."""
        if self._manual_dir is not None:
            root = self._manual_dir
        elif dl_manager is not None:
            try:
                root = Path(dl_manager.manual_dir)
            except AssertionError as e:  # TFDS: "does not exist or is empty"
                raise FileNotFoundError(
                    f"{self.name}: manual directory missing or empty ({e})\n"
                    f"{_layout_message(self.name, self.LAYOUT)}"
                ) from e
        else:
            raise ValueError(f"{self.name}: no manual_dir given")
        return require_dir(root, dataset=self.name, what="manual", layout=self.LAYOUT)

    def validate(self) -> None:
        """Checks the constructor's `manual_dir` layout without writing anything."""
        self.check_layout(self.manual_root())

    def _split_generators(self, dl_manager):
        root = self.manual_root(dl_manager)
        layout = self.check_layout(root)
        self.info.metadata["class_names"] = list(layout["class_names"])
        self.info.metadata.update(layout.get("metadata", {}))
        return {split: self._generate_examples(root, split, layout) for split in self.SPLITS}

    def _generate_examples(
        self, root: Path, split: str, layout: dict
    ) -> Iterator[tuple[str, dict]]:
        label = f"{self.name} {split}"
        num_classes = len(layout["class_names"])
        valid = [*range(num_classes + 1), schema.IGNORE]
        skipped = SkipLog(label)
        empty: list[str] = []
        reencoded: list[str] = []
        written = 0
        for cand in self.candidates(root, split, layout):
            try:
                image, size, converted = read_image(cand.image_path)
                mask = np.asarray(cand.load_mask(size))
                if mask.shape != size:
                    raise ValueError(f"mask shape {mask.shape} != image (H, W) {size}")
                bad = np.setdiff1d(np.unique(mask), valid)
                if bad.size:
                    raise ValueError(
                        f"mask values {bad.tolist()[:10]} are not class ids 0..{num_classes}"
                        f" or {schema.IGNORE}"
                    )
            except BAD_FILE_ERRORS as e:  # a bad file must never stop a long build ...
                skipped.add(cand.source or cand.image_path, e)
                continue  # ... but any other exception is a bug, and stops it
            record = schema.record(image, mask, cand.image_id)
            if not record["classes"]:
                empty.append(cand.image_id)
                continue
            if converted:
                reencoded.append(str(cand.image_path))
            written += 1
            yield cand.image_id, record
        skipped.log()
        if empty:
            logging.warning(
                "%s: %d images without any class pixel dropped: %s",
                label,
                len(empty),
                empty[:_LOG_MAX_ENTRIES],
            )
        if reencoded:
            logging.warning(
                "%s: %d images were not RGB/grayscale JPEGs and were re-encoded: %s",
                label,
                len(reencoded),
                reencoded[:_LOG_MAX_ENTRIES],
            )
        self.info.metadata["skipped"][split] = skipped.entries
        self.info.metadata["empty"][split] = empty
        if not written:
            raise ValueError(
                f"{label}: no record written ({len(skipped)} images skipped, {len(empty)} "
                f"with empty masks); check the data under {root}\n"
                f"{_layout_message(self.name, self.LAYOUT)}"
            )
        logging.info("%s: %d records written", label, written)


def natural_key(name: str) -> tuple:
    """Sort key putting numeric stems in numeric order ("2" < "10") before other names."""
    stem = Path(name).stem
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def image_files(folder: Path, suffixes: tuple[str, ...]) -> list[str]:
    """Names of the visible files in `folder` with one of `suffixes`, in natural order."""
    files = [
        p.name
        for p in Path(folder).iterdir()
        if p.suffix.lower() in suffixes and not p.name.startswith(".")
    ]
    return sorted(files, key=natural_key)
