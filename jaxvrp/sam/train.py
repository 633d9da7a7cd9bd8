"""Train or fine-tune SAM: `python -m jaxvrp.sam.train --config configs/sam.py --workdir DIR`.

The loss and prompt simulation are `jaxvrp.sam.training` (SAM paper); the data
`jaxvrp.data.sam_examples`. Like `jaxvrp.train`: jit over a mesh of all devices (batch
sharded, params replicated), orbax checkpoints with the data iterator (a restarted run
resumes exactly), `metrics.jsonl`, a progress bar. At the end it writes the trained model as
a SAM checkpoint, `workdir/sam` (`jaxvrp.sam.load`, the `--sam` of `jaxvrp segment`), with
the training config and its held-out quality (`jaxvrp.sam.evaluate`) in the metadata.
"""

import dataclasses
import json
import sys
from functools import partial
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from jaxvrp import loop, params_io
from jaxvrp.data import sam_examples
from jaxvrp.loop import NonFiniteLoss
from jaxvrp.sam import config as sam_config
from jaxvrp.sam import evaluate as sam_evaluate
from jaxvrp.sam import model, training


def _define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "configs/sam.py", lock_config=True)
    flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and the model")


def train_config(config) -> training.TrainConfig:
    t = dict(config.train)
    t["trainable"] = tuple(p.strip() for p in t["trainable"].split(",") if p.strip())
    return training.TrainConfig(**t)


def initial_params(config) -> tuple[dict, sam_config.SamConfig]:
    """The checkpoint to fine-tune (its own architecture), or a seeded fresh init."""
    if config.init_checkpoint:
        return model.load(config.init_checkpoint)
    sam = sam_config.get_config(config.sam)
    return model.init(jax.random.key(config.seed), sam), sam


def make_optimizer(config, tconfig: training.TrainConfig, params) -> optax.GradientTransformation:
    """AdamW with linear warm-up then cosine decay, gradient clipping; frozen parts fixed."""
    o = config.optimizer
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, o.lr, max(o.warmup_steps, 1), max(int(config.total_steps), o.warmup_steps + 1)
    )
    adamw = optax.chain(
        optax.clip_by_global_norm(o.grad_clip) if o.grad_clip else optax.identity(),
        optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay),
    )
    labels = training.param_labels(params, tconfig)
    return optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, labels)


def _step(state, batch, rng, *, sam, tconfig, optimizer):
    rng = jax.random.fold_in(rng, state.step)
    loss_fn = partial(training.loss_fn, sam=sam, config=tconfig)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "grad_norm": optax.global_norm(grads)}
    return loop.TrainState(state.step + 1, params, opt_state), metrics


def _source(config):
    """None for generated procedural images, else the TFDS source of `config.data`."""
    if config.data.source == "procedural":
        return None
    from jaxvrp.data import datasets

    d = ml_collections.ConfigDict({"data": config.data.to_dict()})
    name = "procedural" if config.data.source == "procedural_fss" else config.data.source
    return datasets.source(d, name, config.data.split)


def train(config, workdir: str | Path) -> dict:
    """Train to `config.total_steps`; returns {"train": last metrics, "eval": held-out}."""
    workdir = epath.Path(workdir)  # gs://... stays remote
    workdir.mkdir(parents=True, exist_ok=True)
    if config.distributed:
        loop.initialize_distributed(config)
    lead = jax.process_index() == 0
    loop.check_batch_size(config.batch_size)
    tconfig = train_config(config)
    params, sam = initial_params(config)
    optimizer = make_optimizer(config, tconfig, params)
    state = loop.TrainState(np.int32(0), params, optimizer.init(params))
    _, batch_sharding, replicated = loop.mesh_and_shardings()
    data = sam_examples.dataset(
        _source(config),
        config.data,
        sam,
        batch_size=config.batch_size // jax.process_count(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    iterator = iter(data)
    mgr = loop.checkpoint_manager(workdir, config)
    state, start = loop.restore_latest(mgr, state, iterator, workdir)
    state = jax.device_put(state, replicated)
    step_fn = loop.compile_step(
        partial(_step, sam=sam, tconfig=tconfig, optimizer=optimizer), batch_sharding, replicated
    )
    rng = jax.random.key(config.seed + 1)
    total = int(config.total_steps)
    end = total if not config.stop_after else min(total, start + int(config.stop_after))
    state, last = loop.run_steps(
        lambda st, b: step_fn(st, loop.global_batch(b, batch_sharding), rng),
        state,
        iterator,
        mgr,
        workdir,
        start=start,
        end=end,
        config=config,
        tensorboard=False,
    )
    if end < total:
        return {"train": last}
    params = jax.device_get(state.params)
    quality = evaluate_heldout(params, sam, config)
    if lead:
        logging.info("held-out quality: %s", quality)
        export(workdir / "sam", params, sam, config, quality, steps=total)
    return {"train": last, "eval": quality}


def evaluate_heldout(params, sam, config) -> dict:
    """Oracle-prompt mIoU on the first `config.eval.num_images` procedural test images."""
    images, masks, _ = sam_evaluate.procedural_targets(
        config.eval.num_images, config.eval.seed, config.data.image_size, sam
    )
    result = sam_evaluate.evaluate_oracle_prompts(
        params, sam, images, masks, batch_size=config.eval.batch_size
    )
    result["images"] = f"procedural test stream, seed {config.eval.seed}, first "
    result["images"] += f"{config.eval.num_images} at {config.data.image_size} px"
    return result


def export(directory: Path, params, sam, config, quality: dict, *, steps: int) -> Path:
    """The trained model as a SAM checkpoint, with how it was made and how good it is."""
    metadata = {
        "kind": "sam",
        "config": dataclasses.replace(sam, dtype="float32").to_dict(),
        "training": {
            "command": "python -m jaxvrp.sam.train --config configs/sam.py --workdir DIR",
            "config": json.loads(config.to_json()),
            "steps": steps,
            "quality": quality,
        },
    }
    return params_io.save_params(directory, params, metadata, overwrite=True)


def main(argv) -> None:
    del argv
    if not flags.FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    try:
        result = train(flags.FLAGS.config, flags.FLAGS.workdir)
    except NonFiniteLoss as e:
        logging.error("%s", e)
        sys.exit(3)
    if "eval" in result:
        print(json.dumps(result["eval"], indent=2))


if __name__ == "__main__":
    _define_flags()
    flags.mark_flags_as_required(["config"])
    app.run(main)
