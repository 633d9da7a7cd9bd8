"""HSNet's evaluation protocol (`data.protocol = "hsnet"`): the very test episodes of HSNet.

HSNet's test script (`juhongm999/hsnet` at 6b1bc12b, `test.py`) is the evaluator behind the
published few-shot tables (VRP-SAM, ProSAM, SAMIC, Matcher reuse it). It seeds `np.random`
once with 0 (`common/utils.py fix_randseed(0)`, called at the top of `test`), then reads the
test dataset in order (`shuffle=False`, `num_workers=0`), and every episode's randomness is a
`np.random.choice(pool, 1, replace=False)` call in the dataset's `__getitem__`. This module
replays that sequence of draws on the split lists HSNet ships (`jaxvrp/data/splits/hsnet/`,
copied or converted from the official `data/splits/`, see its README), per dataset:

- **PASCAL-5i** (`data/pascal.py`): 1000 episodes (`__len__`); episode i's query is line
  `i % n` of `splits/pascal/val/fold{f}.txt` (`<VOC id>__<1-based class>`), its class that
  line's; each support is drawn from the ids of that class's lines (file order), redrawn
  while it equals the query (supports may repeat each other).
- **COCO-20i** (`data/coco.py`): 1000 episodes; `idx` is ignored: the class is drawn from the
  fold's `[f + 4 v for v in range(20)]`, then the query from that class's list in
  `splits/coco/val/fold{f}.pkl`, then the supports as above.
- **FSS-1000** (`data/fss.py`): one episode per test image (2400 with the full dataset): the
  test classes of `splits/fss/test.txt` sorted, each class's `.jpg` files in sorted path
  order; each support is `k.jpg` with k drawn from 1..10, redrawn while it is the query.

`np.random.choice(pool, 1, replace=False)` on NumPy's legacy generator is
`permutation(len(pool))[:1]`, so the draw depends only on the pool's length; here it is
`RandomState(seed).choice(len(pool), 1, replace=False)`, the same stream without touching
the global state (the legacy stream is frozen by NumPy's compatibility policy, so today's
NumPy draws what HSNet's did). Ids are jaxvrp's `image_id`s (VOC id;
`COCO_val2014_<12 digits>`; `<class>/<n>` for FSS), classes jaxvrp's 1-based ids
(`jaxvrp.data.folds`): HSNet's 0-based PASCAL/COCO class k is jaxvrp's k + 1, an FSS class
is its name's id in the build.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from absl import logging
from etils import epath

PROTOCOL = "hsnet"  # the value of config.data.protocol
DATASETS = ("pascal5i", "coco20i", "fss1000")  # the datasets HSNet has test lists for
SEED = 0  # test.py: utils.fix_randseed(0)
NUM_EPISODES = 1000  # data/pascal.py, data/coco.py: __len__ of the val/test split
NUM_FOLDS = 4
FSS_TEST_OFFSET = 760  # data/fss.py: a test class's class_id is 760 + its sorted rank
FSS_SUPPORTS = 10  # data/fss.py: supports are k.jpg, k drawn from range(1, 11)


@dataclasses.dataclass(frozen=True)
class Episode:
    """One evaluation episode: jaxvrp image ids and class ids (and HSNet's class id)."""

    query: str
    supports: tuple[str, ...]
    class_id: int  # jaxvrp's 1-based class id
    hsnet_class: int  # HSNet's `class_id` of the batch (0-based; FSS: 760 + sorted rank)

    def to_json(self, number: int) -> dict:
        return {
            "episode": number,
            "query": self.query,
            "supports": list(self.supports),
            "class": self.class_id,
            "hsnet_class": self.hsnet_class,
        }


def splits_dir(override: str | os.PathLike = "") -> epath.Path:
    """The split lists: `override` (a directory laid out as the shipped one) or the copy
    shipped with jaxvrp (`jaxvrp/data/splits/hsnet`)."""
    if override:
        return epath.Path(override)
    return epath.Path(str(importlib.resources.files("jaxvrp.data") / "splits" / "hsnet"))


def _file(root: epath.Path, relative: str) -> epath.Path:
    path = root / relative
    if not path.is_file():
        raise FileNotFoundError(f"HSNet split list {path} not found (expected under {root})")
    return path


def _check_fold(fold: int) -> int:
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < NUM_FOLDS:
        raise ValueError(f"fold must be one of {list(range(NUM_FOLDS))}, got {fold!r}")
    return fold


def _lines(path: epath.Path) -> list[str]:
    # HSNet reads `f.read().split('\n')[:-1]` (files end with a newline); a missing final
    # newline is tolerated here rather than dropping the last line.
    lines = path.read_text().split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def read_pascal(fold: int, root: str | os.PathLike = "") -> list[tuple[str, int]]:
    """`pascal/val/fold{fold}.txt` -> [(VOC id, HSNet's 0-based class)] in file order."""
    path = _file(splits_dir(root), f"pascal/val/fold{_check_fold(fold)}.txt")
    out = []
    for n, line in enumerate(_lines(path), 1):
        name, sep, cls = line.partition("__")
        if not sep or not name or not cls.isdigit() or not 1 <= int(cls) <= 20:
            raise ValueError(f"{path}:{n}: expected '<VOC id>__<class 01..20>', got {line!r}")
        out.append((name, int(cls) - 1))
    if not out:
        raise ValueError(f"{path} lists no image")
    return out


def coco_image_id(number: int) -> str:
    """COCO val2014 image number -> jaxvrp's `image_id` (the file name stem)."""
    return f"COCO_val2014_{int(number):012d}"


def read_coco(fold: int, root: str | os.PathLike = "") -> dict[int, list[str]]:
    """`coco/val/fold{fold}.json` -> {HSNet's 0-based class: [image ids in list order]}."""
    path = _file(splits_dir(root), f"coco/val/fold{_check_fold(fold)}.json")
    try:
        classes = json.loads(path.read_text())["classes"]
        return {int(k): [coco_image_id(i) for i in v] for k, v in classes.items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{path}: expected {{'classes': {{'<class>': [<image number>, ...]}}}}: {e}"
        ) from e


def read_fss(root: str | os.PathLike = "") -> list[str]:
    """`fss/test.txt` -> the test class names, sorted (as `data/fss.py` sorts them)."""
    path = _file(splits_dir(root), "fss/test.txt")
    names = sorted(_lines(path))
    if not names or any(not n for n in names):
        raise ValueError(f"{path}: expected one class name per line, without blank lines")
    return names


def _draw(rng: np.random.RandomState, n: int) -> int:
    """HSNet's `np.random.choice(pool, 1, replace=False)[0]` as an index into a pool of n."""
    return int(rng.choice(n, 1, replace=False)[0])


def _supports(rng, pool: Sequence[str], query: str, shots: int, what: str) -> tuple[str, ...]:
    """HSNet's `while True` loop: draw, keep when not the query, stop at `shots` kept."""
    if all(p == query for p in pool):  # HSNet would loop forever
        raise ValueError(f"{what}: the only image of its pool is the query {query!r}")
    out: list[str] = []
    while True:
        s = pool[_draw(rng, len(pool))]
        if s != query:
            out.append(s)
        if len(out) == shots:
            return tuple(out)


def _check_shots(shots: int) -> None:
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")


def pascal_episodes(
    fold: int,
    shots: int,
    num_episodes: int = NUM_EPISODES,
    *,
    root: str | os.PathLike = "",
    seed: int = SEED,
) -> list[Episode]:
    """HSNet's PASCAL-5i test episodes of `fold` (`data/pascal.py` `sample_episode`)."""
    _check_shots(shots)
    metadata = read_pascal(fold, root)
    classwise: dict[int, list[str]] = {}
    for name, c in metadata:  # build_img_metadata_classwise: file order
        classwise.setdefault(c, []).append(name)
    rng = np.random.RandomState(seed)
    out = []
    for idx in range(num_episodes):
        name, c = metadata[idx % len(metadata)]  # __getitem__: idx %= len(img_metadata)
        supports = _supports(rng, classwise[c], name, shots, f"PASCAL fold {fold} class {c + 1}")
        out.append(Episode(name, supports, c + 1, c))
    return out


def coco_episodes(
    fold: int,
    shots: int,
    num_episodes: int = NUM_EPISODES,
    *,
    root: str | os.PathLike = "",
    seed: int = SEED,
) -> list[Episode]:
    """HSNet's COCO-20i test episodes of `fold` (`data/coco.py` `load_frame`)."""
    _check_shots(shots)
    classwise = read_coco(fold, root)
    class_ids = [fold + NUM_FOLDS * v for v in range(20)]  # build_class_ids (val)
    empty = [c for c in class_ids if not classwise.get(c)]
    if empty:
        raise ValueError(
            f"COCO fold {fold}: the split list has no image of HSNet classes {empty} "
            f"(0-based); every class of the fold needs one"
        )
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(num_episodes):
        c = class_ids[_draw(rng, len(class_ids))]
        pool = classwise[c]
        query = pool[_draw(rng, len(pool))]
        supports = _supports(rng, pool, query, shots, f"COCO fold {fold} class {c + 1}")
        out.append(Episode(query, supports, c + 1, c))
    return out


def fss_queries(image_ids: Iterable[str], root: str | os.PathLike = "") -> list[tuple[str, str]]:
    """HSNet's FSS-1000 `img_metadata` from the ids of a build: [(class, image stem)] of the
    test classes in sorted order, each class's images in sorted file-name order
    (`sorted(glob(...))` of `<n>.jpg`: 1, 10, 2, ..., 9)."""
    categories = read_fss(root)
    wanted = set(categories)
    by_class: dict[str, list[str]] = {}
    for image_id in image_ids:
        name, _, stem = str(image_id).rpartition("/")
        if name in wanted:
            by_class.setdefault(name, []).append(stem)
    missing = [c for c in categories if c not in by_class]
    if missing:
        raise ValueError(
            f"{len(missing)} of HSNet's {len(categories)} FSS-1000 test classes have no image "
            f"in this build: {missing[:10]}"
        )
    # sorted() of the paths '<dir>/<class>/<stem>.jpg': within a class, by '<stem>.jpg'
    return [(c, s) for c in categories for s in sorted(by_class[c], key=lambda s: s + ".jpg")]


def fss_episodes(
    image_ids: Iterable[str],
    class_names: Sequence[str],
    shots: int,
    num_episodes: int | None = None,
    *,
    root: str | os.PathLike = "",
    seed: int = SEED,
) -> list[Episode]:
    """HSNet's FSS-1000 test episodes (`data/fss.py` `sample_episode`), from the image ids of
    the build's test split; `class_names` is the build's `info.metadata["class_names"]`
    (jaxvrp's id c is `class_names[c - 1]`). `num_episodes` None = one per test image."""
    _check_shots(shots)
    queries = fss_queries(image_ids, root)
    categories = read_fss(root)
    rank = {c: i for i, c in enumerate(categories)}
    ids = {n: i + 1 for i, n in enumerate(class_names)}
    unknown = [c for c in categories if c not in ids]
    if unknown:
        raise ValueError(f"FSS-1000 test classes not in the build's class_names: {unknown[:10]}")
    n = len(queries) if num_episodes is None else num_episodes
    if n > len(queries):
        raise ValueError(
            f"{n} FSS-1000 evaluation episodes asked for, but HSNet's protocol has one per test "
            f"image and the build has {len(queries)} (the full dataset: 2400; builds drop "
            "unreadable images and empty masks, listed in info.metadata)"
        )
    rng = np.random.RandomState(seed)
    out = []
    for c, stem in queries[:n]:
        supports: list[str] = []
        while True:
            k = _draw(rng, FSS_SUPPORTS) + 1  # np.random.choice(range(1, 11))
            if str(k) != stem:  # '<dir>/<k>.jpg' != the query's path
                supports.append(f"{c}/{k}")
            if len(supports) == shots:
                break
        out.append(Episode(f"{c}/{stem}", tuple(supports), ids[c], FSS_TEST_OFFSET + rank[c]))
    return out


def episodes_of(
    dataset: str,
    fold: int,
    shots: int,
    num_episodes: int,
    *,
    root: str | os.PathLike = "",
    image_ids: Iterable[str] = (),
    class_names: Sequence[str] = (),
) -> list[Episode]:
    """HSNet's test episodes of a dataset (`DATASETS`); FSS-1000 needs the build's test
    `image_ids` and `class_names`. A count other than HSNet's is allowed (the first
    episodes of HSNet's sequence; PASCAL/COCO continue it past 1000) with a warning."""
    if dataset not in DATASETS:
        raise ValueError(
            f"the hsnet protocol has episode lists for {list(DATASETS)}, not {dataset!r}; "
            "set data.protocol='jaxvrp'"
        )
    if dataset == "fss1000":
        eps = fss_episodes(image_ids, class_names, shots, num_episodes, root=root)
        full = len(fss_queries(image_ids, root))
    elif dataset == "pascal5i":
        eps, full = pascal_episodes(fold, shots, num_episodes, root=root), NUM_EPISODES
    else:
        eps, full = coco_episodes(fold, shots, num_episodes, root=root), NUM_EPISODES
    if num_episodes != full:
        logging.warning(
            "%s: %d evaluation episodes; HSNet's protocol has %d (data.num_eval_episodes)",
            dataset,
            num_episodes,
            full,
        )
    return eps


def resolve(
    episodes: Sequence[Episode], ids: Mapping[str, int], records: Mapping[int, np.ndarray]
) -> list[tuple[int, int, np.ndarray]]:
    """Episodes -> [(class id, query record, support records (K,))] of a source.

    `ids` maps `image_id` -> record index, `records` class -> its records (a
    `ClassIndex`). An id missing from the build is an error naming it; an episode image
    whose mask lacks the class (masks made differently from HSNet's) is kept and counted in
    a warning."""
    missing = sorted({i for e in episodes for i in (e.query, *e.supports) if i not in ids})
    if missing:
        raise ValueError(
            f"{len(missing)} images of HSNet's episode list are not in this build: "
            f"{missing[:10]} (HSNet's lists name the images; build the dataset from the same "
            "files, e.g. PASCAL's val list must hold every id of splits/pascal/val)"
        )
    members = {c: set(np.asarray(r).tolist()) for c, r in records.items()}
    out, lacking = [], set()
    for e in episodes:
        q, s = ids[e.query], np.array([ids[i] for i in e.supports], np.int64)
        for image_id, r in zip((e.query, *e.supports), (q, *s.tolist()), strict=True):
            if r not in members.get(e.class_id, ()):
                lacking.add((image_id, e.class_id))
        out.append((e.class_id, q, s))
    if lacking:
        logging.warning(
            "%d (image, class) pairs of HSNet's episode list have no pixel of the class in "
            "this build (kept): %s",
            len(lacking),
            sorted(lacking)[:10],
        )
    return out


def resized_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W) -> (S, S) as HSNet resizes masks: `F.interpolate(mode="nearest")`.

    Parity quirk: PyTorch's CPU kernel computes the source index in float32,
    `floorf(dst * (float)(in / out))` (`UpSample.h nearest_idx`), which differs from the
    exact rational (and from PIL's centre-sampling nearest that jaxvrp's own protocol uses)
    for some sizes; float32 here reproduces it."""
    mask = np.asarray(mask)
    idx = []
    for n in mask.shape[:2]:
        if n == size:
            idx.append(np.arange(size))
            continue
        scale = np.float32(n) / np.float32(size)
        src = np.floor(np.arange(size, dtype=np.float32) * scale).astype(np.int64)
        idx.append(np.minimum(src, n - 1))
    return mask[np.ix_(idx[0], idx[1])]
