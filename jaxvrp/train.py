"""Train a prompt learner: `python -m jaxvrp.train --config configs/vrp_sam.py:ARG --workdir DIR`.

Runs the same config on one CPU, a GPU box or a multi-host pod (`--config.distributed=True`
calls `jax.distributed.initialize()`). A run restarted in the same workdir resumes from its
latest checkpoint (params, optimiser state, step and the data iterator), so it continues
exactly. Writes `workdir/metrics.jsonl` (one JSON object per logged step) and TensorBoard
events under `workdir/tensorboard` (process 0 only), and shows a progress bar with ETA. At
the end, `workdir/learner` holds the trained learner as a `jaxvrp.learners.checkpoint`
(what `jaxvrp segment --learner` reads).
`--compile_only` compiles the train step for the current devices and prints its memory
(no data, no parameters allocated): check a config fits before launching it; with
`data.feature_cache` set it compiles the step that reads precomputed query embeddings.
"""

import json
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from jaxvrp import frozen as frozen_lib
from jaxvrp import loop, paths, precompute, trainer
from jaxvrp.data import datasets
from jaxvrp.loop import NonFiniteLoss, checkpoint_manager


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program (so modules import freely)."""
    config_flags.DEFINE_config_file("config", None, "learner config file", lock_config=True)
    flags.DEFINE_string("workdir", None, "directory for checkpoints and metrics")
    flags.DEFINE_bool("compile_only", False, "compile the train step, report memory, exit")


def train(config, workdir: paths.PathLike) -> dict:
    """Train to `config.total_steps` (or `config.stop_after` steps of this run); returns the
    last logged metrics. A training-free learner (no `loss_fn`) has nothing to train: it
    returns `{}` at once."""
    workdir = paths.as_path(workdir)  # gs://... stays remote
    learner = trainer.learner_of(config)
    if not learner.trainable:
        logging.info("%s is training-free: nothing to train", learner.name)
        return {}
    lconfig = learner.make_config(**config.model.to_dict())
    frozen_lib.check(config, learner.frozen(lconfig))  # before any data, load or compile
    workdir.mkdir(parents=True, exist_ok=True)
    if config.distributed:
        loop.initialize_distributed(config)
    lead = jax.process_index() == 0
    _, batch_sharding, replicated = loop.mesh_and_shardings()
    loop.check_batch_size(config.batch_size)
    total = int(config.total_steps)
    optimizer = trainer.make_optimizer(config, total)
    schedule = trainer.lr_schedule(config, total)

    data = datasets.train_episodes(
        config, jax.process_index(), jax.process_count(), config.batch_size // jax.process_count()
    )
    iterator = iter(data)
    state = trainer.init_state(jax.random.key(config.seed), lconfig, learner, optimizer)
    mgr = checkpoint_manager(workdir, config)
    state, start = loop.restore_latest(mgr, state, iterator, workdir)
    state = jax.device_put(state, replicated)
    frozen = frozen_lib.load(config, learner.frozen(lconfig))
    # precomputed query embeddings (config.data.feature_cache), added to each host batch
    features = precompute.reader(config, learner, lconfig, 0, frozen=frozen)
    frozen = jax.device_put(frozen, replicated)
    step_fn = trainer.compile_train_step(
        lconfig, learner, optimizer, schedule, batch_sharding, replicated
    )
    rng = jax.random.key(config.seed + 1)
    end = total if not config.stop_after else min(total, start + int(config.stop_after))

    state, last = loop.run_steps(
        lambda st, b: step_fn(
            st,
            loop.global_batch(
                trainer.model_inputs(b if features is None else features(b), learner, lconfig),
                batch_sharding,
            ),
            rng,
            frozen,
        ),
        state,
        iterator,
        mgr,
        workdir,
        start=start,
        end=end,
        config=config,
        tensorboard=True,
    )
    if end == total and lead:
        steps = int(jax.device_get(state.step))  # fewer than total after an early stop
        export_learner(workdir / "learner", config, jax.device_get(state.params), frozen, steps)
    return last


def export_learner(
    directory: paths.PathLike, config, params, frozen, steps: int | None = None
) -> paths.epath.Path:
    """The trained learner as a `jaxvrp.learners.checkpoint` (for `jaxvrp segment`)."""
    from jaxvrp.learners import checkpoint

    return checkpoint.save(
        directory,
        learner=config.learner,
        model=config.model.to_dict(),
        params=params,
        image_size=config.data.image_size,
        backbone_params=jax.device_get(frozen.get("backbone")),
        module=config.get("learner_module") or None,
        extra={
            "training": {
                "steps": int(config.total_steps if steps is None else steps),
                "dataset": config.data.dataset,
            }
        },
        overwrite=True,
    )


def batch_spec(config) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of a global training batch (the standard `trainer.MODEL_INPUTS` and the
    episode numbers the step's rngs are keyed by), with the precomputed `query_embedding`
    (float32 (B, h, w, C), what `precompute.QueryEmbeddings` adds) when the config trains on
    a feature store (`config.data.feature_cache`) and the learner prompts a SAM, and the
    backbone's `query_features/<stage>` (B, h, w, C) and `support_features/<stage>`
    (B, K, h, w, C) with `config.data.backbone_features`."""
    b, k, s = config.batch_size, config.data.shots, config.data.image_size
    f32 = np.float32
    spec = {
        "query_image": jax.ShapeDtypeStruct((b, s, s, 3), f32),
        "support_images": jax.ShapeDtypeStruct((b, k, s, s, 3), f32),
        "support_annotations": jax.ShapeDtypeStruct((b, k, s, s), f32),
        "query_mask": jax.ShapeDtypeStruct((b, s, s), f32),
        "query_ignore": jax.ShapeDtypeStruct((b, s, s), np.bool_),
        "episode": jax.ShapeDtypeStruct((b,), np.uint32),
    }
    if config.data.get("feature_cache", ""):
        learner = trainer.learner_of(config)
        sam = learner.frozen(learner.make_config(**config.model.to_dict())).sam
        if sam is not None:
            shape = precompute.embedding_shape(sam)
            spec["query_embedding"] = jax.ShapeDtypeStruct((b, *shape), f32)
        lconfig = learner.make_config(**config.model.to_dict())
        for key, shape in precompute.backbone_feature_shapes(config, learner, lconfig).items():
            spec[key] = jax.ShapeDtypeStruct((b, *shape), f32)
    return spec


def compile_only(config) -> dict:
    """Compile the train step of `config` for the current devices and report its memory,
    without data, checkpoints or allocating any parameter."""
    learner = trainer.learner_of(config)
    if not learner.trainable:
        raise ValueError(f"{learner.name} is training-free: it has no train step to compile")
    lconfig = learner.make_config(**config.model.to_dict())
    _, batch_sharding, replicated = loop.mesh_and_shardings()
    optimizer = trainer.make_optimizer(config, int(config.total_steps))
    schedule = trainer.lr_schedule(config, int(config.total_steps))
    state = jax.eval_shape(
        lambda r: trainer.init_state(r, lconfig, learner, optimizer), jax.random.key(0)
    )
    frozen = frozen_lib.param_shapes(learner.frozen(lconfig))
    step_fn = trainer.compile_train_step(
        lconfig, learner, optimizer, schedule, batch_sharding, replicated
    )
    t = time.perf_counter()
    spec = batch_spec(config)
    compiled = step_fn.lower(state, spec, jax.random.key(0), frozen).compile()
    mem = compiled.memory_analysis()
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    report = {
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "compile_seconds": time.perf_counter() - t,
        "learner_params": count(state.params),
        "frozen_params": count(frozen),
        "precomputed_query_embedding": "query_embedding" in spec,
        "precomputed_backbone_stages": sorted(k for k in spec if "_features/" in k),
    }
    for field in (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
    ):
        if mem is not None and hasattr(mem, field):
            report[field.replace("_in_bytes", "_gib")] = getattr(mem, field) / 2**30
    return report


def main(argv) -> None:
    del argv
    if flags.FLAGS.compile_only:
        print(json.dumps(compile_only(flags.FLAGS.config), indent=2))
        return
    if not flags.FLAGS.workdir:
        raise app.UsageError("--workdir is required to train")
    try:
        train(flags.FLAGS.config, flags.FLAGS.workdir)
    except frozen_lib.RandomWeightsError as e:
        logging.error("%s", e)
        sys.exit(2)
    except NonFiniteLoss as e:
        logging.error("%s", e)
        sys.exit(3)


if __name__ == "__main__":
    _define_flags()
    flags.mark_flags_as_required(["config"])
    app.run(main)
