"""SSPrompt's own protocol (setting 1): semantic segmentation from k labelled images per class.

    python -m jaxvrp.ssprompt_semantic --config configs/ssprompt.py:semantic --workdir DIR

Paper (papers/ssprompt.md §4.2, Tables 2, 5, 6): "16-shot" = 16 labelled images per class;
one set of prompts per class (C = the dataset's classes); cross-entropy for semantic
segmentation; SGD, weight decay 1e-4, base lr 1e-3, poly schedule with power 0.9; random flip;
semantic mIoU on the validation split. On SAM (our port) each class c has its own SpaPrompt
set {ẑ_c (N, D), θ_c (N,)} and, with SemPrompt, one class token {ẑ^T_c, θ^T_c} fused with the
default class embedding (`jaxvrp.learners.ssprompt.class_embedding` over the class's shots).
Each class's prompts go through the frozen decoder on the image: one logit map per class;
per pixel a softmax over [background logit 0, the C class logits], label 255 ignored.

Steps:

1. The k-shot subset (`select_shots`): for each class, `shots` image ids drawn without
   replacement (`np.random.default_rng([seed, class])`) from the train split's images that
   contain the class, sorted by id; saved as `workdir/kshot.json` and read back by a
   resumed run (a saved list that disagrees with the config is an error). The training set
   is the union of the classes' images, each with its full label map.
2. The frozen SAM encodes every training image and its horizontal flip once (the encoder is
   frozen, so random flip = a random choice between the two precomputed embeddings);
   `jaxvrp.learners.ssprompt.defaults` and the class embeddings are computed once.
3. Training with `jaxvrp.loop` (mesh, jitted step, checkpoints with the data iterator,
   metrics.jsonl); only the prompt params are learned (SAM sits behind stop_gradient).
4. Semantic mIoU on the validation split (its first `data.max_eval_images` images; 0 = all;
   `confusion_matrix`, `semantic_miou`): per label
   (background and the C classes, the PASCAL VOC convention) intersection / union of the
   summed confusion matrix, averaged over the labels with a non-empty union; written to
   `workdir/semantic_results.json`.

Datasets: "procedural" (`jaxvrp.data.procedural`: 20 classes, train -> test) and "pascal5i"
(the PASCAL-5i build, `jaxvrp.data.builders.pascal`, whose records are VOC2012 / SBD images
with their full class-index maps: 20 classes, train_aug -> VOC val); both records keep each
image's full label map (`jaxvrp.data.schema`).

Not stated in the paper, chosen here: SGD momentum 0.9 (the DeepLab setting the paper cites
for its loss); ẑ starts equal to the defaults (so step 0 is SAM with the default prompts for
any ŵ); square images (`data.image_size`) instead of shorter side 512; the step count.
"""

import json
import sys
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxvrp import configs, loop
from jaxvrp import frozen as frozen_lib
from jaxvrp.data import datasets, episodes, procedural
from jaxvrp.data.episodes import _decode
from jaxvrp.data.schema import IGNORE
from jaxvrp.image import normalized_image, resize_bilinear, resized_mask
from jaxvrp.learners import frozen_sam, ssprompt
from jaxvrp.learners.protocol import FrozenSpec

# dataset -> (train split, validation split); both builds keep each image's full label map
SPLITS = {"procedural": ("train", "test"), "pascal5i": ("train", "val")}


# ----------------------------------------------------------------------------- k-shot subset


def image_classes(source) -> tuple[dict[str, list[int]], dict[str, int]]:
    """({image_id: its class ids}, {image_id: record index}) of every record of a source."""
    classes_of, where = {}, {}
    for i in range(len(source)):
        r = source[i]
        image_id = r["image_id"]
        image_id = image_id.decode() if isinstance(image_id, bytes) else str(image_id)
        classes_of[image_id] = [int(c) for c in np.asarray(r["classes"]).tolist()]
        where[image_id] = i
    return classes_of, where


def select_shots(
    classes_of: dict[str, list[int]], classes, shots: int, seed: int
) -> dict[int, list[str]]:
    """{class: `shots` image ids containing it}, drawn without replacement with
    `np.random.default_rng([seed, class])` from the class's ids in sorted order; returned
    sorted. A class with fewer images than `shots` is an error naming it."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    out = {}
    for c in sorted(int(c) for c in classes):
        ids = sorted(i for i, cs in classes_of.items() if c in cs)
        if len(ids) < shots:
            raise ValueError(f"class {c} is in {len(ids)} images, fewer than shots={shots}")
        pick = np.random.default_rng([seed, c]).choice(len(ids), size=shots, replace=False)
        out[c] = sorted(ids[i] for i in pick)
    return out


def shot_list(config, workdir: Path, classes_of: dict[str, list[int]], classes) -> dict:
    """The saved k-shot list of `workdir/kshot.json`, written (atomically) on first use; a
    saved list made for another dataset / shots / seed / classes is an error."""
    path = Path(workdir) / "kshot.json"
    want = {
        "dataset": config.data.dataset,
        "procedural_config": config.data.procedural_config,
        "split": SPLITS[config.data.dataset][0],
        "shots": int(config.data.shots),
        "seed": int(config.data.shot_seed),
        "classes": [int(c) for c in classes],
    }
    if path.exists():
        saved = json.loads(path.read_text())
        meta = {k: saved.get(k) for k in want}
        if meta != want:
            raise ValueError(f"{path} was made for {meta}, not for this config's {want}")
        return {int(c): ids for c, ids in saved["images"].items()}
    chosen = select_shots(classes_of, classes, config.data.shots, config.data.shot_seed)
    if jax.process_index() == 0:
        tmp = path.with_name(".kshot.json.tmp")
        body = {**want, "images": {str(c): ids for c, ids in chosen.items()}}
        tmp.write_text(json.dumps(body, indent=1) + "\n")
        tmp.replace(path)
    return chosen


# ----------------------------------------------------------------------------- data


def label_table(classes) -> np.ndarray:
    """(256,) uint8 lookup from dataset class ids to labels: 0 background, class i of the
    sorted `classes` -> i + 1, 255 ignore, any other id -> background."""
    table = np.zeros(256, np.uint8)
    for i, c in enumerate(sorted(classes)):
        table[int(c)] = i + 1
    table[IGNORE] = IGNORE
    return table


def load_examples(source, records, size: int, table: np.ndarray):
    """Images (n, S, S, 3) ImageNet-normalised and label maps (n, S, S) uint8 (0..C, 255;
    resized nearest) of the given records."""
    images, labels = [], []
    for rec in records:
        r = source[int(rec)]
        images.append(normalized_image(_decode(r["image"], "RGB"), size))
        mask = _decode(r["mask"], "L")
        labels.append(table[resized_mask(mask.reshape(mask.shape[:2]), size)])
    return np.stack(images), np.stack(labels)


def embed(sam_params, images: np.ndarray, sam, batch: int) -> np.ndarray:
    """SAM image embeddings (n, g, g, D) of normalised images (n, S, S, 3), `batch` at a time."""
    fn = jax.jit(lambda p, x: frozen_sam.image_embeddings(p, x, sam))
    out = []
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        pad = batch - len(chunk)
        full = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk
        out.append(np.asarray(fn(sam_params, full))[: len(chunk)])
    return np.concatenate(out)


def train_dataset(num_images: int, local_batch: int, seed: int, process_index: int, count: int):
    """Endless batches of (image index, flip) for this host: epoch e visits every image once
    in the order `default_rng([seed, e]).permutation(n)`, each flipped with probability 1/2
    (`default_rng([seed, e, position])`). Checkpointable (grain)."""

    def item(j):
        e, pos = divmod(int(j), num_images)
        index = np.random.default_rng([seed, e]).permutation(num_images)[pos]
        flip = np.random.default_rng([seed, e, pos]).integers(2)
        return {"index": np.int32(index), "flip": np.int32(flip)}

    ds = grain.MapDataset.range(2**62)[process_index::count].map(item)
    return ds.batch(local_batch, drop_remainder=True).to_iter_dataset()


# ----------------------------------------------------------------------------- model


def class_logits(params, sam_params, embeddings, dflt, z_semantic, out_size, config):
    """Each class's prompts on each image: embeddings (B, g, g, D) -> (B, C, H, W) logits at
    `out_size` (one decoder call per (image, class) pair, all in one batch)."""
    tokens = ssprompt.prompt_tokens(params, dflt, z_semantic, config)  # (C, T, D)
    b, c = embeddings.shape[0], tokens.shape[0]
    emb = jnp.repeat(embeddings, c, axis=0)
    tok = jnp.tile(tokens, (b, 1, 1))
    low = ssprompt.decode(sam_params, emb, tok, dflt, config)  # (B * C, m, m)
    low = resize_bilinear(low, out_size, align_corners=True, channels_last=False)
    return low.reshape(b, c, *out_size)


def with_background(logits: jax.Array) -> jax.Array:
    """(B, C, H, W) class logits -> (B, 1 + C, H, W) with the background logit 0 first."""
    return jnp.concatenate([jnp.zeros_like(logits[:, :1]), logits], axis=1)


def semantic_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-pixel softmax cross-entropy over [background logit 0, C class logits], mean over
    the pixels whose label is not 255. logits (B, C, H, W), labels (B, H, W) in 0..C / 255."""
    full = with_background(logits)
    valid = labels != IGNORE
    lab = jnp.where(valid, labels, 0).astype(jnp.int32)
    logp = jax.nn.log_softmax(full, axis=1)
    nll = -jnp.take_along_axis(logp, lab[:, None], axis=1)[:, 0]
    v = valid.astype(jnp.float32)
    return (nll * v).sum() / jnp.maximum(v.sum(), 1.0)


def predict_labels(logits: jax.Array) -> jax.Array:
    """(B, C, H, W) -> (B, H, W) int32 labels 0..C (argmax with the background logit 0)."""
    return jnp.argmax(with_background(logits), axis=1).astype(jnp.int32)


def confusion_matrix(pred: np.ndarray, label: np.ndarray, num_labels: int) -> np.ndarray:
    """(L, L) int64 counts [true label, predicted label] over pixels whose label is not 255."""
    pred, label = np.asarray(pred).ravel(), np.asarray(label).ravel()
    keep = label != IGNORE
    idx = label[keep].astype(np.int64) * num_labels + pred[keep].astype(np.int64)
    return np.bincount(idx, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def semantic_miou(conf: np.ndarray) -> dict:
    """Standard semantic mIoU from a confusion matrix (L, L): IoU_l = tp / (tp + fp + fn)
    per label, averaged over the labels with a non-empty union (label 0 = background
    included, as PASCAL VOC); also pixel accuracy."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    return {
        "miou": float(np.nanmean(iou)) if present.any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / max(conf.sum(), 1)),
        "per_class_iou": {int(i): float(v) for i, v in enumerate(iou) if present[i]},
    }


def make_optimizer(config, total_steps: int):
    """SGD (momentum), weight decay added to the gradient (torch SGD's), poly(power) decay
    of the rate to 0 over the run (paper §4.2)."""
    o = config.optimizer
    schedule = optax.polynomial_schedule(o.lr, 0.0, o.power, max(total_steps, 1))
    return optax.chain(
        optax.add_decayed_weights(o.weight_decay),
        optax.sgd(schedule, momentum=o.momentum or None),
    ), schedule


# ----------------------------------------------------------------------------- run


def _classes(config) -> list[int]:
    """Every class of the dataset (1-based ids)."""
    if config.data.dataset not in SPLITS:
        raise ValueError(
            f"setting 1 runs on {sorted(SPLITS)}; got data.dataset={config.data.dataset!r}"
        )
    if config.data.dataset == "pascal5i":
        from jaxvrp.data import folds

        return list(range(1, len(folds.PASCAL_CLASSES) + 1))
    return list(range(1, procedural.NUM_CLASSES + 1))


def prepare(config, workdir: Path, sam_params) -> dict:
    """Everything computed once: the k-shot list, the training images' embeddings (and of
    their flips) and labels, the defaults and the class embeddings."""
    lconfig = ssprompt.make_config(**config.model.to_dict())
    classes = _classes(config)
    train_split, _ = SPLITS[config.data.dataset]
    src = datasets.source(config, config.data.dataset, train_split)  # builds procedural
    scan = src
    if config.data.dataset != "procedural":  # read ids and classes without decoding images
        name = datasets.TFDS_NAME[config.data.dataset]
        scan = episodes.open_source(name, train_split, datasets.data_dir(config), images=False)
    classes_of, where = image_classes(scan)
    shots = shot_list(config, workdir, classes_of, classes)
    ids = sorted({i for v in shots.values() for i in v})
    table = label_table(classes)
    images, labels = load_examples(src, [where[i] for i in ids], config.data.image_size, table)
    both = np.concatenate([images, images[:, :, ::-1]])
    emb = embed(sam_params, both, lconfig.sam, config.batch_size)
    n = len(ids)
    emb = np.stack([emb[:n], emb[n:]], axis=1)  # (n, 2, g, g, D): as is, flipped
    labels = np.stack([labels, labels[:, :, ::-1]], axis=1)  # (n, 2, S, S)
    dflt = ssprompt.defaults(sam_params, lconfig)
    z_sem = None
    if lconfig.semantic:
        scale = ssprompt.token_scale(dflt["spatial"])
        rows = []
        for i, c in enumerate(classes):
            sel = [ids.index(x) for x in shots[c]]
            w = ssprompt.cell_weights(jnp.asarray(labels[sel, 0] == i + 1), lconfig.sam)
            rows.append(ssprompt.class_embedding(jnp.asarray(emb[sel, 0]), w, scale)[0])
        z_sem = jnp.stack(rows)[:, None]  # (C, 1, D)
    return {
        "lconfig": lconfig,
        "classes": classes,
        "shots": shots,
        "image_ids": ids,
        "embeddings": emb,
        "labels": labels,
        "defaults": dflt,
        "z_semantic": z_sem,
    }


def init_params(prep: dict) -> dict:
    """ẑ = the defaults (spatial: the grid tokens for every class; semantic: each class's
    embedding), θ = 0."""
    c = len(prep["classes"])
    z_sp = jnp.broadcast_to(prep["defaults"]["spatial"], (c, *prep["defaults"]["spatial"].shape))
    return ssprompt.init_prompts(z_sp, prep["z_semantic"], prep["lconfig"])


def loss_fn(params, batch, consts, lconfig):
    """Semantic cross-entropy of a batch {"embedding" (B, g, g, D), "label" (B, S, S)}."""
    sam_params = jax.lax.stop_gradient(consts["sam"])
    size = batch["label"].shape[1:]
    logits = class_logits(
        params, sam_params, batch["embedding"], consts["defaults"], consts["z_semantic"], size,
        lconfig,
    )  # fmt: skip
    return semantic_loss(logits, batch["label"])


def evaluate(config, params, consts, lconfig, classes) -> dict:
    """Semantic mIoU of `params` on the validation split (all its images)."""
    _, batch_sharding, replicated = loop.mesh_and_shardings()
    _, val_split = SPLITS[config.data.dataset]
    src = datasets.source(config, config.data.dataset, val_split)
    table = label_table(classes)
    size = config.data.image_size
    num_labels = len(classes) + 1
    sam = lconfig.sam

    def predict(p, c, images):
        emb = frozen_sam.image_embeddings(c["sam"], images, sam)
        out = (size, size)
        logits = class_logits(p, c["sam"], emb, c["defaults"], c["z_semantic"], out, lconfig)
        return predict_labels(logits)

    fn = jax.jit(
        predict, in_shardings=(replicated, replicated, batch_sharding), out_shardings=batch_sharding
    )
    conf = np.zeros((num_labels, num_labels), np.int64)
    cap = int(config.data.max_eval_images)
    count = min(len(src), cap) if cap else len(src)
    mine = list(range(jax.process_index(), count, jax.process_count()))
    local = config.batch_size // jax.process_count()
    for i in range(0, len(mine), local):
        recs = mine[i : i + local]
        images, labels = load_examples(src, recs, size, table)
        pad = local - len(recs)
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, 0)])
        pred = fn(params, consts, loop.global_batch({"x": images}, batch_sharding)["x"])
        pred = np.concatenate([np.asarray(s.data) for s in pred.addressable_shards])[: len(recs)]
        conf += confusion_matrix(pred, labels, num_labels)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        conf = np.asarray(multihost_utils.process_allgather(conf)).sum(axis=0)
    result = semantic_miou(conf)
    result["images"] = count
    return result


def train(config, workdir) -> dict:
    """Setting 1 end to end: k-shot list, training to `config.total_steps`, semantic mIoU.
    Returns {"train": last logged metrics, "eval": semantic mIoU results}; writes
    `workdir/semantic_results.json`."""
    workdir = Path(workdir)
    lconfig = ssprompt.make_config(**config.model.to_dict())
    spec = FrozenSpec(sam=lconfig.sam)
    frozen_lib.check(config, spec)
    workdir.mkdir(parents=True, exist_ok=True)
    if config.distributed:
        loop.initialize_distributed(config)
    _, batch_sharding, replicated = loop.mesh_and_shardings()
    loop.check_batch_size(config.batch_size)
    sam_params = frozen_lib.load(config, spec)["sam"]
    prep = prepare(config, workdir, sam_params)
    total = int(config.total_steps)
    optimizer, schedule = make_optimizer(config, total)
    params = init_params(prep)
    state = loop.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
    consts = jax.device_put(
        {"sam": sam_params, "defaults": prep["defaults"], "z_semantic": prep["z_semantic"]},
        replicated,
    )
    state = jax.device_put(state, replicated)

    def step_fn(state, batch, consts):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, consts, lconfig)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
        return loop.TrainState(state.step + 1, params, opt_state), metrics

    step = loop.compile_step(step_fn, batch_sharding, replicated)
    emb, labels = prep["embeddings"], prep["labels"]
    local = config.batch_size // jax.process_count()
    data = train_dataset(
        len(emb), local, configs.data_seed(config), jax.process_index(), jax.process_count()
    )
    iterator = iter(data)

    def run(state, b):
        idx, flip = np.asarray(b["index"]), np.asarray(b["flip"])
        batch = {"embedding": emb[idx, flip], "label": labels[idx, flip].astype(np.int32)}
        return step(state, loop.global_batch(batch, batch_sharding), consts)

    mgr = loop.checkpoint_manager(workdir, config)
    state, start = loop.restore_latest(mgr, state, iterator, workdir)
    end = total if not config.stop_after else min(total, start + int(config.stop_after))
    state, last = loop.run_steps(
        run, state, iterator, mgr, workdir, start=start, end=end, config=config, tensorboard=False
    )
    result = {"train": last}
    if end == total:
        result["eval"] = evaluate(config, state.params, consts, lconfig, prep["classes"])
        logging.info(
            "SSPrompt setting 1: semantic mIoU %.1f over %d validation images",
            100 * result["eval"]["miou"],
            result["eval"]["images"],
        )
        if jax.process_index() == 0:
            out = workdir / "semantic_results.json"
            out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def _define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "configs/ssprompt.py:semantic,...")
    flags.DEFINE_string("workdir", None, "checkpoints, kshot.json, metrics, results")


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    try:
        result = train(f.config, f.workdir)
    except frozen_lib.RandomWeightsError as e:
        logging.error("%s", e)
        sys.exit(2)
    if "eval" in result:
        print(f"semantic mIoU {100 * result['eval']['miou']:.1f}")


if __name__ == "__main__":
    _define_flags()
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
