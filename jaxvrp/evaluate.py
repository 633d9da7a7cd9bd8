"""Evaluate a learner: `python -m jaxvrp.evaluate --config ... --workdir DIR [--checkpoint DIR]`.

Runs the fixed evaluation episodes of the config's fold (novel classes; 1000 by default),
sharded over all devices and hosts, and writes `workdir/eval/results.json` and
`workdir/eval/results.md` (mIoU, FB-IoU, TPR / TNR / FPR / FNR, per-class IoU). Under
`data.protocol="hsnet"` the episodes are HSNet's and mIoU, FB-IoU and per-class IoU are
HSNet's `AverageMeter`'s (`metrics.hsnet_metrics`), at the config's `image_size` on the
nearest-resized query mask, as HSNet's test without `--use_original_imgsize`. Any
registered learner (`config.learner`): a trained one's params come from the latest training
checkpoint in the workdir, or from `--checkpoint` (a training workdir's `checkpoints/`
directory); a training-free one (GP-SAM, the oracle box, ...) needs none.
"""

import json
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging
from ml_collections import config_flags

from jaxvrp import frozen as frozen_lib
from jaxvrp import loop, metrics, paths, precompute, trainer
from jaxvrp.data import datasets, hsnet
from jaxvrp.learners import frozen_sam, protocol


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (so modules import freely)."""
    config_flags.DEFINE_config_file("config", None, "learner config file", lock_config=True)
    flags.DEFINE_string("workdir", None, "where results (and checkpoints) are")
    flags.DEFINE_string("checkpoint", None, "checkpoints directory (default: workdir)")


def restore_params(config, checkpoints: paths.PathLike):
    """The learner params of the latest checkpoint under `checkpoints`."""
    mgr = ocp.CheckpointManager(paths.absolute(checkpoints))
    step = mgr.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {checkpoints}")
    restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored["state"]["params"], step


def evaluate(
    config,
    params=None,
    *,
    name: str | None = None,
    rng_seed: int = 0,
    frozen=None,
    progress: bool = False,
    on_batch=None,
) -> dict:
    """Metrics of the config's learner with `params` on the config's evaluation episodes.

    `params` None: the learner's fresh `init` (what a training-free learner has: `{}`);
    `frozen` an already loaded frozen tree (`jaxvrp.frozen.load`); `progress` shows a
    progress bar over the batches; `on_batch(batch, logits)` is called with every host batch
    and its logits (numpy), e.g. to keep examples.
    """
    learner = trainer.learner_of(config)
    lconfig = learner.make_config(**config.model.to_dict())
    name = learner.title if name is None else name
    spec = learner.frozen(lconfig)
    if frozen is None:
        frozen_lib.check(config, spec)
    _, batch_sharding, replicated = loop.mesh_and_shardings()
    loop.check_batch_size(config.batch_size)
    if frozen is None:
        frozen = frozen_lib.load(config, spec)
    # precomputed query embeddings (config.data.feature_cache), added to each host batch
    features = precompute.reader(config, learner, lconfig, 1, frozen=frozen)
    frozen = jax.device_put({k: frozen[k] for k in spec.keys}, replicated)
    if params is None:
        params = learner.init(jax.random.key(config.seed), lconfig)
    params = jax.device_put(params, replicated)
    # per-episode keys fold_in(rng, episode): a sampling learner (ProSAM's sampled inference,
    # GP-SAM's points) draws fresh noise for every episode, the same whatever the batch
    # size, the episode's position in it or the number of hosts (jaxvrp.learners.protocol)
    predict = jax.jit(
        lambda p, f, b, r: learner.apply(
            p, f, b, config=lconfig, rng=protocol.example_keys(r, b["episode"])
        ),
        in_shardings=(replicated, replicated, batch_sharding, replicated),
        out_shardings=batch_sharding,
    )
    meter = metrics.SegmentationMeter()
    use_cache = config.data.embedding_cache and spec.sam is not None and features is None
    cache = EmbeddingCache(config, spec.sam) if use_cache else None
    local = config.batch_size // jax.process_count()
    episodes = datasets.eval_episodes(config, jax.process_index(), jax.process_count(), local)
    rng = jax.random.key(rng_seed)
    if progress and jax.process_index() == 0:
        from tqdm import tqdm

        mine = -(-config.data.num_eval_episodes // jax.process_count())  # host 0's share
        n = -(-mine // local)
        episodes = tqdm(episodes, total=n, desc=f"eval {name}", unit="batch", file=sys.stderr)
    for batch in episodes:
        if features is not None:
            batch = features(batch)
        elif cache is not None:
            batch = {**batch, "query_embedding": cache.lookup(batch, frozen["sam"])}
        inputs = loop.global_batch(trainer.model_inputs(batch, learner, lconfig), batch_sharding)
        logits = predict(params, frozen, inputs, rng)
        local_logits = np.concatenate(
            [np.asarray(s.data) for s in logits.addressable_shards], axis=0
        )
        if on_batch is not None:
            on_batch(batch, local_logits)
        meter.update(
            local_logits > 0,
            batch["query_mask"] > 0,
            batch["class_id"],
            ignore=batch["query_ignore"],
            valid=batch["valid"],
        )
    result = result_of(config, all_hosts(config, meter))
    logging.info(
        "%s: mIoU %.1f, FB-IoU %.1f over %d episodes",
        name,
        100 * result["miou"],
        100 * result["fb_iou"],
        result["episodes"],
    )
    return result


def all_hosts(config, meter: metrics.SegmentationMeter) -> metrics.SegmentationMeter:
    """A meter of this host's episodes -> the meter of every host's (counts added up); the
    meter itself on one host."""
    if jax.process_count() == 1:
        return meter
    from jax.experimental import multihost_utils

    classes = sorted(datasets.plan(config)[1][2])
    local_counts = np.stack([meter.counts.get(c, np.zeros(4, np.int64)) for c in classes])
    total = np.asarray(multihost_utils.process_allgather(local_counts)).sum(axis=0)
    episodes = int(np.sum(multihost_utils.process_allgather(np.int64(meter.episodes))))
    return metrics.SegmentationMeter(
        {c: total[i] for i, c in enumerate(classes) if total[i].any()}, episodes
    )


def result_of(config, meter: metrics.SegmentationMeter) -> dict:
    """The results dict of a meter under the config's evaluation protocol: the meter's
    metrics, `protocol`, and under HSNet's protocol its `AverageMeter` figures."""
    result = meter.result()
    result["protocol"] = datasets.protocol(config)
    if result["protocol"] == hsnet.PROTOCOL:  # HSNet's AverageMeter: every class of the fold
        result.update(metrics.hsnet_metrics(meter.counts, datasets.plan(config)[1][2]))
    return result


class EmbeddingCache:
    """SAM image embeddings of evaluation targets, computed on first use and kept in the
    keyed store of `jaxvrp.precompute` under `config.data.embedding_cache`: one .npy per
    record in a directory keyed by the SAM (config and checkpoint sha256), the image size,
    the storage dtype and the dataset build, so a changed SAM, dtype or build never reads
    stale embeddings.

    The evaluation episodes are fixed, so their targets' embeddings (the frozen SAM's ~98 %
    of the compute) can be computed once and reused by every later evaluation of the same
    data and SAM: checkpoints during training, several learners, baselines.
    """

    def __init__(self, config, sam) -> None:
        dataset, split, _ = datasets.plan(config)[1]
        root = config.data.embedding_cache
        self.store = precompute.sam_store(config, sam, dataset, split, root=root)
        self.dir = self.store.dir
        self._embed = jax.jit(lambda p, x: frozen_sam.image_embeddings(p, x, sam))

    def lookup(self, batch: dict, sam_params) -> np.ndarray:
        """(B, h, w, C) embeddings of the batch's targets, computing the missing ones."""
        records = [int(r) for r in batch["query_record"]]
        missing = [i for i, r in enumerate(records) if not self.store.has(r)]
        if missing:
            new = np.asarray(self._embed(sam_params, batch["query_image"][missing]))
            for i, emb in zip(missing, new, strict=True):
                self.store.put(records[i], emb)  # temp name then rename: never half-written
        return self.store.get_many(records)


def write_results(workdir: paths.PathLike, results: dict[str, dict]) -> None:
    out = paths.as_path(workdir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (out / "results.md").write_text(metrics.markdown_table(results) + "\n")


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    config, workdir = f.config, paths.as_path(f.workdir)
    if config.distributed:
        loop.initialize_distributed(config)
    learner = trainer.learner_of(config)
    try:  # before restoring or compiling anything
        frozen_lib.check(config, learner.frozen(learner.make_config(**config.model.to_dict())))
    except frozen_lib.RandomWeightsError as e:
        logging.error("%s", e)
        sys.exit(2)
    params, name = None, learner.title
    if learner.trainable:
        checkpoints = paths.as_path(f.checkpoint) if f.checkpoint else workdir / "checkpoints"
        params, step = restore_params(config, checkpoints)
        name = f"{learner.title}@{step}"
    result = evaluate(config, params, name=name)
    if jax.process_index() == 0:
        write_results(workdir, {learner.title: result})


if __name__ == "__main__":
    _define_flags()
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
