"""Sweeps: grid expansion and names, vmapped members = separate runs (1 and 8 devices), the
shared frozen forward, refused keys, resume, the aggregated tables, the launchers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvrp import stacked, sweep, trainer
from tests import processes

ROOT = Path(__file__).resolve().parents[1]
RUNNER = os.path.join(os.path.dirname(__file__), "sweep_runner.py")
# two members that differ in seed (init, dropout) and learning rate
MEMBERS = [{"seed": 0, "optimizer.lr": 1e-3}, {"seed": 1, "optimizer.lr": 2e-3}]


def _vrp(arg="runlocal"):
    from configs import vrp_sam

    return vrp_sam.get_config(arg)


# ---------------------------------------------------------------------------- the grid


def test_expand_folds_and_labels_into_named_points():
    module = sweep.load_module(str(ROOT / "configs" / "vrp_sam.py") + ":runlocal")
    points = sweep.plan(_vrp(), module, "folds_and_labels")
    assert len(points) == 16
    assert points[0].overrides == {"data.fold": 0, "data.annotation": "point"}
    assert points[0].name == "fold=0_annotation=point"
    assert points[15].name == "fold=3_annotation=mask"
    assert points[5].config.data.fold == 1 and points[5].config.data.annotation == "scribble"
    assert len({p.name for p in points}) == 16
    with pytest.raises(ValueError, match="no sweep_nope.*known: .*folds_and_labels"):
        sweep.expand(module, "nope")


def test_point_name_rule():
    names = sweep.point_names(
        [
            {"optimizer.lr": 1e-4, "model.mode": "prompt_encoder,mask_decoder"},
            {"optimizer.lr": 2.5e-5, "model.mode": "a b/c"},
            {},
            {},
        ]
    )
    assert names[0] == "lr=0.0001_mode=prompt_encoder-mask_decoder"
    assert names[1] == "lr=2.5e-05_mode=a-b-c"
    assert names[2:] == ["base-p2", "base-p3"]  # repeated names get their index
    # two keys of the sweep ending alike: both named in full
    assert sweep.point_names([{"data.seed": 1, "seed": 2}]) == ["data.seed=1_seed=2"]
    assert len(sweep.point_names([{"model.x": "y" * 300}])[0]) == 119


def test_every_config_sweep_expands_into_valid_configs():
    import importlib

    seen = set()
    for name in ("vrp_sam", "prosam", "gp_sam", "oracle_box"):
        module = sweep.load_module(str(ROOT / "configs" / f"{name}.py"))
        base = importlib.import_module(f"configs.{name}").get_config("runlocal")
        for s in sweep.sweep_names(module):
            points = sweep.plan(base, module, s)  # builds every point's learner config
            assert points and len({p.name for p in points}) == len(points)
            seen.add(f"{name}:{s}")
    assert seen == {
        "vrp_sam:folds_and_labels",
        "vrp_sam:shots",
        "vrp_sam:num_queries",
        "vrp_sam:lr_seeds",
        "prosam:distribution",
        "prosam:inference",
        "prosam:nu",
        "gp_sam:modes",
        "oracle_box:folds",
    }
    module = sweep.load_module(str(ROOT / "configs" / "prosam.py"))
    names = [p.name for p in sweep.plan(_prosam(), module, "distribution")]
    assert names == ["distribution=student_t", "distribution=gaussian"]


def test_grid_keys_become_members():
    module = sweep.load_module(str(ROOT / "configs" / "vrp_sam.py"))
    assert len(sweep.plan(_vrp(), module, "lr_seeds")) == 6  # a grid of six runs
    (one,) = sweep.plan(_vrp(), module, "lr_seeds", vmap_keys=("seed", "optimizer.lr"))
    assert one.name == "base" and len(one.members) == 6
    assert one.members[4] == {"optimizer.lr": 2e-3, "seed": 1}
    two = sweep.plan(_vrp(), module, "lr_seeds", vmap_keys=("seed",))
    assert [p.name for p in two] == ["lr=0.001", "lr=0.002"]
    assert [m["seed"] for m in two[1].members] == [0, 1, 2]
    assert two[1].config.optimizer.lr == 2e-3
    # values on the command line multiply the grid's members
    (both,) = sweep.plan(
        _vrp(), module, "lr_seeds", ("seed", "optimizer.lr"), {"optimizer.b1": [0.8, 0.9]}
    )
    assert len(both.members) == 12 and both.members[1] == {
        "optimizer.lr": 1e-3,
        "seed": 0,
        "optimizer.b1": 0.9,
    }
    with pytest.raises(stacked.VmapKeyError, match="data.fold"):
        sweep.plan(_vrp(), module, "folds_and_labels", vmap_keys=("data.fold",))


def _prosam():
    from configs import prosam

    return prosam.get_config("runlocal")


# ---------------------------------------------------------------------------- vmap rules


@pytest.mark.parametrize(
    "key, why",
    [
        ("model.num_queries", "sets parameter shapes"),
        ("model.backbone", "another frozen backbone"),
        ("model.dropout", "Python control flow"),
        ("learner", "another learner"),
        ("batch_size", "shape of the batch"),
        ("data.fold", "changes the data every member shares"),
        ("data.seed", "one data stream"),
        ("epochs", "lockstep"),
        ("model.nu", "not one of vrp_sam's model keys"),
        ("frozen.seed", "frozen models"),
    ],
)
def test_refused_vmap_keys_name_the_key_and_why(key, why):
    with pytest.raises(stacked.VmapKeyError, match=rf"--vmap {key}: cannot be vmapped \(.*{why}"):
        stacked.parse_vmap(_vrp(), [f"{key}=1,2"])


def test_vmap_values_and_members():
    vmap = stacked.parse_vmap(_vrp(), ["seed=0,1,2", "optimizer.lr=1e-4,2e-4"])
    assert vmap == {"seed": [0, 1, 2], "optimizer.lr": [1e-4, 2e-4]}
    members = stacked.members(_vrp(), vmap)
    assert len(members) == 6 and members[1] == {"seed": 0, "optimizer.lr": 2e-4}
    assert stacked.parse_vmap(_prosam(), ["model.nu=1,5"]) == {"model.nu": [1.0, 5.0]}
    with pytest.raises(ValueError, match="values must be int"):
        stacked.parse_vmap(_vrp(), ["seed=0,x"])
    with pytest.raises(ValueError, match="expected KEY=v1,v2"):
        stacked.parse_vmap(_vrp(), ["seed"])
    c = stacked.member_configs(_vrp(), members)[4]
    assert (c.seed, c.optimizer.lr, c.data.seed) == (2, 1e-4, 321)  # the base's data seed


def test_data_seed_defaults_to_seed_and_is_independent():
    from jaxvrp import configs

    c = _vrp()
    assert c.data.seed == -1 and configs.data_seed(c) == 321
    c.seed = 5
    assert configs.data_seed(c) == 5
    c.data.seed = 7
    assert (c.seed, configs.data_seed(c)) == (5, 7)


def test_mesh_shape_rule():
    assert stacked.mesh_shape(6, 8, 8) == (1, 8)  # the batch fills the devices: data only
    assert stacked.mesh_shape(4, 2, 8) == (4, 2)  # members take the devices the batch can't
    assert stacked.mesh_shape(2, 4, 8) == (2, 4)
    assert stacked.mesh_shape(4, 8, 8, member_shards=2) == (2, 4)
    with pytest.raises(ValueError, match="3 members cannot be split over 4 member shards"):
        stacked.mesh_shape(3, 2, 8)


@pytest.mark.parametrize("schedule", ["cosine", "cosine_restarts", "constant"])
def test_optimizer_from_values_equals_make_optimizer(schedule):
    c = _prosam() if schedule == "cosine_restarts" else _vrp()
    c.optimizer.schedule = schedule
    c.optimizer.weight_decay = 0.05
    reference = trainer.make_optimizer(c, 7)
    hp = {k: jnp.float32(v) for k, v in trainer.optimizer_hparams(c).items()}
    traced = jax.jit(lambda g, s, p, h: trainer.make_optimizer_from(c, 7, h).update(g, s, p))
    p_ref = p_new = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)}
    s_ref, s_new = reference.init(p_ref), trainer.make_optimizer_from(c, 7, hp).init(p_new)
    for i in range(6):  # across a restart and to the end of the cosine
        u, s_ref = jax.jit(reference.update)({"w": jnp.sin(3 * p_ref["w"] + i)}, s_ref, p_ref)
        p_ref = {"w": p_ref["w"] + u["w"]}
        u, s_new = traced({"w": jnp.sin(3 * p_new["w"] + i)}, s_new, p_new, hp)
        p_new = {"w": p_new["w"] + u["w"]}
    np.testing.assert_array_equal(p_new["w"], p_ref["w"])  # bitwise
    assert float(jnp.abs(p_ref["w"] - jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)).max()) > 1e-4


def test_frozen_forward_runs_once_for_all_members():
    from jaxvrp import frozen as frozen_lib
    from jaxvrp import train

    c = _vrp()
    lconfig = trainer.learner_config(c)
    shapes = frozen_lib.param_shapes(trainer.learner_of(c).frozen(lconfig))
    members = stacked.members(c, {"seed": [0, 1, 2]})
    convs = stacked.frozen_forward_is_shared(c, members, train.batch_spec(c), shapes)
    # SAM's patch embedding and the backbone's stem on the query and the reference images
    assert len(convs["single"]) >= 2
    assert convs["stacked"] == convs["single"]  # same shapes: no members axis, not repeated
    b = c.batch_size
    assert all(s[0] in (b, b * c.data.shots) for s in convs["stacked"]), convs


# ---------------------------------------------------------------------------- equal runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """3 steps of batch 8, two members. 1 device: the separate runs (`jaxvrp.train`), the
    stacked sweep point ("map" mode: trained, evaluated, exported) and the stack in "vmap"
    mode. 8 devices: the separate runs and the stacked members ("map") on a 1 x 8
    (members x data) mesh, without and with precomputed SAM embeddings."""
    tmp = tmp_path_factory.mktemp("sweep")
    common = [f"data.data_dir={tmp / 'tfds'}", "steps_per_epoch=3", "batch_size=8"]
    members = json.dumps(MEMBERS)
    processes.build_procedural(tmp / "tfds")  # once, before the two jobs that share it
    commands, outs = [], []
    for modes, devices, extra in (
        ("separate,sweep,stacked-vmap", 1, []),
        ("separate,stacked,stacked-store", 8, ["member_shards=1"]),
    ):
        out = tmp / f"{devices}.npz"
        cmd = [sys.executable, RUNNER, modes, str(tmp / str(devices)), str(out), str(devices)]
        commands.append([*cmd, "vrp_sam", members, *common, *extra])
        outs.append(out)
    processes.run_together(commands, timeout=1800)
    results = [dict(np.load(out)) for out in outs]
    one = {f"1dev/{k}": v for k, v in results[0].items()}
    eight = {f"8dev/{k}": v for k, v in results[1].items()}
    return tmp, {**one, **eight}


def _leaf_errors(a: dict, b: dict) -> dict[str, float]:
    """{leaf: ||a - b|| / ||b||} (L2 over the leaf, float64): the measure of "params within
    1e-6 relative", per leaf so that a small leaf's error is not hidden by a large one."""
    assert a.keys() == b.keys() and len(b) > 20
    out = {}
    for k in b:
        x, y = np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)
        out[k] = float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30))
    return out


def _member(arrays, run, i):
    prefix = f"{run}/{i}/"
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def _errors(arrays, got, ref):
    """Per member: (max over leaves of the relative L2 error, relative L2 over all params,
    max relative loss difference)."""
    out = []
    for i in range(len(MEMBERS)):
        g, r = _member(arrays, got, i), _member(arrays, ref, i)
        lg, lr = g.pop("losses"), r.pop("losses")
        assert len(lr) == len(lg) == 3
        leaves = _leaf_errors(g, r)
        num = sum(np.sum((np.float64(g[k]) - r[k]) ** 2) for k in r)
        den = sum(np.sum(np.float64(r[k]) ** 2) for k in r)
        out.append(
            (
                max(leaves.values()),
                float(np.sqrt(num / den)),
                float(np.max(np.abs(lg - lr) / np.abs(lr))),
            )
        )
    return out


def _member_distance(arrays):
    a, b = _member(arrays, "1dev/separate", 0), _member(arrays, "1dev/separate", 1)
    del a["losses"], b["losses"]
    num = sum(np.sum((np.float64(a[k]) - b[k]) ** 2) for k in b)
    return float(np.sqrt(num / sum(np.sum(np.float64(b[k]) ** 2) for k in b)))


# "map" mode: each member runs its separate run's operations, compiled apart; the params
# match to the 1e-6 relative L2 over all params (measured: 5e-8, 7e-8 on 1 device;
# bitwise on 8).
# Not per leaf: leaves whose true gradient is zero (attention key biases, to which softmax
# is invariant) are rounding noise that Adam scales to ~lr in every run (docs/sweeps.md).
PARAMS_RTOL = 1e-6


@pytest.mark.parametrize("devices, run", [(1, "sweep"), (8, "stacked")])
def test_members_equal_separate_runs(trained, devices, run):
    _, arrays = trained
    assert _member_distance(arrays) > 1e-3  # the members differ: seeds and rates are not ignored
    errors = _errors(arrays, f"{devices}dev/{run}", f"{devices}dev/separate")
    print(f"member max leaf rel L2, rel L2, max loss rel diff ({devices} devices):", errors)
    for _, whole, losses in errors:
        assert whole <= PARAMS_RTOL and losses <= 1e-6


def test_stacked_members_train_on_precomputed_embeddings(trained):
    """The stack reads `jaxvrp.precompute`'s store (it ran the pass itself) and trains the
    same members: tolerances of tests/test_precompute.py's single-run comparison (the
    encoder compiled apart from the step rounds differently in the last bit)."""
    tmp, arrays = trained
    written = list((tmp / "8" / "stacked-store" / "features").glob("sam_procedural_train_*/*.npy"))
    assert len(written) > 8
    for i in range(len(MEMBERS)):
        got, ref = _member(arrays, "8dev/stacked-store", i), _member(arrays, "8dev/stacked", i)
        assert got.keys() == ref.keys() and len(ref) > 20
        np.testing.assert_allclose(got.pop("losses"), ref.pop("losses"), rtol=1e-6, atol=0)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=5e-6, err_msg=k)


def test_vmap_mode_is_close_to_separate_runs(trained):
    """ "vmap" batches the members into each operation: float32 sums in another order
    (~4e-7 relative in the gradients), which Adam's normalised update turns into up to ~lr
    on params whose true gradient is zero (attention key biases: softmax is invariant to
    them, so they are rounding noise in every run). Whole params stay close; the losses too."""
    _, arrays = trained
    errors = _errors(arrays, "1dev/stacked-vmap", "1dev/separate")
    print("vmap mode: member max leaf rel L2, rel L2, max loss rel diff:", errors)
    for _, whole, losses in errors:
        assert whole <= 1e-4 and losses <= 1e-6


def test_stack_evaluation_compiles_once_and_equals_each_member_alone(trained, monkeypatch):
    from flax import traverse_util

    from jaxvrp import evaluate

    tmp, arrays = trained
    c = _vrp()
    c.data.data_dir, c.batch_size = str(tmp / "tfds"), 8
    params = []
    for i in range(len(MEMBERS)):
        flat = _member(arrays, "1dev/sweep", i)
        del flat["losses"]
        params.append(traverse_util.unflatten_dict(flat, sep="/"))
    traces = []
    real = stacked.map_members
    monkeypatch.setattr(stacked, "map_members", lambda *a, **k: traces.append(1) or real(*a, **k))
    got = stacked.evaluate(c, MEMBERS, stacked._stack(params), names=["a", "b"])
    assert traces == [1]  # one predict function for the whole stack
    for name, mc, p in zip(("a", "b"), stacked.member_configs(c, MEMBERS), params, strict=True):
        alone = evaluate.evaluate(mc, p)
        assert got[name] == alone and alone["episodes"] == 8
    assert got["a"] != got["b"]
    # on precomputed SAM embeddings (the stack runs the pass on the evaluation split)
    c.data.feature_cache, c.data.precompute = str(tmp / "eval_features"), True
    on_store = stacked.evaluate(c, MEMBERS, stacked._stack(params), names=["a", "b"])
    assert list((tmp / "eval_features").glob("sam_procedural_test_*/*.npy"))
    for name in ("a", "b"):
        for key, value in got[name].items():
            assert on_store[name][key] == pytest.approx(value, rel=1e-6, abs=1e-6), (name, key)


def _random_batch(c, seed):
    from jaxvrp import train

    r = np.random.RandomState(seed)
    batch = {k: r.randn(*v.shape).astype(v.dtype) for k, v in train.batch_spec(c).items()}
    for k in ("support_annotations", "query_mask"):
        batch[k] = (batch[k] > 0).astype(np.float32)
    batch["query_ignore"] = np.zeros_like(batch["query_ignore"], bool)
    return batch


def _train_stack(c, members, mesh, mode, steps=2):
    """`steps` stacked steps on random batches over a (members, data) `mesh`."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxvrp import frozen as frozen_lib
    from jaxvrp import loop

    learner = trainer.learner_of(c)
    total = int(c.total_steps)
    by_member, data = NamedSharding(mesh, P("members")), NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    step = jax.jit(
        stacked.make_step(c, learner, members, total, mode=mode, mesh=mesh),
        in_shardings=(by_member, data, by_member, by_member, replicated),
        out_shardings=(by_member, replicated),
    )
    put = lambda x: jax.device_put(x, by_member)
    state = put(stacked.init_state(c, learner, members, total))
    rngs, hp = put(stacked.step_rngs(c, members)), put(stacked.hparams_of(c, members))
    frozen = frozen_lib.load(c, learner.frozen(trainer.learner_config(c)))
    frozen = jax.device_put(frozen, replicated)
    for i in range(steps):
        batch = loop.global_batch(_random_batch(c, i), data)
        state, _ = step(state, batch, rngs, hp, frozen)
    return jax.device_get(state.params)


def test_members_sharded_over_devices_equal_the_unsharded_stack():
    """2 members on a 2 (members) x 2 (data) mesh of 4 devices (a `shard_map` over
    "members": one member per device pair, the batch of 2 split over the pair) against the
    same stack unsharded on a 1 x 2 mesh, both modes. (Two members, not more: "map" mode
    unrolls the members, so each one more adds its whole step to the compile.)"""
    from flax import traverse_util
    from jax.sharding import Mesh

    c = _vrp()
    c.batch_size = 2
    members = [{"seed": 0, "optimizer.lr": 1e-3}, {"seed": 1, "optimizer.lr": 2e-3}]
    devices = np.array(jax.devices())
    sharded_mesh = Mesh(devices[:4].reshape(2, 2), ("members", "data"))
    plain_mesh = Mesh(devices[:2].reshape(1, 2), ("members", "data"))
    flat = lambda tree, i: traverse_util.flatten_dict(stacked.member_params(tree, i), sep="/")
    for mode in ("map", "vmap"):
        got = _train_stack(c, members, sharded_mesh, mode)
        ref = _train_stack(c, members, plain_mesh, mode)
        for i in range(len(members)):
            errors = _leaf_errors(flat(got, i), flat(ref, i))
            print(mode, i, "max leaf rel L2", max(errors.values()))
            g, r = flat(got, i), flat(ref, i)
            num = sum(np.sum((np.float64(g[k]) - r[k]) ** 2) for k in r)
            whole = np.sqrt(num / sum(np.sum(np.float64(r[k]) ** 2) for k in r))
            assert whole <= (PARAMS_RTOL if mode == "map" else 1e-4), (mode, i, whole)


def test_vmapped_point_writes_results_and_member_learners(trained):
    tmp, _ = trained
    point = tmp / "1" / "sweep" / "p"
    results = json.loads((point / "eval" / "results.json").read_text())
    assert list(results) == ["VRP-SAM seed=0,lr=0.001", "VRP-SAM seed=1,lr=0.002"]
    assert all(r["episodes"] == 8 for r in results.values())
    meta = json.loads((point / "point.json").read_text())
    assert [m["overrides"] for m in meta["members"]] == MEMBERS
    for label in ("seed=0-lr=0.001", "seed=1-lr=0.002"):
        assert (point / "members" / label / "learner" / "metadata.json").exists()
    assert json.loads((point / "config.json").read_text())["learner"] == "vrp_sam"


# ---------------------------------------------------------------------------- run, resume


def test_local_sweep_runs_then_skips_finished_points(tmp_path, monkeypatch):
    from configs import oracle_box
    from jaxvrp import evaluate

    base = oracle_box.get_config("runlocal")
    base.data.data_dir = str(tmp_path / "tfds")
    base.batch_size = 8
    module = sweep.load_module(str(ROOT / "configs" / "oracle_box.py"))
    sweep_two = lambda add: [add(**{"data.fold": f}) for f in (0, 1)]
    monkeypatch.setattr(module, "sweep_two", sweep_two, raising=False)
    points = sweep.plan(base, module, "two")
    sweep.run_local(points, tmp_path)
    for p in points:
        r = json.loads((tmp_path / p.name / "eval" / "results.json").read_text())
        assert r["SAM + oracle box"]["episodes"] == 8
    calls = []
    real = evaluate.evaluate
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    sweep.run_local(points, tmp_path)
    assert calls == []  # both finished: skipped
    (tmp_path / "fold=1" / "eval" / "results.json").unlink()
    sweep.run_local(points, tmp_path)
    assert calls == [1]  # only the unfinished point runs again
    table = sweep.write_results(tmp_path, "oracle")
    assert table["folds"] == ["0", "1"] and len(table["rows"]) == 1
    assert "| result |" not in (tmp_path / "results.md").read_text()


# ---------------------------------------------------------------------------- results


def _fake_point(root, index, overrides, members, mious):
    d = root / sweep.point_names([overrides])[0]
    (d / "eval").mkdir(parents=True)
    meta = {
        "index": index,
        "overrides": overrides,
        "members": [{"label": "", "overrides": m} for m in members],
    }
    (d / "point.json").write_text(json.dumps(meta))
    results = {f"m{i}": {"miou": v, "fb_iou": v + 0.1} for i, v in enumerate(mious)}
    (d / "eval" / "results.json").write_text(json.dumps(results))


def test_aggregated_table_against_hand_computed_means(tmp_path):
    seeds = [{"seed": 0, "optimizer.lr": 1e-4}, {"seed": 1, "optimizer.lr": 1e-4}]
    seeds += [{"seed": 0, "optimizer.lr": 2e-4}, {"seed": 1, "optimizer.lr": 2e-4}]
    # fold 0: lr 1e-4 -> 0.50, 0.60; lr 2e-4 -> 0.70, 0.70. fold 1: 0.30, 0.50; 0.40, 0.80
    _fake_point(tmp_path, 0, {"data.fold": 0}, seeds, [0.5, 0.6, 0.7, 0.7])
    _fake_point(tmp_path, 1, {"data.fold": 1}, seeds, [0.3, 0.5, 0.4, 0.8])
    table = sweep.write_results(tmp_path, "t")
    assert table["folds"] == ["0", "1"]
    low, high = table["rows"]
    assert low["keys"] == {"optimizer.lr": 1e-4} and high["keys"] == {"optimizer.lr": 2e-4}
    f0 = low["metrics"]["miou"]["folds"]["0"]
    assert f0["mean"] == pytest.approx(55.0) and f0["n"] == 2
    assert f0["std"] == pytest.approx(np.std([50.0, 60.0], ddof=1))  # 7.07
    # per-seed fold means: seed 0 (50+30)/2 = 40, seed 1 (60+50)/2 = 55 -> 47.5 ± 10.6
    assert low["metrics"]["miou"]["mean"]["mean"] == pytest.approx(47.5)
    assert low["metrics"]["miou"]["mean"]["std"] == pytest.approx(np.std([40, 55], ddof=1))
    assert high["metrics"]["miou"]["folds"]["1"]["mean"] == pytest.approx(60.0)
    assert high["metrics"]["fb_iou"]["folds"]["0"]["mean"] == pytest.approx(80.0)
    md = (tmp_path / "results.md").read_text()
    assert "| lr | fold 0 | fold 1 | mean |" in md
    assert "| 0.0001 | 55.0 ± 7.1 | 40.0 ± 14.1 | 47.5 ± 10.6 |" in md
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0].startswith("optimizer.lr,metric,0_mean,0_std,0_n,1_mean")
    assert lines[1].split(",")[:5] == ["0.0001", "miou", "55.0", repr(f0["std"]), "2"]
    assert json.loads((tmp_path / "results.json").read_text()) == table
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_plot_is_skipped_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    table = {"folds": ["all"], "rows": []}
    assert sweep.plot(table, tmp_path / "x.png") is None
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------- launchers


def _cli(tmp_path, launcher, *extra):
    cmd = [sys.executable, "-m", "jaxvrp.sweep", "--config", "configs/vrp_sam.py:runlocal"]
    cmd += ["--sweep", "folds_and_labels", "--workdir", str(tmp_path), "--launcher", launcher]
    cmd += ["--vmap", "seed=0,1", "--config.data.data_dir=/data/tfds", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)


def test_print_and_slurm_and_tpu_launchers(tmp_path):
    printed = _cli(tmp_path, "print").stdout.splitlines()
    assert len(printed) == 17  # 16 points and the aggregation
    base = (
        "python -m jaxvrp.sweep --config configs/vrp_sam.py:runlocal --sweep folds_and_labels "
        f"--workdir {tmp_path} --vmap seed=0,1 --config.data.data_dir=/data/tfds"
    )
    assert printed[0] == base + " --point 0"
    assert printed[15] == base + " --point 15"
    assert printed[16] == base + " --aggregate"
    _cli(tmp_path, "slurm")
    script = (tmp_path / "sweep.sbatch").read_text()
    assert "#SBATCH --array=0-15" in script
    assert "#SBATCH --gpus-per-node=8" in script  # from launch/slurm.sbatch
    assert f'srun {base} --point "$SLURM_ARRAY_TASK_ID" --config.distributed=True' in script
    assert "15=fold=3_annotation=mask" in script
    _cli(tmp_path, "tpu")
    tpu = (tmp_path / "sweep_tpu.sh").read_text()
    assert tpu.count("--worker=all") == 16 and "--point 15 --config.distributed=True" in tpu
    assert not list(tmp_path.glob("fold=*"))  # nothing ran
