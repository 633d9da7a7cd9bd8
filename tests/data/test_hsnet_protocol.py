"""HSNet's evaluation protocol (`data.protocol="hsnet"`): episode lists, masks, metrics.

The references here transcribe, from reading the official code (`juhongm999/hsnet` at
6b1bc12b), what its test run does: `fix_randseed(0)` (the global `np.random` seeded once),
then `__getitem__` of `data/pascal.py`, `data/coco.py`, `data/fss.py` in order, each with
its own `np.random.choice(list, 1, replace=False)` calls on the official list types (lists
of names, `glob`-ed paths); and `Evaluator.classify_prediction` + `AverageMeter` with torch
`histc` / `index_add_`. jaxvrp's own code is not used by them.
"""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxvrp import configs, metrics
from jaxvrp.data import datasets, episodes, hsnet
from tests.data.fake_trees import write_jpeg, write_png

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = hsnet.splits_dir()


# ---- references transcribed from the official dataset classes ----------------------------


class _GlobalSeed:
    """`np.random.seed(0)` as `fix_randseed(0)` does, restoring the global state after."""

    def __enter__(self):
        self.state = np.random.get_state()
        np.random.seed(0)

    def __exit__(self, *exc):
        np.random.set_state(self.state)


def _supports_ref(pool, query_name, shot):
    support_names = []
    while True:  # keep sampling support set if query == support
        support_name = np.random.choice(pool, 1, replace=False)[0]
        if query_name != support_name:
            support_names.append(support_name)
        if len(support_names) == shot:
            break
    return support_names


def reference_pascal(split_file, shot, n=1000):
    with open(split_file) as f:
        lines = f.read().split("\n")[:-1]
    img_metadata = [[d.split("__")[0], int(d.split("__")[1]) - 1] for d in lines]
    classwise = {c: [] for c in range(20)}
    for name, c in img_metadata:
        classwise[c] += [name]
    out = []
    with _GlobalSeed():
        for idx in range(n):
            idx %= len(img_metadata)
            query_name, class_sample = img_metadata[idx]
            supports = _supports_ref(classwise[class_sample], query_name, shot)
            out.append((query_name, [str(s) for s in supports], class_sample))
    return out


def reference_coco(classwise, fold, shot, n=1000):
    """`classwise`: the pickle's dict {class: ['val2014/COCO_val2014_<id>.jpg', ...]}."""
    class_ids = [fold + 4 * v for v in range(20)]
    out = []
    with _GlobalSeed():
        for _ in range(n):
            class_sample = np.random.choice(class_ids, 1, replace=False)[0]
            query_name = np.random.choice(classwise[class_sample], 1, replace=False)[0]
            supports = _supports_ref(classwise[class_sample], query_name, shot)
            out.append((str(query_name), [str(s) for s in supports], int(class_sample)))
    return out


def reference_fss(base_path, categories_file, shot):
    with open(categories_file) as f:
        categories = sorted(f.read().split("\n")[:-1])
    img_metadata = []
    for cat in categories:
        for img_path in sorted(glob.glob(f"{os.path.join(base_path, cat)}/*")):
            if os.path.basename(img_path).split(".")[1] == "jpg":
                img_metadata.append(img_path)
    out = []
    with _GlobalSeed():
        for query_name in img_metadata:
            class_sample = categories.index(query_name.split("/")[-2]) + 760
            support_names = []
            while True:
                support_name = np.random.choice(range(1, 11), 1, replace=False)[0]
                support_name = os.path.join(os.path.dirname(query_name), str(support_name))
                support_name += ".jpg"
                if query_name != support_name:
                    support_names.append(support_name)
                if len(support_names) == shot:
                    break
            out.append((query_name, support_names, class_sample))
    return out


def _fss_id(path: str) -> str:
    return f"{path.split('/')[-2]}/{os.path.basename(path).split('.')[0]}"


def _coco_pickle_form(fold: int) -> dict:
    """The shipped JSON back in the pickle's form (all 80 keys, file names)."""
    data = json.loads((SHIPPED / f"coco/val/fold{fold}.json").read_text())["classes"]
    out = {c: [] for c in range(80)}
    for k, ids in data.items():
        out[int(k)] = [f"val2014/COCO_val2014_{i:012d}.jpg" for i in ids]
    return out


def _as_tuples(eps):
    return [(e.query, list(e.supports), e.hsnet_class) for e in eps]


# ---- the shipped lists ---------------------------------------------------------------------


def test_shipped_lists_have_hsnet_sizes():
    assert [len(hsnet.read_pascal(f)) for f in range(4)] == [346, 451, 725, 346]
    assert len(hsnet.read_fss()) == 240
    for f in range(4):
        classwise = hsnet.read_coco(f)
        assert sorted(classwise) == [f + 4 * v for v in range(20)]
    totals = [sum(map(len, hsnet.read_coco(f).values())) for f in range(4)]
    assert totals == [35783, 17912, 14563, 14315]  # entries in the official pickles


@pytest.mark.parametrize("fold,shots", [(0, 1), (1, 1), (2, 1), (3, 1), (0, 5)])
def test_pascal_episodes_equal_the_official_sampler(fold, shots):
    ours = hsnet.pascal_episodes(fold, shots)
    ref = reference_pascal(SHIPPED / f"pascal/val/fold{fold}.txt", shots)
    assert len(ours) == 1000
    assert _as_tuples(ours) == ref
    assert all(e.class_id == e.hsnet_class + 1 for e in ours)
    assert {e.class_id for e in ours} == set(range(5 * fold + 1, 5 * fold + 6))


@pytest.mark.parametrize("fold,shots", [(0, 1), (1, 1), (2, 1), (3, 1), (2, 5)])
def test_coco_episodes_equal_the_official_sampler(fold, shots):
    ours = hsnet.coco_episodes(fold, shots)
    ref = reference_coco(_coco_pickle_form(fold), fold, shots)
    as_names = [
        (f"val2014/{e.query}.jpg", [f"val2014/{s}.jpg" for s in e.supports], e.hsnet_class)
        for e in ours
    ]
    assert as_names == ref
    assert all(e.class_id == e.hsnet_class + 1 for e in ours)


@pytest.mark.parametrize("shots", [1, 5])
def test_fss_episodes_equal_the_official_sampler(tmp_path, shots):
    # The full FSS-1000 test split as empty files: 240 classes x {1..10}.{jpg,png}.
    categories = hsnet.read_fss()
    for cat in categories:
        (tmp_path / cat).mkdir()
        for k in range(1, 11):
            (tmp_path / cat / f"{k}.jpg").touch()
            (tmp_path / cat / f"{k}.png").touch()
    ref = reference_fss(str(tmp_path), SHIPPED / "fss/test.txt", shots)
    ids = [f"{c}/{k}" for c in categories for k in range(1, 11)]
    class_names = sorted([*categories, "aaa_not_a_test_class"])
    ours = hsnet.fss_episodes(ids[::-1], class_names, shots)  # id order does not matter
    assert len(ours) == 2400
    assert [(e.query, list(e.supports), e.hsnet_class) for e in ours] == [
        (_fss_id(q), [_fss_id(s) for s in sup], c) for q, sup, c in ref
    ]
    assert all(class_names[e.class_id - 1] == e.query.split("/")[0] for e in ours)
    # query order within a class follows sorted file names
    assert [e.query for e in ours[:3]] == [f"{categories[0]}/{k}" for k in (1, 10, 2)]


def test_sampler_errors(tmp_path):
    (tmp_path / "pascal/val").mkdir(parents=True)
    (tmp_path / "pascal/val/fold0.txt").write_text("2007_000033__01\n")
    with pytest.raises(ValueError, match="only image of its pool is the query"):
        hsnet.pascal_episodes(0, 1, root=tmp_path)
    (tmp_path / "pascal/val/fold1.txt").write_text("2007_000033_01\n")
    with pytest.raises(ValueError, match=r"fold1.txt:1: expected"):
        hsnet.read_pascal(1, tmp_path)
    with pytest.raises(FileNotFoundError, match="fold2.txt not found"):
        hsnet.read_pascal(2, tmp_path)
    with pytest.raises(ValueError, match="no image in this build"):
        hsnet.fss_episodes(["accordion/1"], ["accordion"], 1)
    ids = [f"{c}/{k}" for c in hsnet.read_fss() for k in range(1, 11)]
    with pytest.raises(ValueError, match="2401 FSS-1000 evaluation episodes"):
        hsnet.fss_episodes(ids, hsnet.read_fss(), 1, 2401)
    with pytest.raises(ValueError, match="protocol='jaxvrp'"):
        hsnet.episodes_of("procedural", 0, 1, 10)


def test_resolve_maps_ids_to_records(caplog):
    eps = hsnet.coco_episodes(1, 2, 50)
    names = sorted({i for e in eps for i in (e.query, *e.supports)})
    ids = {n: 3 * i for i, n in enumerate(names)}
    records = {e.class_id: np.array([ids[e.query]]) for e in eps}
    fixed = hsnet.resolve(eps, ids, records)
    assert [(c, q, s.tolist()) for c, q, s in fixed] == [
        (e.class_id, ids[e.query], [ids[s] for s in e.supports]) for e in eps
    ]
    assert "have no pixel of the class" in caplog.text  # supports not in `records`
    del ids[eps[7].supports[0]]
    with pytest.raises(ValueError, match=r"1 images of HSNet's episode list are not in"):
        hsnet.resolve(eps, ids, records)


def test_resized_mask_is_torch_nearest():
    rng = np.random.default_rng(0)
    for h, w, s in [(40, 60, 28), (333, 500, 400), (375, 500, 512), (7, 9, 18), (16, 16, 16)]:
        mask = rng.integers(0, 256, (h, w), dtype=np.uint8)
        ref = F.interpolate(torch.from_numpy(mask)[None, None].float(), (s, s), mode="nearest")
        np.testing.assert_array_equal(hsnet.resized_mask(mask, s), ref[0, 0].numpy())


# ---- configs ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vrp_sam", "prosam", "hsnet", "samic", "gp_sam", "persam"])
def test_config_defaults(name):
    import importlib

    module = importlib.import_module(f"configs.{name}")
    for dataset, protocol in [
        ("pascal5i", "hsnet"),
        ("coco20i", "hsnet"),
        ("fss1000", "hsnet"),
        ("coco2pascal", "jaxvrp"),
        ("procedural", "jaxvrp"),
    ]:
        c = module.get_config(f"dataset={dataset}")
        assert c.data.protocol == protocol, (name, dataset)
        assert c.data.num_eval_episodes == (2400 if dataset == "fss1000" else 1000)
    assert module.get_config("runlocal").data.protocol == "jaxvrp"
    assert configs.default_protocol("coco20i") == "hsnet"


def test_hsnet_protocol_refused_where_hsnet_has_no_list():
    from configs import vrp_sam

    c = vrp_sam.get_config("dataset=coco2pascal")
    c.data.protocol = "hsnet"
    with pytest.raises(ValueError, match="set data.protocol='jaxvrp'"):
        datasets.protocol(c)
    c.data.protocol = "HSNet"
    with pytest.raises(ValueError, match="data.protocol must be one of"):
        datasets.protocol(c)


# ---- metrics -------------------------------------------------------------------------------


def reference_hsnet_metrics(preds, gts, ignores, class_ids, fold_classes, nclass):
    """`Evaluator.classify_prediction` then `AverageMeter.update` / `compute_iou` (CPU)."""
    inter_buf = torch.zeros([2, nclass]).float()
    union_buf = torch.zeros([2, nclass]).float()
    ones = torch.ones_like(union_buf)
    for pred, gt, ign, c in zip(preds, gts, ignores, class_ids, strict=True):
        pred_mask = torch.tensor(pred, dtype=torch.float32)[None]
        gt_mask = torch.tensor(gt, dtype=torch.float32)[None]
        query_ignore_idx = torch.tensor(ign, dtype=torch.float32)[None] * 255
        gt_mask = gt_mask + query_ignore_idx
        pred_mask[gt_mask == 255] = 255
        area_inter, area_pred, area_gt = [], [], []
        for _pred, _gt in zip(pred_mask, gt_mask, strict=True):
            _inter = _pred[_pred == _gt]
            if _inter.size(0) == 0:
                area_inter.append(torch.tensor([0, 0]))
            else:
                area_inter.append(torch.histc(_inter, bins=2, min=0, max=1))
            area_pred.append(torch.histc(_pred, bins=2, min=0, max=1))
            area_gt.append(torch.histc(_gt, bins=2, min=0, max=1))
        area_inter = torch.stack(area_inter).t()
        area_union = torch.stack(area_pred).t() + torch.stack(area_gt).t() - area_inter
        inter_buf.index_add_(1, torch.tensor([c]), area_inter.float())
        union_buf.index_add_(1, torch.tensor([c]), area_union.float())
    interest = torch.tensor(fold_classes)
    iou = inter_buf / torch.max(torch.stack([union_buf, ones]), dim=0)[0]
    iou = iou.index_select(1, interest)
    miou = iou[1].mean()
    fb_iou = (
        inter_buf.index_select(1, interest).sum(dim=1)
        / union_buf.index_select(1, interest).sum(dim=1)
    ).mean()
    return float(miou), float(fb_iou), iou[1].tolist()


def _meter(preds, gts, ignores, class_ids):
    m = metrics.SegmentationMeter()
    m.update(np.stack(preds), np.stack(gts), np.array(class_ids), ignore=np.stack(ignores))
    return m


def test_hsnet_metrics_by_hand():
    p = np.array([[1, 1, 0], [0, 0, 0]])
    g = np.array([[1, 0, 0], [1, 0, 0]])
    ign = np.array([[0, 0, 0], [0, 0, 1]])
    empty = np.zeros((2, 3), int)
    # class 1: one episode (tp 1, fp 1, fn 1, tn 2 with one pixel ignored) -> IoU 1/3;
    # class 2: pred and target empty (union 0) -> HSNet's IoU 0 (jaxvrp's own meter: 1);
    # class 3: never sampled -> 0.
    m = _meter([p, empty], [g, empty], [ign, empty], [1, 2])
    got = metrics.hsnet_metrics(m.counts, [1, 2, 3])
    assert got["per_class_iou"] == {1: pytest.approx(1 / 3), 2: 0.0, 3: 0.0}
    assert got["miou"] == pytest.approx((1 / 3) / 3)
    # background: inter 2 + 6, union 4 + 6; foreground: inter 1 + 0, union 3 + 0
    assert got["fb_iou"] == pytest.approx((8 / 10 + 1 / 3) / 2)
    assert m.result()["per_class_iou"][2] == 1.0  # the jaxvrp protocol differs here
    ref = reference_hsnet_metrics([p, empty], [g, empty], [ign, empty], [1, 2], [1, 2, 3], 4)
    assert (got["miou"], got["fb_iou"]) == pytest.approx(ref[:2])
    # no foreground anywhere: HSNet's FB-IoU is 0 / 0
    m = _meter([empty], [empty], [empty], [2])
    assert np.isnan(metrics.hsnet_metrics(m.counts, [1, 2])["fb_iou"])
    with pytest.raises(ValueError, match="class_ids is empty"):
        metrics.hsnet_metrics(m.counts, [])


def test_hsnet_metrics_match_the_official_meter_on_random_episodes():
    rng = np.random.default_rng(1)
    fold, n = [3, 7, 11, 15, 19], 40
    classes = rng.choice(fold[:4], n).tolist()  # class 19 never sampled
    preds = [rng.random((9, 13)) < rng.random() for _ in range(n)]
    gts = [rng.random((9, 13)) < rng.random() * 0.3 for _ in range(n)]
    igns = [(rng.random((9, 13)) < 0.1) & ~g for g in gts]  # HSNet asserts ignore ∩ gt = ∅
    got = metrics.hsnet_metrics(_meter(preds, gts, igns, classes).counts, fold)
    miou, fb_iou, per_class = reference_hsnet_metrics(preds, gts, igns, classes, fold, 20)
    assert got["miou"] == pytest.approx(miou, rel=1e-6)
    assert got["fb_iou"] == pytest.approx(fb_iou, rel=1e-6)
    assert list(got["per_class_iou"].values()) == pytest.approx(per_class, rel=1e-6)
    assert got["per_class_iou"][19] == 0.0


# ---- generated trees named after the real lists --------------------------------------------


def _pascal_tree(root: Path):
    """A VOC tree of real ids from HSNet's fold-0 list: the first 2 lines of each class,
    in file order (written as the override fold0.txt), masks of varying sizes with a 255
    border; two train images of other classes."""
    lines = (SHIPPED / "pascal/val/fold0.txt").read_text().split("\n")[:-1]
    chosen, per_class = [], {}
    for line in lines:
        c = int(line.split("__")[1])
        if per_class.get(c, 0) < 2:
            per_class[c] = per_class.get(c, 0) + 1
            chosen.append(line)
    classes_of: dict[str, list[int]] = {}
    for line in chosen:
        name, c = line.split("__")
        classes_of.setdefault(name, []).append(int(c))
    train = {
        line.split("__")[0]: [int(line.split("__")[1])]
        for line in (SHIPPED / "pascal/val/fold1.txt").read_text().split("\n")[:2]
    }
    voc = root / "manual" / "VOC2012"
    masks = {}
    for k, (name, cs) in enumerate({**classes_of, **train}.items()):
        h, w = 30 + 3 * k, 44 + 2 * k
        mask = np.zeros((h, w), np.uint8)
        for j, c in enumerate(cs):
            mask[4 + 6 * j : 10 + 6 * j, 3 + j : w - 5] = c
        mask[0, :] = 255
        write_jpeg(voc / "JPEGImages" / f"{name}.jpg", k, (h, w))
        write_png(voc / "SegmentationClassAug" / f"{name}.png", mask)
        masks[name] = mask
    (root / "manual" / "splits").mkdir(parents=True)
    (root / "manual" / "splits" / "val.txt").write_text("\n".join(classes_of) + "\n")
    (root / "manual" / "splits" / "train.txt").write_text("\n".join(train) + "\n")
    splits = root / "splits"
    (splits / "pascal" / "val").mkdir(parents=True)
    (splits / "pascal" / "val" / "fold0.txt").write_text("\n".join(chosen) + "\n")
    return masks, splits


@pytest.fixture(scope="module")
def pascal_config(tmp_path_factory):
    from tests import toy_learner

    root = tmp_path_factory.mktemp("pascal_hsnet")
    masks, splits = _pascal_tree(root)
    c = toy_learner.get_config("dataset=pascal5i")
    c.data.data_dir = str(root / "tfds")
    c.data.manual_dir = str(root / "manual")
    c.data.hsnet_splits = str(splits)
    c.data.image_size = 28  # 30..63 px masks: PyTorch's float32 nearest rule matters
    c.data.num_eval_episodes = 13  # past the 10 lines: HSNet's idx % n wraps around
    c.batch_size = 8
    return c, masks, splits


def test_pascal_tree_episodes_and_masks(pascal_config):
    config, masks, splits = pascal_config
    assert config.data.protocol == "hsnet"
    ref = reference_pascal(splits / "pascal/val/fold0.txt", 1, n=13)
    rows = datasets.eval_episode_list(config)
    assert [(r["query"], r["supports"], r["class"] - 1) for r in rows] == ref
    assert rows[0].keys() == {"episode", "query", "supports", "class", "hsnet_class"}
    # the evaluation batches hold exactly these episodes, masks resized as HSNet does
    src = datasets.source(config, "pascal5i", "val")
    name_of = {r: i for i, r in episodes.ClassIndex.build(src).ids.items()}
    seen = []
    for batch in datasets.eval_episodes(config, 0, 1, 8):
        for b in np.flatnonzero(batch["valid"]):
            query, supports, c = ref[int(batch["episode"][b])]
            assert name_of[int(batch["query_record"][b])] == query
            assert int(batch["class_id"][b]) == c + 1
            full = torch.from_numpy(masks[query])[None, None].float()
            resized = F.interpolate(full, (28, 28), mode="nearest")[0, 0].numpy()
            np.testing.assert_array_equal(batch["query_mask"][b], resized == c + 1)
            np.testing.assert_array_equal(batch["query_ignore"][b], resized == 255)
            sup = F.interpolate(
                torch.from_numpy(masks[supports[0]])[None, None].float(), (28, 28), mode="nearest"
            )[0, 0].numpy()
            np.testing.assert_array_equal(batch["support_masks"][b, 0], sup == c + 1)
            seen.append(int(batch["episode"][b]))
    assert sorted(seen) == list(range(13))


def test_evaluator_reports_hsnet_metrics(pascal_config):
    from jaxvrp import evaluate

    config, _, _ = pascal_config
    kept = []
    result = evaluate.evaluate(config, None, on_batch=lambda b, lg: kept.append((b, lg)))
    preds, gts, igns, classes = [], [], [], []
    for batch, logits in kept:
        for b in np.flatnonzero(batch["valid"]):
            preds.append(logits[b] > 0)
            gts.append(batch["query_mask"][b] > 0)
            igns.append(batch["query_ignore"][b])
            classes.append(int(batch["class_id"][b]))
    fold = [1, 2, 3, 4, 5]
    miou, fb_iou, per_class = reference_hsnet_metrics(preds, gts, igns, classes, fold, 21)
    assert result["protocol"] == "hsnet" and result["episodes"] == 13
    assert result["miou"] == pytest.approx(miou, rel=1e-6)
    assert result["fb_iou"] == pytest.approx(fb_iou, rel=1e-6)
    assert list(result["per_class_iou"].values()) == pytest.approx(per_class, rel=1e-6)


def test_list_command_writes_json_lines(pascal_config, tmp_path):
    config, _, splits = pascal_config
    out = tmp_path / "episodes.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "jaxvrp.data.episodes",
        f"--config={ROOT / 'configs' / 'vrp_sam.py'}:dataset=pascal5i",
        f"--config.data.hsnet_splits={splits}",
        "--config.data.num_eval_episodes=13",
        "--config.data.shots=2",
        "--list",
        f"--out={out}",
    ]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ref = reference_pascal(splits / "pascal/val/fold0.txt", 2, n=13)
    assert [(r["query"], r["supports"], r["class"] - 1, r["episode"]) for r in rows] == [
        (q, s, c, i) for i, (q, s, c) in enumerate(ref)
    ]
    assert not list(tmp_path.glob(".*tmp"))


def _fss_tree(root: Path):
    """fewshot_data/<class>/{1..10}.{jpg,png} for HSNet's first 3 test classes (sorted)
    plus one train and one val class; the override test.txt lists the 3 (unsorted)."""
    test = hsnet.read_fss()[:3]
    other = {"train": ["zebra_fish"], "val": ["ab_wheel"]}
    data = root / "manual" / "fewshot_data"
    seed = 0
    for name in [*test, *other["train"], *other["val"]]:
        for k in range(1, 11):
            seed += 1
            write_jpeg(data / name / f"{k}.jpg", seed, (12, 14))
            grey = np.zeros((12, 14), np.uint8)
            grey[2 : 8 + k % 3, 3:11] = 255
            write_png(data / name / f"{k}.png", grey)
    splits = root / "manual" / "splits"
    splits.mkdir(parents=True)
    (splits / "test.txt").write_text("\n".join(test) + "\n")
    for s, names in other.items():
        (splits / f"{s}.txt").write_text("\n".join(names) + "\n")
    ours = root / "hsnet_splits"
    (ours / "fss").mkdir(parents=True)
    (ours / "fss" / "test.txt").write_text("\n".join(test[::-1]) + "\n")
    return data, ours


def test_fss_tree_episodes(tmp_path):
    from configs import vrp_sam

    data, ours = _fss_tree(tmp_path)
    c = vrp_sam.get_config("dataset=fss1000")
    c.data.data_dir = str(tmp_path / "tfds")
    c.data.manual_dir = str(tmp_path / "manual")
    c.data.hsnet_splits = str(ours)
    c.data.image_size = 16
    with pytest.raises(ValueError, match=r"2400 FSS-1000 evaluation episodes .* has 30"):
        datasets.eval_episode_list(c)
    c.data.num_eval_episodes = 30
    ref = reference_fss(str(data), ours / "fss" / "test.txt", 1)
    rows = datasets.eval_episode_list(c)
    assert [(r["query"], r["supports"], r["hsnet_class"]) for r in rows] == [
        (_fss_id(q), [_fss_id(s) for s in sup], k) for q, sup, k in ref
    ]
    names = datasets.fss_metadata(c)["class_names"]
    assert all(names[r["class"] - 1] == r["query"].split("/")[0] for r in rows)
    test_classes = datasets.plan(c)[1][2]
    assert sorted({r["class"] for r in rows}) == test_classes
    src = datasets.source(c, "fss1000", "test")
    name_of = {r: i for i, r in episodes.ClassIndex.build(src).ids.items()}
    got = []
    for batch in datasets.eval_episodes(c, 0, 1, 8):
        for b in np.flatnonzero(batch["valid"]):
            got.append((name_of[int(batch["query_record"][b])], int(batch["class_id"][b])))
    assert got == [(r["query"], r["class"]) for r in rows]


def test_list_under_the_jaxvrp_protocol_matches_the_evaluated_episodes(tmp_path):
    from configs import vrp_sam

    c = vrp_sam.get_config("runlocal")  # procedural: the jaxvrp protocol
    c.data.data_dir = str(tmp_path)
    assert c.data.protocol == "jaxvrp"
    rows = datasets.eval_episode_list(c)
    assert [r["episode"] for r in rows] == list(range(8)) and "hsnet_class" not in rows[0]
    src = datasets.source(c, "procedural", "test")
    name_of = {r: i for i, r in episodes.ClassIndex.build(src).ids.items()}
    got = []
    for batch in datasets.eval_episodes(c, 0, 1, 4):
        for b in np.flatnonzero(batch["valid"]):
            got.append((name_of[int(batch["query_record"][b])], int(batch["class_id"][b])))
    assert got == [(r["query"], r["class"]) for r in rows]
    assert all(r["query"] not in r["supports"] for r in rows)
