"""Run a config's ablation sweep: `python -m jaxvrp.sweep --config configs/X.py:ARG --sweep NAME
--workdir DIR [--launcher local|slurm|tpu|print] [--vmap KEY=v1,v2,...]...` (`docs/sweeps.md`).

`sweep_NAME(add)` of the config file lists the grid: each `add(**{"a.b": value, ...})` is
a point, trained (if the learner is trainable) and evaluated in `DIR/<point name>` through
the normal `jaxvrp.train.train` and `jaxvrp.evaluate.evaluate`. `--vmap KEY=v1,v2` (numbers only:
`jaxvrp.stacked.VMAP_KEYS`) multiplies every point into members trained together as one
stacked train state (`jaxvrp.stacked`), sharing the batch and the frozen forward; `--vmap
KEY` alone turns the grid's own values of KEY into members (points that differ only in
vmapped keys become one point). At the
end `DIR/results.{md,csv,json}` hold one row per point, each metric as mean ± std over the
seeds, folds as columns plus their mean, and `DIR/results.png` mIoU against the swept value.

Point directories: for each override in order, the key's last component (the full dotted
key when two keys of the sweep share it), "=", the value; joined by "_"; characters other
than letters, digits and `._+=-` become "-". `data.fold=0, data.annotation=point` ->
`fold=0_annotation=point`; no override -> `base`. A finished point (one with
`eval/results.json`) is skipped; an interrupted one resumes from its checkpoint.
"""

import csv
import hashlib
import importlib.util
import io
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from jaxvrp import configs, paths

LAUNCHERS = ("local", "slurm", "tpu", "print")
_SAFE = re.compile(r"[^A-Za-z0-9._+=\-]")


# ---------------------------------------------------------------------------- the grid


def load_module(config_file: str):
    """The config file's module (its `get_config` and `sweep_*`), imported from its path
    (`configs/X.py`, with or without `:ARG`)."""
    path = Path(config_file.split(":", 1)[0])
    if not path.exists():
        raise FileNotFoundError(f"no config file {path}")
    name = "_jaxvrp_sweep_" + re.sub(r"\W", "_", str(path.resolve()))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sweep_names(module) -> list[str]:
    return sorted(n[len("sweep_") :] for n in dir(module) if n.startswith("sweep_"))


def expand(module, sweep: str) -> list[dict[str, Any]]:
    """The points of `sweep_<sweep>(add)`: one dict of overrides ("a.b" keys) per `add`."""
    fn = getattr(module, f"sweep_{sweep}", None)
    if fn is None:
        raise ValueError(f"no sweep_{sweep} in {module.__file__}; known: {sweep_names(module)}")
    points: list[dict[str, Any]] = []
    fn(lambda **overrides: points.append(dict(overrides)))
    if not points:
        raise ValueError(f"sweep_{sweep} added no point")
    return points


def format_value(value: Any) -> str:
    """How a value appears in names: floats in `g` format (1e-4 -> 0.0001), others as str."""
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def _labels(keys: list[str]) -> dict[str, str]:
    """key -> its last component, or the full key where two keys share a last component."""
    leaf = {k: k.rsplit(".", 1)[-1] for k in keys}
    counts = {}
    for v in leaf.values():
        counts[v] = counts.get(v, 0) + 1
    return {k: (leaf[k] if counts[leaf[k]] == 1 else k) for k in keys}


def label(overrides: dict[str, Any], labels: dict[str, str], sep: str = "_") -> str:
    """`key=value` of every override with the sweep's key labels, joined by `sep`."""
    return sep.join(f"{labels[k]}={format_value(v)}" for k, v in overrides.items())


def point_names(points: list[dict[str, Any]]) -> list[str]:
    """Deterministic, filesystem-safe, unique directory names (module docstring's rule);
    a name longer than 120 characters is cut and ends with a hash of the full name, a
    repeated one gets `-p<index>`."""
    labels = _labels(list(dict.fromkeys(k for p in points for k in p)))
    names = []
    for p in points:
        name = _SAFE.sub("-", label(p, labels)) or "base"
        if len(name) > 120:
            name = name[:110] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
        names.append(name)
    return [n if names.count(n) == 1 else f"{n}-p{i}" for i, n in enumerate(names)]


def point_config(base, overrides: dict[str, Any]):
    """A locked copy of `base` with the point's overrides (an unknown key is an error)."""
    c = base.copy_and_resolve_references()
    with c.unlocked():
        configs.override(c, overrides)
    c.lock()
    return c


class Point:
    """One point of the grid: its index, directory name, overrides, config, and the
    overrides of its vmapped members (`[]`: one plain run)."""

    def __init__(self, index: int, name: str, overrides: dict, config, members=()) -> None:
        self.index, self.name, self.overrides, self.config = index, name, overrides, config
        self.members = [dict(m) for m in members]

    def __repr__(self) -> str:
        return f"Point({self.index}, {self.name!r}, {len(self.members)} members)"


def plan(base, module, sweep: str, vmap_keys=(), vmap: dict | None = None) -> list[Point]:
    """The sweep's points with their configs (each checked by building the learner's
    config, so a bad value fails before anything runs).

    `vmap_keys`: keys of the grid to vmap instead (`--vmap KEY` without values): points
    that differ only in them become the members of one point. `vmap`: {key: values}
    (`--vmap KEY=v1,v2`), whose product multiplies every point's members."""
    from jaxvrp import stacked, trainer

    for k in vmap_keys:
        stacked.check_vmap_key(base, k)
    product = stacked.members(base, vmap) if vmap else [{}]
    groups: dict[str, tuple[dict, list]] = {}
    for o in expand(module, sweep):
        rest = {k: v for k, v in o.items() if k not in vmap_keys}
        grid_member = {k: v for k, v in o.items() if k in vmap_keys}
        group = groups.setdefault(json.dumps(rest, default=str), (rest, []))
        group[1].extend({**grid_member, **m} for m in product)
    rests = [g[0] for g in groups.values()]
    points = []
    for i, ((rest, members), n) in enumerate(zip(groups.values(), point_names(rests), strict=True)):
        c = point_config(base, rest)
        trainer.learner_config(c)
        members = [] if members == [{}] else members
        if members:
            texts = [json.dumps(m, sort_keys=True) for m in members]
            if len(set(texts)) != len(texts):
                raise ValueError(f"point {n}: repeated members {members}")
            if len({tuple(sorted(m)) for m in members}) != 1:
                raise ValueError(f"point {n}: members set different keys: {members}")
            for m in members:  # each member's config must be valid too
                trainer.learner_config(point_config(c, m))
        points.append(Point(i, n, rest, c, members))
    return points


# ---------------------------------------------------------------------------- running


def is_finished(point_dir: Path) -> bool:
    return (paths.as_path(point_dir) / "eval" / "results.json").exists()


def member_label(member: dict[str, Any], labels: dict[str, str]) -> str:
    return label(member, labels, sep=",") if member else ""


def run_point(point: Point, workdir: Path, members=None, *, member_shards: int = 0):
    """Train (if trainable) and evaluate one point in `workdir/<name>`; skipped when its
    results exist. `members`: the vmapped members' overrides (default `point.members`; []
    for one plain run). Writes `config.json`, `point.json` (overrides and members),
    `eval/results.{json,md}` keyed by member label; a vmapped trained point also each
    member's learner checkpoint in `members/<label>/learner`. Returns the results (None
    if skipped or stopped early)."""
    import jax

    from jaxvrp import evaluate, stacked, train, trainer
    from jaxvrp import frozen as frozen_lib

    out = paths.as_path(workdir) / point.name
    if is_finished(out):
        return None
    config = point.config
    learner = trainer.learner_of(config)
    members = point.members if members is None else members
    vmap = bool(members)
    if vmap and config.get("setting") == "semantic":
        raise ValueError(
            "SSPrompt's setting 1 trains through jaxvrp.ssprompt_semantic, which stacks no "
            "members: put the --vmap keys in the grid"
        )
    out.mkdir(parents=True, exist_ok=True)
    members = list(members) or [{}]
    labels = _labels(list(dict.fromkeys(k for m in members for k in m)))
    mconfigs = stacked.member_configs(config, members) if vmap else [config]
    lead = jax.process_index() == 0
    if lead:
        (out / "config.json").write_text(config.to_json_best_effort(indent=1) + "\n")
        meta = {
            "index": point.index,
            "name": point.name,
            "overrides": point.overrides,
            "members": [{"label": member_label(m, labels), "overrides": m} for m in members],
        }
        (out / "point.json").write_text(json.dumps(meta, indent=1) + "\n")
    title = learner.title
    names = [title if not m else f"{title} {member_label(m, labels)}" for m in members]
    results = {}
    if config.get("setting") == "semantic":  # SSPrompt's setting 1: its own trainer
        from jaxvrp import ssprompt_semantic

        result = ssprompt_semantic.train(config, out)
        if "eval" not in result:
            return None  # stopped early (stop_after): not finished
        results[f"{title} (setting 1)"] = result["eval"]
        if lead:
            _write_semantic_results(out, results)
        return results
    if not learner.trainable:
        frozen = frozen_lib.load(config, learner.frozen(trainer.learner_config(config)))
        for name, c in zip(names, mconfigs, strict=True):
            results[name] = evaluate.evaluate(c, None, name=name, frozen=frozen)
    elif not vmap:  # one member: the normal trainer in the point's directory
        train.train(config, out)
        params, step = evaluate.restore_params(config, out / "checkpoints")
        if step < int(config.total_steps):
            return None  # stopped early (stop_after): not finished
        results[names[0]] = evaluate.evaluate(config, params, name=names[0])
    else:
        state, _, frozen = stacked.train(config, members, out, member_shards=member_shards)
        if int(jax.device_get(state.step)[0]) < int(config.total_steps):
            return None  # stopped early (stop_after): not finished
        frozen = jax.device_get(frozen)
        # every member in one compiled call per batch, the frozen forward shared
        results = stacked.evaluate(
            config,
            members,
            jax.device_get(state.params),
            names=names,
            frozen=frozen,
            mode=stacked.stack_mode(config),
        )
        for i, c in enumerate(mconfigs):
            params = stacked.member_params(state.params, i)
            if lead:
                label_dir = _SAFE.sub("-", member_label(members[i], labels))
                train.export_learner(out / "members" / label_dir / "learner", c, params, frozen)
    if lead:
        evaluate.write_results(out, results)
    return results


def _write_semantic_results(out: Path, results: dict[str, dict]) -> None:
    """A setting-1 point's `eval/results.{json,md}` (semantic mIoU and pixel accuracy)."""
    d = out / "eval"
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    lines = ["| method | semantic mIoU | pixel accuracy | images |", "| --- | --- | --- | --- |"]
    for name, r in results.items():
        lines.append(
            f"| {name} | {100 * r['miou']:.1f} | {100 * r['pixel_accuracy']:.1f} | {r['images']} |"
        )
    (d / "results.md").write_text("\n".join(lines) + "\n")


def run_local(points: list[Point], workdir: Path, *, member_shards: int = 0) -> None:
    """Every point in this process, one after another, with a progress bar over points."""
    from tqdm import tqdm

    bar = tqdm(points, desc="sweep", unit="point", file=sys.stderr)
    for p in bar:
        bar.set_postfix_str(p.name)
        run_point(p, workdir, member_shards=member_shards)


# ---------------------------------------------------------------------------- launchers


def point_command(argv_base: list[str], index: int | str) -> str:
    """The command that runs point `index` of the sweep (`argv_base`: this sweep's own
    arguments without --launcher/--point)."""
    return shlex.join(["python", "-m", "jaxvrp.sweep", *argv_base]) + f" --point {index}"


def base_args(
    config_file: str, sweep: str, workdir: str, vmap_specs: list[str], config_overrides: dict
) -> list[str]:
    args = ["--config", config_file, "--sweep", sweep, "--workdir", str(workdir)]
    for spec in vmap_specs:
        args += ["--vmap", spec]
    args += [f"--config.{k}={v}" for k, v in sorted(config_overrides.items())]
    return args


def print_commands(argv_base: list[str], points: list[Point]) -> str:
    """One command per point, then the one that writes the sweep's tables."""
    lines = [point_command(argv_base, p.index) for p in points]
    lines.append(shlex.join(["python", "-m", "jaxvrp.sweep", *argv_base, "--aggregate"]))
    return "\n".join(lines) + "\n"


def _template(name: str) -> str | None:
    path = Path(__file__).resolve().parents[1] / "launch" / name
    return path.read_text() if path.exists() else None


def slurm_script(argv_base: list[str], points: list[Point], workdir: Path) -> str:
    """A SLURM job array from `launch/slurm.sbatch`: its #SBATCH lines, one array task per
    point (`--point $SLURM_ARRAY_TASK_ID`, multi-host like the template); then
    `python -m jaxvrp.sweep ... --aggregate` writes the tables."""
    template = (
        _template("slurm.sbatch") or "#SBATCH --ntasks-per-node=1\n#SBATCH --gpus-per-node=8\n"
    )
    sbatch = [
        line
        for line in template.splitlines()
        if line.startswith("#SBATCH") and "job-name" not in line
    ]
    logs = paths.as_path(workdir) / "logs"
    cmd = point_command(argv_base, '"$SLURM_ARRAY_TASK_ID"').replace(
        "'\"$SLURM_ARRAY_TASK_ID\"'", '"$SLURM_ARRAY_TASK_ID"'
    )
    lines = [
        "#!/usr/bin/env bash",
        f"# {len(points)} points of one jaxvrp sweep, one array task each "
        "(from launch/slurm.sbatch).",
        "#   sbatch --nodes=N " + shlex.quote(str(paths.as_path(workdir) / "sweep.sbatch")),
        *sbatch,
        "#SBATCH --job-name=jaxvrp-sweep",
        f"#SBATCH --array=0-{len(points) - 1}",
        f"#SBATCH --output={logs}/%a.out",
        "set -euo pipefail",
        "# jax.distributed.initialize() reads the coordinator, process count and id from SLURM.",
        "# Points: " + ", ".join(f"{p.index}={p.name}" for p in points),
        f"srun {cmd} --config.distributed=True",
        "",
    ]
    return "\n".join(lines)


def tpu_script(argv_base: list[str], points: list[Point]) -> str:
    """Every point on all workers of a Cloud TPU pod slice, one after another (as
    `launch/tpu_pod.sh`: the repository on each worker, the workdir on shared storage)."""
    lines = [
        "#!/usr/bin/env bash",
        f"# {len(points)} points of one jaxvrp sweep on a TPU pod slice (from launch/tpu_pod.sh).",
        "#   TPU=my-pod ZONE=us-central2-b bash sweep_tpu.sh",
        "set -euo pipefail",
        ': "${TPU:?TPU name}" "${ZONE:?zone}"',
    ]
    for p in points:
        inner = "cd ~/jaxvrp && " + point_command(argv_base, p.index) + " --config.distributed=True"
        lines.append(f"# {p.name}")
        lines.append(
            'gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command '
            + shlex.quote(inner)
        )
    agg = shlex.join(["python", "-m", "jaxvrp.sweep", *argv_base, "--aggregate"])
    lines.append(
        'gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=0 --command '
        + shlex.quote("cd ~/jaxvrp && " + agg)
    )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- results

METRICS = {"miou": "mIoU", "fb_iou": "FB-IoU"}  # of the episodic evaluator's results
# SSPrompt's setting 1 (`jaxvrp.ssprompt_semantic`): semantic mIoU, no FB-IoU
SEMANTIC_METRICS = {"miou": "semantic mIoU", "pixel_accuracy": "pixel accuracy"}


def metrics_of(entries: list[dict]) -> dict[str, str]:
    """The table's metrics: the episodic ones, or setting 1's when every result is one."""
    semantic = bool(entries) and all("fb_iou" not in e["result"] for e in entries)
    return SEMANTIC_METRICS if semantic else METRICS


FOLD = "data.fold"
SEED = "seed"


def collect(workdir: Path) -> list[dict]:
    """Every finished point's member results: [{"point": overrides, "member": overrides,
    "result": {...}}] (points in index order)."""
    rows = []
    metas = []
    for meta_path in paths.as_path(workdir).glob("*/point.json"):
        results_path = meta_path.parent / "eval" / "results.json"
        if results_path.exists():
            metas.append((json.loads(meta_path.read_text()), results_path))
    for meta, results_path in sorted(metas, key=lambda x: x[0]["index"]):
        results = json.loads(results_path.read_text())
        values = list(results.values())
        if len(values) != len(meta["members"]):
            raise ValueError(
                f"{results_path}: {len(values)} results for {len(meta['members'])} members"
            )
        for m, r in zip(meta["members"], values, strict=True):
            rows.append({"point": meta["overrides"], "member": m["overrides"], "result": r})
    return rows


def _mean_std(values: list[float]) -> dict:
    a = np.asarray(values, np.float64)
    std = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    return {"mean": float(a.mean()), "std": std, "n": len(a)}


def aggregate(entries: list[dict]) -> dict:
    """Rows of the sweep's table: entries grouped by their overrides without `data.fold`
    and `seed` (points and members together); in each row, per metric (percent), per fold
    {mean, std, n} over the seeds (sample std, 0 for one seed), and "mean": the mean over
    folds of each seed that has every fold, then its mean ± std over those seeds."""
    rows: dict[str, dict] = {}
    folds: list = []
    names = metrics_of(entries)
    for e in entries:
        keys = {**e["point"], **e["member"]}
        fold = keys.pop(FOLD, None)
        seed = keys.pop(SEED, None)
        if fold not in folds:
            folds.append(fold)
        rid = json.dumps(keys, sort_keys=False)
        row = rows.setdefault(rid, {"keys": keys, "values": {}})
        for metric in names:
            value = 100.0 * float(e["result"][metric])
            row["values"].setdefault(metric, {}).setdefault(fold, {})[seed] = value
    folds_sorted = sorted(folds, key=lambda f: (f is None, f if f is not None else 0))
    out_rows = []
    for row in rows.values():
        cells = {}
        for metric, by_fold in row["values"].items():
            per_fold = {
                f: _mean_std(list(by_fold[f].values())) for f in folds_sorted if f in by_fold
            }
            seeds = set.intersection(*(set(by_fold[f]) for f in by_fold)) if by_fold else set()
            complete = len(by_fold) == len(folds_sorted)
            means = [
                float(np.mean([by_fold[f][s] for f in folds_sorted]))
                for s in sorted(seeds, key=lambda s: (s is None, s if s is not None else 0))
            ]
            cells[metric] = {
                "folds": {("all" if f is None else str(f)): v for f, v in per_fold.items()},
                "mean": _mean_std(means) if (complete and means) else None,
            }
        out_rows.append({"keys": row["keys"], "metrics": cells})
    return {
        "folds": ["all" if f is None else str(f) for f in folds_sorted],
        "metrics": names,
        "rows": out_rows,
    }


def _cell(v: dict | None) -> str:
    if v is None:
        return ""
    return f"{v['mean']:.1f} ± {v['std']:.1f}" if v["n"] > 1 else f"{v['mean']:.1f}"


def _row_keys(table: dict) -> list[str]:
    return list(dict.fromkeys(k for r in table["rows"] for k in r["keys"]))


def markdown(table: dict, title: str = "") -> str:
    """One table per metric: a row per point, a column per fold plus their mean."""
    keys = _row_keys(table)
    labels = _labels(keys)
    folds = table["folds"]
    fold_cols = [f"fold {f}" if f != "all" else "result" for f in folds]
    text = [f"# {title}\n" if title else ""]
    n = {
        r["metrics"]["miou"]["folds"][f]["n"]
        for r in table["rows"]
        for f in r["metrics"]["miou"]["folds"]
    }
    text.append(
        f"Percent; mean ± sample std over {'/'.join(map(str, sorted(n)))} seed(s) "
        "where more than one.\n"
    )
    for metric, name in table.get("metrics", METRICS).items():
        header = [labels[k] for k in keys] + fold_cols + (["mean"] if len(folds) > 1 else [])
        text.append(f"\n## {name}\n")
        text.append("| " + " | ".join(header or ["run"]) + " |")
        text.append("| " + " | ".join(["---"] * max(len(header), 1)) + " |")
        for r in table["rows"]:
            c = r["metrics"][metric]
            cells = [format_value(r["keys"].get(k, "")) for k in keys]
            cells += [_cell(c["folds"].get(f)) for f in folds]
            if len(folds) > 1:
                cells.append(_cell(c["mean"]))
            text.append("| " + " | ".join(cells) + " |")
    return "\n".join(text).strip() + "\n"


def csv_text(table: dict) -> str:
    """One line per (row, metric): the row's keys, the metric, per fold mean, std, n, and the
    fold mean's mean, std, n."""
    keys = _row_keys(table)
    folds = table["folds"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = [*keys, "metric"]
    for f in [*folds, "mean"]:
        header += [f"{f}_mean", f"{f}_std", f"{f}_n"]
    w.writerow(header)
    for r in table["rows"]:
        for metric in table.get("metrics", METRICS):
            c = r["metrics"][metric]
            line = [format_value(r["keys"].get(k, "")) for k in keys] + [metric]
            for v in [*(c["folds"].get(f) for f in folds), c["mean"]]:
                line += ["", "", ""] if v is None else [repr(v["mean"]), repr(v["std"]), v["n"]]
            w.writerow(line)
    return buf.getvalue()


def plot(table: dict, path: Path) -> Path | None:
    """mIoU (the fold mean, or the one fold) against the first swept key, one line per value
    of the other swept keys, error bars = std over seeds. None (and a message) without
    matplotlib or without a swept key."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'jaxvrp[plot]'): no plot", file=sys.stderr)
        return None
    keys = [
        k
        for k in _row_keys(table)
        if len({json.dumps(r["keys"].get(k)) for r in table["rows"]}) > 1
    ]
    if not keys:
        print("nothing varies between the sweep's rows: no plot", file=sys.stderr)
        return None
    x_key, others = keys[0], keys[1:]
    xs = list(dict.fromkeys(format_value(r["keys"].get(x_key)) for r in table["rows"]))
    series: dict[str, list] = {}
    for r in table["rows"]:
        c = r["metrics"]["miou"]
        v = c["mean"] if len(table["folds"]) > 1 else next(iter(c["folds"].values()), None)
        if v is None:
            continue
        name = ", ".join(f"{k}={format_value(r['keys'].get(k))}" for k in others) or "mIoU"
        series.setdefault(name, []).append((xs.index(format_value(r["keys"].get(x_key))), v))
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, pts in series.items():
        pts.sort()
        ax.errorbar(
            [p[0] for p in pts],
            [p[1]["mean"] for p in pts],
            yerr=[p[1]["std"] for p in pts],
            marker="o",
            capsize=3,
            label=name,
        )
    ax.set_xticks(range(len(xs)), xs)
    ax.set_xlabel(x_key)
    ax.set_ylabel(f"{table.get('metrics', METRICS)['miou']} (%)")
    if len(series) > 1 or others:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()  # matplotlib writes local files only: through epath for gs://...
    fig.savefig(buf, format=paths.as_path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    paths.write_atomic(path, buf.getvalue())
    return path


def write_results(workdir: Path, title: str = "") -> dict:
    """`results.{md,csv,json}` (and `results.png`) in `workdir` from its finished points."""
    workdir = paths.as_path(workdir)
    table = aggregate(collect(workdir))
    (workdir / "results.json").write_text(json.dumps(table, indent=1) + "\n")
    (workdir / "results.csv").write_text(csv_text(table))
    (workdir / "results.md").write_text(markdown(table, title))
    plot(table, workdir / "results.png")
    return table


# ---------------------------------------------------------------------------- program


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "learner config file", lock_config=True)
    flags.DEFINE_string("sweep", None, "NAME of the config file's sweep_NAME(add)")
    flags.DEFINE_string("workdir", None, "the sweep's directory (one subdirectory per point)")
    flags.DEFINE_enum("launcher", "local", LAUNCHERS, "run here, or write/print the commands")
    flags.DEFINE_multi_string(
        "vmap",
        [],
        "KEY=v1,v2,...: members trained together in every point; KEY alone: the grid's "
        "values of KEY become members",
    )
    flags.DEFINE_integer("point", None, "run only this point (what the launchers' jobs run)")
    flags.DEFINE_integer("member_shards", 0, "size of the mesh's members axis (0: automatic)")
    flags.DEFINE_bool("aggregate", False, "only write the sweep's results from finished points")


def main(argv) -> None:
    del argv
    from absl import flags
    from ml_collections import config_flags

    f = flags.FLAGS
    config_file = config_flags.get_config_filename(f["config"])
    overrides = config_flags.get_override_values(f["config"])
    base = f.config
    workdir = paths.as_path(f.workdir)
    module = load_module(config_file)
    title = f"sweep_{f.sweep} of {config_file}"
    if f.aggregate:
        write_results(workdir, title)
        print((workdir / "results.md").read_text())
        return
    from jaxvrp import stacked

    argv_base = base_args(config_file, f.sweep, str(workdir), f.vmap, overrides)
    base = with_embedding_cache(base, module, f.sweep, workdir)
    vmap_keys = [v.strip() for v in f.vmap if "=" not in v]
    vmap = stacked.parse_vmap(base, [v for v in f.vmap if "=" in v])
    points = plan(base, module, f.sweep, vmap_keys, vmap)
    if f.launcher == "print":
        print(print_commands(argv_base, points), end="")
        return
    if f.launcher in ("slurm", "tpu"):
        workdir.mkdir(parents=True, exist_ok=True)
        text = (
            slurm_script(argv_base, points, workdir)
            if f.launcher == "slurm"
            else tpu_script(argv_base, points)
        )
        path = workdir / ("sweep.sbatch" if f.launcher == "slurm" else "sweep_tpu.sh")
        path.write_text(text)
        print(f"wrote {path} ({len(points)} points)")
        return
    if base.distributed:  # once for every point; the points' trainers must not do it again
        from jaxvrp import loop

        loop.initialize_distributed(base)
        points = [
            Point(p.index, p.name, p.overrides, _without_distributed(p.config)) for p in points
        ]
    if f.point is not None:
        if not 0 <= f.point < len(points):
            raise ValueError(f"--point {f.point}: the sweep has points 0..{len(points) - 1}")
        run_point(points[f.point], workdir, member_shards=f.member_shards)
        return
    run_local(points, workdir, member_shards=f.member_shards)
    import jax

    if jax.process_index() == 0:
        write_results(workdir, title)
        print((workdir / "results.md").read_text())


def with_embedding_cache(base, module, sweep: str, workdir: Path):
    """`base` with `data.embedding_cache = workdir/embeddings` when unset, so the points share
    the evaluation targets' SAM embeddings (results unchanged, `docs/training.md`) -- unless a
    point changes the frozen models' weights (`frozen.*`), which the cache's name ignores."""
    if base.data.embedding_cache or any(
        k.startswith("frozen.") for p in expand(module, sweep) for k in p
    ):
        return base
    c = base.copy_and_resolve_references()
    with c.unlocked():
        c.data.embedding_cache = str(paths.as_path(workdir) / "embeddings")
    c.lock()
    return c


def _without_distributed(config):
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.distributed = False
    c.lock()
    return c


if __name__ == "__main__":
    from absl import app, flags

    _define_flags()
    flags.mark_flags_as_required(["config", "sweep", "workdir"])
    app.run(main)
