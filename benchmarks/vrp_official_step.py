"""One VRP-SAM training step: the official PyTorch code against jaxvrp, same weights and
inputs, in the same run.

    python benchmarks/vrp_official_step.py --official-repo DIR [--steps 3] [--smoke]

DIR is a checkout of syp2ysy/VRP-SAM (its `model/`, `SAM2pred.py`, `common/` and its own
modified `segment-anything/` are imported from there; it needs `fvcore`). Without
`--official-repo` jaxvrp is timed alone.

The setting of issue 16: SAM vit_b, deep-stem ResNet-50, 512² episodes, batch 2, 1-shot mask
references, 50 queries, random weights: the official modules initialised under
`torch.manual_seed(0)` and converted to jaxvrp with `conversion.vrp_sam` and `conversion.sam`
(so both sides hold the same weights), the same random images and masks.

- official: the body of the official `train.py` loop for one batch, unchanged: `VRP_encoder`
  forward (condition "mask", training), `SAM_pred` forward, `compute_objective`, backward,
  AdamW (lr 1e-4, weight decay 1e-6 as `train.py`). `SAM_pred` embeds queries through its
  own on-disk cache (`get_feat_from_np`), whose hard-coded directory is redirected to a
  temporary one. "cold": every query is new to the cache (its encoder runs, as in the first
  epoch); "warm": the same queries again (embeddings read back, as from the second epoch).
  Its ViT-B image encoder is built as `SAM_pred` builds ViT-H (`sam_model_registry`), without
  a checkpoint.
- jaxvrp: `trainer.compile_train_step` on the converted weights, "encoder_in_step" (the
  frozen SAM encoder runs in the step), "precomputed" (the batch's `query_embedding`, as
  `jaxvrp.precompute` stores it) and "precomputed_backbone" (also the backbone's stored
  stages, `data.backbone_features`). Compile time is reported apart and not in the step time.

`--eval`: one evaluation batch instead (episodes/s reported too): official = the body of
`train.py`'s loop with `training=False` under `torch.no_grad()` (`model.eval()`, the same
forward, the sigmoid > 0.5 mask and the loss it logs, no backward), cold and warm as above;
jaxvrp = the evaluator's jitted `learner.apply` (`jaxvrp.evaluate`) in the same three cases.

Prints JSON: seconds per step (median over `--steps` steps after one untimed step for the
jaxvrp cases; every official cold step is timed, as each is a first encoder call for its
queries) and the ratios official / jaxvrp. `--smoke`: 128² episodes, 8 queries, one step each,
to check the script end to end (the official SAM still embeds at 1024², as its code resizes).
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# the directory the official SAM2pred.get_feat_from_np writes its embeddings under
OFFICIAL_CACHE_PREFIX = "/root/paddlejob/"


class _Redirected:
    """A module seen through string path arguments rewritten from `old` to `new` (what the
    official embedding cache sees for `os`, `os.path` and `np`)."""

    def __init__(self, target, old: str, new: str) -> None:
        self._target, self._old, self._new = target, old, new

    def __getattr__(self, name):
        attr = getattr(self._target, name)
        if isinstance(attr, types.ModuleType):
            return _Redirected(attr, self._old, self._new)
        if not callable(attr) or isinstance(attr, type):
            return attr

        def call(*args, **kwargs):
            args = [
                self._new + a[len(self._old) :]
                if isinstance(a, str) and a.startswith(self._old)
                else a
                for a in args
            ]
            return attr(*args, **kwargs)

        return call


def inputs(batch: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random normalised images (B, S, S, 3), references (B, 1, S, S, 3), their masks
    (B, 1, S, S) and the query masks (B, S, S): a random box per image."""
    r = np.random.RandomState(seed)
    out = {
        "query_image": r.randn(batch, size, size, 3).astype(np.float32),
        "support_images": r.randn(batch, 1, size, size, 3).astype(np.float32),
    }
    masks = np.zeros((2, batch, size, size), np.float32)
    for m in masks.reshape(-1, size, size):
        y, x = r.randint(0, size // 2, 2)
        h, w = r.randint(size // 8, size // 2, 2)
        m[y : y + h, x : x + w] = 1
    out["support_annotations"], out["query_mask"] = masks[0][:, None], masks[1]
    return out


def official_model(repo: Path, num_queries: int):
    """(VRP_encoder, SAM_pred with a ViT-B SAM, the SAM2pred module), seeded, on CPU."""
    import torch
    from torch import nn

    sys.path[:0] = [str(repo / "segment-anything"), str(repo)]
    for name in [m for m in sys.modules if m.split(".")[0] == "segment_anything"]:
        del sys.modules[name]  # the repository's modified copy, not the PyPI package
    import model.base.resnet as resnet
    import SAM2pred
    from model.VRP_encoder import VRP_encoder
    from segment_anything import sam_model_registry

    plain = resnet.resnet50
    # train.py builds resnet50(pretrained=True), which loads ImageNet weights from a path
    resnet.resnet50 = lambda pretrained=False, **kw: plain(pretrained=False, **kw)
    torch.manual_seed(0)
    args = argparse.Namespace(num_query=num_queries, condition="mask")
    vrp = VRP_encoder(args, "resnet50", False)
    sam = SAM2pred.SAM_pred.__new__(SAM2pred.SAM_pred)  # its __init__ loads ViT-H weights
    nn.Module.__init__(sam)
    sam.sam_model = sam_model_registry["vit_b"]()
    sam.sam_model.eval()
    for layer in (vrp.layer0, vrp.layer1, vrp.layer2, vrp.layer3, vrp.layer4):
        for p in layer.parameters():
            p.requires_grad = False  # as train.py
    return vrp, sam, SAM2pred


def time_official(
    repo: Path, data: dict, steps: int, num_queries: int, evaluation: bool = False
) -> tuple[dict, dict]:
    """({"cold": [s, ...], "warm": [...]}, the official state dicts as numpy)."""
    import torch

    vrp, sam, sam2pred = official_model(repo, num_queries)
    cache = tempfile.mkdtemp(prefix="vrp-official-feats-")
    sam2pred.os = _Redirected(os, OFFICIAL_CACHE_PREFIX, cache + "/")
    sam2pred.np = _Redirected(np, OFFICIAL_CACHE_PREFIX, cache + "/")
    optimizer = torch.optim.AdamW(
        [
            {"params": vrp.transformer_decoder.parameters()},
            {"params": vrp.downsample_query.parameters()},
            {"params": vrp.merge_1.parameters()},
        ],
        lr=1e-4,
        weight_decay=1e-6,
        betas=(0.9, 0.999),
    )
    nchw = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    q, s = nchw(data["query_image"]), nchw(data["support_images"][:, 0])
    m = torch.from_numpy(data["support_annotations"][:, 0])
    qm = torch.from_numpy(data["query_mask"])
    vrp.eval() if evaluation else vrp.train_mode()

    def step(names):
        t = time.perf_counter()
        protos, _ = vrp("mask", q, s, m, True)
        low_masks, _ = sam(q, names, protos)
        loss = vrp.compute_objective(low_masks, qm)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t

    def eval_step(names):  # train.py's loop with training=False, under torch.no_grad()
        t = time.perf_counter()
        with torch.no_grad():
            protos, _ = vrp("mask", q, s, m, False)
            low_masks, _ = sam(q, names, protos)
            pred = (torch.sigmoid(low_masks) > 0.5).float()
            loss = vrp.compute_objective(low_masks, qm)
        float(loss), float(pred.sum())  # the values its meter reads
        return time.perf_counter() - t

    if evaluation:
        step = eval_step

    b = q.shape[0]
    names = [[f"step{i}_query{j}" for j in range(b)] for i in range(steps)]
    times = {"cold": [step(n) for n in names]}  # each step's queries are new to the cache
    times["warm"] = [step(n) for n in names]  # read back from the cache
    state = {
        "vrp": {k: v.detach().numpy() for k, v in vrp.state_dict().items()},
        "sam": {k: v.detach().numpy() for k, v in sam.sam_model.state_dict().items()},
    }
    return times, state


def jaxvrp_config(size: int, num_queries: int):
    from configs import vrp_sam

    config = vrp_sam.get_config("runlocal")  # random frozen weights allowed; set below
    config.model.sam, config.model.backbone = "vit_b", "resnet50_deepstem"
    config.model.num_queries = num_queries
    config.data.image_size, config.batch_size = size, 2
    config.data.annotation, config.data.shots = "mask", 1
    return config


def time_jaxvrp(
    config, data: dict, steps: int, state: dict | None, evaluation: bool = False
) -> dict:
    """{case: {"first_call_s", "step_s"}}: official weights when `state` is given; with
    `evaluation` the evaluator's jitted `learner.apply` instead of the train step."""
    import jax

    from conversion.sam import convert_sam_state_dict
    from conversion.vrp_sam import convert_vrp_sam_state_dict
    from jaxvrp import frozen as frozen_lib
    from jaxvrp import loop, train, trainer
    from jaxvrp.learners import frozen_sam, protocol
    from jaxvrp.learners import vrp as vrp_lib

    learner = trainer.learner_of(config)
    lconfig = trainer.learner_config(config)
    spec = learner.frozen(lconfig)
    total = int(config.total_steps)
    _, batch_sharding, replicated = loop.mesh_and_shardings()
    optimizer = trainer.make_optimizer(config, total)
    schedule = trainer.lr_schedule(config, total)
    init = trainer.init_state(jax.random.key(0), lconfig, learner, optimizer)
    if state is None:
        frozen = frozen_lib.load(config, spec)
    else:
        vrp = convert_vrp_sam_state_dict(state["vrp"], lconfig, "resnet50_deepstem")
        sam = convert_sam_state_dict(state["sam"], spec.sam)
        frozen = {"sam": sam, "backbone": vrp["backbone"]}
        init = dataclasses.replace(init, params=jax.tree.map(np.asarray, vrp["learner"]))
    frozen = jax.device_put(frozen, replicated)
    init = jax.device_get(init)  # host copy: each case's step donates its device state
    spec_shapes = train.batch_spec(config)
    host = {k: np.zeros(v.shape, v.dtype) for k, v in spec_shapes.items()}
    host.update({k: data[k] for k in data if k in host})
    emb = jax.jit(lambda p, x: frozen_sam.image_embeddings(p, x, spec.sam))(
        frozen["sam"], host["query_image"]
    )
    cases = {"encoder_in_step": host, "precomputed": {**host, "query_embedding": np.asarray(emb)}}
    # the backbone's stored stages too (`data.backbone_features`): the query's layer2-4, the
    # references' layer2-3; only each reference's layer4 runs in the step
    cases["precomputed_backbone"] = vrp_lib.with_stored_stages(
        cases["precomputed"], frozen["backbone"], spec.backbone
    )
    out = {}
    for name, batch in cases.items():
        if evaluation:  # what the evaluator runs: model inputs only, per-episode keys
            episodes = np.arange(2, dtype=np.uint32)
            batch = {**trainer.model_inputs(batch, learner, lconfig), "episode": episodes}
        batch = loop.global_batch(batch, batch_sharding)
        if evaluation:
            predict = jax.jit(
                lambda p, f, b, r: learner.apply(
                    p, f, b, config=lconfig, rng=protocol.example_keys(r, b["episode"])
                ),
                in_shardings=(replicated, replicated, batch_sharding, replicated),
                out_shardings=batch_sharding,
            )
            params = jax.device_put(init.params, replicated)

            def step(s, batch, rng, frozen, predict=predict, params=params):
                return s, predict(params, frozen, batch, rng)
        else:
            step = trainer.compile_train_step(
                lconfig, learner, optimizer, schedule, batch_sharding, replicated
            )
        s, rng = jax.device_put(init, replicated), jax.random.key(1)
        t = time.perf_counter()
        s, m = step(s, batch, rng, frozen)
        jax.block_until_ready(m)
        first = time.perf_counter() - t
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            s, m = step(s, batch, rng, frozen)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t)
        out[name] = {"first_call_s": first, "step_s": statistics.median(times), "steps": times}
        print(json.dumps({name: out[name]}), file=sys.stderr, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official-repo", default="", help="a checkout of syp2ysy/VRP-SAM")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="128 px, 8 queries, 1 step")
    p.add_argument("--eval", action="store_true", help="an evaluation batch, not a train step")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    size, queries, steps = (128, 8, 1) if args.smoke else (512, 50, args.steps)
    data = inputs(2, size)
    import torch

    report = {
        "setting": f"SAM vit_b, resnet50_deepstem, {size}px, batch 2, 1-shot mask, {queries} "
        "queries" + (", evaluation" if args.eval else ", training step"),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
    state = None
    if args.official_repo:
        repo = Path(args.official_repo)
        needed = (repo / "SAM2pred.py", repo / "model" / "VRP_encoder.py")
        if not all(f.is_file() for f in needed):
            raise SystemExit(f"--official-repo {repo}: no SAM2pred.py / model/VRP_encoder.py")
        times, state = time_official(repo, data, steps, queries, args.eval)
        report["official"] = {
            k: {"step_s": statistics.median(v), "steps": v} for k, v in times.items()
        }
        print(json.dumps({"official": report["official"]}), file=sys.stderr, flush=True)
    report["jaxvrp"] = time_jaxvrp(jaxvrp_config(size, queries), data, steps, state, args.eval)
    if args.eval:  # episodes per second: 2 episodes a batch
        for side in ("official", "jaxvrp"):
            for case in report.get(side, {}).values():
                case["episodes_per_s"] = 2 / case["step_s"]
    if state is not None:
        o, j = report["official"], report["jaxvrp"]
        report["ratios"] = {  # > 1: jaxvrp faster
            "cold_official_over_encoder_in_step": o["cold"]["step_s"]
            / j["encoder_in_step"]["step_s"],
            "warm_official_over_precomputed": o["warm"]["step_s"] / j["precomputed"]["step_s"],
            "warm_official_over_precomputed_backbone": o["warm"]["step_s"]
            / j["precomputed_backbone"]["step_s"],
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
