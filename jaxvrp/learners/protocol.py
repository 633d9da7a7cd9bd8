"""The learner protocol: what every method is to the trainer, evaluator, `jaxvrp segment`,
the demo and sweeps.

A method (VRP-SAM, ProSAM, a training-free baseline, ...) is one `Learner`: a frozen
dataclass of pure functions, registered by name in `jaxvrp.learners.registry`. The tools
only ever call these fields; none of them knows any method by name.

    learner = registry.get(config.learner)            # e.g. "vrp_sam"
    lconfig = learner.make_config(**config.model)     # backbone=..., sam=..., options
    params = learner.init(rng, lconfig)               # {} for a training-free method
    spec = learner.frozen(lconfig)                    # which frozen models it needs
    logits = learner.apply(params, frozen, batch, config=lconfig, rng=rng, train=False)
    loss, metrics = learner.loss_fn(params, frozen, batch, config=lconfig, rng=rng, train=True)

- `make_config(**model) -> config`: a hashable (frozen dataclass) config from the keyword
  arguments of an ml-collections config's `model` block. Unknown or bad options raise
  `TypeError` / `ValueError`.
- `init(rng, config) -> params`: a plain pytree of float32 arrays; `{}` when nothing is
  learned.
- `apply(params, frozen, batch, *, config, rng=None, train=False) -> (B, H, W)`: foreground
  logits at the query image's size (foreground where > 0). Jittable; `rng` drives dropout
  (train) or sampling inference modes.
- `loss_fn(params, frozen, batch, *, config, rng, train=True) -> (loss, {name: scalar})`:
  `None` for a training-free method, which the trainer then skips.
- `frozen(config) -> FrozenSpec`: the frozen SAM config it prompts and the frozen backbone
  config it reads (each `None` when not needed). `frozen` trees passed to `apply` /
  `loss_fn` hold exactly the needed keys, `"sam"` and/or `"backbone"`. A backbone that is
  the SAM's own encoder (`jaxvrp.backbones.sam_vit`) takes its weights from the SAM.
- Checkpoints (`jaxvrp.learners.checkpoint`): `{"learner": params}` plus the backbone's
  params when the spec names a backbone that is not the SAM's encoder, and metadata with
  `kind` = `name`, `config` = the `model` keyword arguments, `image_size` and `module`.
- `module`: the importable module whose import registers this learner. Built-in learners are
  found by the registry; a learner defined elsewhere (a user's package, a test) is found
  again in a fresh process (e.g. by `jaxvrp segment` reading its checkpoint) through it.
- `batch_keys`: the batch arrays `apply` / `loss_fn` read beyond the standard ones
  (`jaxvrp.trainer.MODEL_INPUTS`).
- `backbone_stages(config) -> {"query": stages, "support": stages}`: optional, the frozen
  backbone's annotation-independent stages the learner can read precomputed from the batch
  as `<role>_features/<stage>` arrays, (B, h, w, C) for the query and (B, K, h, w, C) for
  the references, each `jaxvrp.backbones.apply(...)[stage]` of the image at the backbone's
  input (`vrp.backbone_input_of`). `jaxvrp.precompute` stores and serves them with
  `data.backbone_features`; without them in the batch the learner runs its backbone.
- `prepare(batch, config) -> batch`: optional, host side (numpy), called by every tool on
  each host batch before it is sharded: derives the learner's own `batch_keys` from the
  standard ones (e.g. SAMIC's point prompts from the reference masks).

Randomness (dropout, ProSAM's prompt samples, GP-SAM's points): the trainer and the evaluator
pass `rng` as a (B,) key array, one key per example, `fold_in(rng, episode)` of the
episode's number (`batch["episode"]`; the trainer first folds in the step). A learner draws
each example's noise from its own key (`split_keys`, `shot_keys` and a `jax.vmap` of the
draw over the keys), so an episode gets the same noise whatever its position in the global
batch, the batch size, or the number of hosts and devices that share the batch: 2 processes
x 2 devices train exactly like 1 process x 4 devices with dropout on. Called with one key
(tests, `jaxvrp segment`, a user's script), a learner draws for the whole batch from it as
before. Why per-example keys rather than the trainer running `loss_fn` once per example
(`jax.vmap` over batches of one): a loss is a reduction over the batch (VRP-SAM's BCE is a
mean over every valid pixel of the batch, not a mean of per-example means), and a vmapped
loss would change it; per-example keys change only where the noise comes from, the learners
stay batched functions, and a learner that draws nothing (HSNet, SAMIC, PerSAM, a user's
deterministic one) needs no change. `jax.vmap` of the draws over the (B,) keys costs nothing
against the model.

Batch (fixed shapes, see `docs/learners.md`): `query_image` (B, H, W, 3), `support_images`
(B, K, H, W, 3), `support_annotations` (B, K, H, W); for the loss `query_mask` (B, H, W) and
optional `query_ignore` (B, H, W); optional `query_embedding` (B, h, w, C), precomputed SAM
image embeddings of the queries.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Params = Any


@dataclasses.dataclass(frozen=True)
class FrozenSpec:
    """The frozen models a learner needs: a `jaxvrp.sam.SamConfig` and a backbone config
    (`jaxvrp.backbones`), each `None` when not needed."""

    sam: Any = None
    backbone: Any = None

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys of the frozen tree: a subset of ("sam", "backbone")."""
        return tuple(k for k in ("sam", "backbone") if getattr(self, k) is not None)

    @property
    def backbone_is_sam_encoder(self) -> bool:
        from jaxvrp.backbones.sam_vit import SamViTConfig

        return isinstance(self.backbone, SamViTConfig)


@dataclasses.dataclass(frozen=True)
class Learner:
    """A method as pure functions (see the module docstring for each field's contract)."""

    name: str  # registry key, `config.learner`, checkpoint kind
    title: str  # how tables and figures name it, e.g. "VRP-SAM"
    make_config: Callable[..., Any]
    init: Callable[[Any, Any], Params]
    apply: Callable[..., Any]
    frozen: Callable[[Any], FrozenSpec]
    loss_fn: Callable[..., Any] | None = None
    module: str = ""
    batch_keys: tuple[str, ...] = ()
    prepare: Callable[[dict, Any], dict] | None = None
    backbone_stages: Callable[[Any], dict[str, tuple[str, ...]]] | None = None

    def stage_keys(self, config: Any) -> tuple[str, ...]:
        """The `<role>_features/<stage>` batch keys of `backbone_stages(config)` (none
        without it)."""
        if self.backbone_stages is None:
            return ()
        stages = self.backbone_stages(config)
        return tuple(f"{r}_features/{s}" for r in ("query", "support") for s in stages[r])

    @property
    def trainable(self) -> bool:
        return self.loss_fn is not None


def stored_features(batch: dict, role: str) -> dict[str, jax.Array] | None:
    """The batch's precomputed `<role>_features/<stage>` arrays as {stage: array}, or None
    when it has none (`role`: "query" or "support")."""
    head = f"{role}_features/"
    found = {k[len(head) :]: v for k, v in batch.items() if k.startswith(head)}
    return found or None


def no_params(rng: Any, config: Any) -> dict:
    """`init` of a training-free learner: nothing is learned."""
    del rng, config
    return {}


def _key_shape(rng: jax.Array) -> tuple[int, ...]:
    """The shape of a key array: typed keys (`jax.random.key`) or raw uint32 ones
    (`jax.random.PRNGKey`, trailing axis of key data)."""
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return tuple(rng.shape)
    return tuple(rng.shape[:-1])


def per_example(rng: jax.Array | None) -> bool:
    """Whether `rng` is a (B,) array of per-example keys (what the trainer and the
    evaluator pass) rather than one key for the whole batch."""
    if rng is None:
        return False
    shape = _key_shape(rng)
    if len(shape) > 1:
        raise ValueError(f"rng must be one key or a (B,) array of keys, got key shape {shape}")
    return len(shape) == 1


def example_keys(rng: jax.Array, episode: jax.Array) -> jax.Array:
    """(B,) keys `fold_in(rng, episode[i])` from one key and the episode numbers (B,)
    (non-negative integers below 2**32, `jaxvrp.trainer.model_inputs`)."""
    return jax.vmap(lambda e: jax.random.fold_in(rng, e))(jnp.asarray(episode, jnp.uint32))


def split_keys(rng: jax.Array, num: int = 2) -> jax.Array:
    """`jax.random.split(rng, num)` for one key; for (B,) per-example keys each example's
    key split on its own: (num, B). Either way `a, b = split_keys(rng)` unpacks."""
    if not per_example(rng):
        return jax.random.split(rng, num)
    return jnp.swapaxes(jax.vmap(lambda r: jax.random.split(r, num))(rng), 0, 1)


def shot_keys(rng: jax.Array | None, shots: int) -> jax.Array | None:
    """Keys for a batch whose K shots are folded into it (B * K items, example-major, as
    `jaxvrp.learners.vrp.shot_features`): (B,) per-example keys -> (B * K,) keys
    `fold_in(key_b, shot)`; one key (or None) is returned as it is."""
    if not per_example(rng):
        return rng
    keys = jax.vmap(lambda r: jax.vmap(lambda s: jax.random.fold_in(r, s))(jnp.arange(shots)))(rng)
    return keys.reshape(-1, *keys.shape[2:])
