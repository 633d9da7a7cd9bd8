"""SSPrompt on SAM: learned prompt embeddings fused with the frozen prompt encoder's own.

From the paper (papers/ssprompt.md, arXiv 2401.04651; no public code). Every part of SAM
stays frozen; only prompt embeddings and their fusion weights are learned.

- **SpaPrompt** (eq. 4): N learnable embeddings ẑ_n (N x SAM's prompt width D) and one
  weight per prompt ŵ_n = sigmoid(θ_n), θ = 0 at the start (ŵ = 0.5: Table 5's plain
  average). The fused prompts are Z_n = ŵ_n·ẑ_n + (1 − ŵ_n)·z_n, where the defaults z_n are
  the frozen prompt encoder's embeddings of a √N x √N grid of positive points (`grid_points`:
  the official automatic mask generator's `build_point_grid` layout), computed once
  (`defaults`), never per step. The N fused tokens are SAM's sparse prompts, dense =
  `no_mask_embed`, a single output mask (mask token 0).
- **SemPrompt** (eq. 6) is an *adaptation*: SAM has no text encoder (paper App. B), so the
  default class embedding z^T is not a text embedding here but the masked mean of the SAM
  image embeddings of the class's annotated pixels (`class_embedding`), mapped to the prompt
  width by a fixed rule (see there). One learnable token ẑ^T with one weight per class, fused
  as eq. 6 and appended after the spatial tokens. `semantic=False` is SpaPrompt alone.
- `fixed_weight` w: ŵ = w for every prompt and no θ is learned (Table 5's ablation rows;
  0.5 = the plain average).
- `pad_token` (default True): after the prompts, the `not_a_point_embed` token SAM's prompt
  encoder appends to points given without a box. With it, ŵ = 0 is *exactly* SAM prompted
  with the grid points (a test checks this); without it the decoder sees only the fused
  tokens (VRP-SAM's convention for learned queries).

Two settings (`docs/ssprompt.md`):

1. The paper's protocol, semantic segmentation with 16 labelled images per class: one prompt
   set per class, softmax cross-entropy over [background logit 0, the C class logits]:
   `jaxvrp.ssprompt_semantic` (its own trainer and semantic mIoU).
2. Novel classes (few-shot episodes): **test-time prompt tuning**, this module's training-free
   learner "ssprompt". For each episode, ẑ starts from the prompt encoder's embeddings of N
   points sampled (seeded) in the reference annotation, (ẑ, θ) are fitted on the reference
   image(s) with Adam and BCE + Dice for `steps` steps (`fit`: one `lax.scan`), and the
   fitted prompts decode the target. `apply` vmaps `fit` over the episodes of a batch, so the
   evaluator shards it over devices like any evaluation batch.

Not stated in the paper, chosen here (documented in `docs/ssprompt.md`): ŵ = sigmoid(θ)
(the paper only says ŵ ∈ [0, 1]); the grid layout; the setting-2 step count, learning rate
and point sampling; the pad token.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvrp.image import resize_bilinear
from jaxvrp.learners import frozen_sam, registry
from jaxvrp.learners.protocol import FrozenSpec, Learner, no_params
from jaxvrp.sam import config as sam_config
from jaxvrp.sam import model as sam_model

Params = dict[str, Any]

EMPTY_LOGIT = -1e4  # the logits of an episode whose references have no annotated pixel


@dataclasses.dataclass(frozen=True)
class SSPromptConfig:
    sam: sam_config.SamConfig
    num_prompts: int = 100  # N, paper §4.2 (following SEEM); a square: a √N x √N grid
    semantic: bool = True  # SemPrompt (our adaptation) on top of SpaPrompt; False: SpaPrompt
    fixed_weight: float | None = None  # None: ŵ = sigmoid(θ) learned; else ŵ = this constant
    pad_token: bool = True  # SAM's `not_a_point_embed` after the prompts (points without box)
    # setting 2 (test-time prompt tuning per episode; not from the paper, ours):
    steps: int = 100  # Adam steps per episode (porting-facts B: 100-200)
    lr: float = 1e-2  # Adam learning rate on (ẑ, θ)
    seed: int = 0  # seed of the points sampled in the reference annotation

    def __post_init__(self) -> None:
        side = math.isqrt(self.num_prompts) if self.num_prompts > 0 else 0
        if side * side != self.num_prompts or side == 0:
            raise ValueError(
                f"num_prompts must be a positive square (a √N x √N point grid), got "
                f"{self.num_prompts}"
            )
        if self.fixed_weight is not None and not 0.0 <= self.fixed_weight <= 1.0:
            raise ValueError(f"fixed_weight must be in [0, 1] or None, got {self.fixed_weight}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    @property
    def learnable_weight(self) -> bool:
        return self.fixed_weight is None


def make_config(sam: str = "vit_h", sam_dtype: str = "float32", **options: Any) -> SSPromptConfig:
    """SSPrompt's config from a SAM variant name and options (`SSPromptConfig` fields)."""
    if "fixed_weight" in options and options["fixed_weight"] is not None:
        options["fixed_weight"] = float(options["fixed_weight"])
    return SSPromptConfig(sam_config.get_config(sam, dtype=sam_dtype), **options)


# ----------------------------------------------------------------------------- defaults


def grid_points(num_prompts: int, image_size: int) -> np.ndarray:
    """The √N x √N point grid in SAM input pixels (x, y): (N, 2) float32, row-major.

    The official automatic mask generator's `build_point_grid(n)`: cell centres
    (i + 0.5) / n of the unit square, scaled to the image (`apply_coords`).
    """
    n = math.isqrt(num_prompts)
    if n * n != num_prompts:
        raise ValueError(f"num_prompts must be a square, got {num_prompts}")
    c = (np.arange(n, dtype=np.float64) + 0.5) / n * image_size
    xs, ys = np.meshgrid(c, c)  # x varies fastest
    return np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float32)


def point_tokens(sam_params: Params, points: jax.Array, sam: sam_config.SamConfig) -> jax.Array:
    """The frozen prompt encoder's embeddings of positive points (B, P, 2) in SAM input pixels:
    (B, P, D) (the padding token SAM appends is dropped)."""
    b, p = points.shape[:2]
    sparse, _ = sam_model.encode_prompts(
        sam_params, config=sam, points=points, point_labels=jnp.ones((b, p), jnp.int32)
    )
    return sparse[:, :p]


def defaults(sam_params: Params, config: SSPromptConfig) -> dict[str, jax.Array]:
    """What the frozen prompt encoder gives once, before any step (paper §3.3, end):
    "spatial" (N, D) the grid points' embeddings, "pad" (1, D) the padding token, "dense"
    (g, g, D) `no_mask_embed` over the embedding grid."""
    sam = config.sam
    n = config.num_prompts
    grid = jnp.asarray(grid_points(n, sam.image_size))[None]
    sparse, dense = sam_model.encode_prompts(
        sam_params, config=sam, points=grid, point_labels=jnp.ones((1, n), jnp.int32)
    )
    out = {"spatial": sparse[0, :n], "pad": sparse[0, n:], "dense": dense[0]}
    return jax.tree.map(jax.lax.stop_gradient, out)


def cell_weights(masks: jax.Array, sam: sam_config.SamConfig) -> jax.Array:
    """Binary masks (B, H, W) -> the fraction of each embedding cell they cover (B, g, g):
    resized to SAM's input like the images (bilinear, align_corners=True), then the mean
    over each patch."""
    s, g = sam.image_size, sam.embedding_size
    x = resize_bilinear(masks.astype(jnp.float32), (s, s), align_corners=True, channels_last=False)
    p = s // g
    return x.reshape(x.shape[0], g, p, g, p).mean(axis=(2, 4))


def class_embedding(
    embeddings: jax.Array, weights: jax.Array, scale: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """SemPrompt's default class embedding z^T (our adaptation of the text embedding).

    embeddings (B, g, g, C) SAM image embeddings, weights (B, g, g) the class's coverage of
    each cell (`cell_weights`) over all B shots, scale () the target norm. The fixed rule:
    the weighted mean m of the image embeddings over every shot's cells; SAM's neck already
    gives the prompt width (C = D), so the width is kept as is; then m is rescaled to the norm
    `scale` (the mean norm of the default point tokens), so that the class token sits at the
    magnitude of the prompt tokens: z^T = scale · m / ‖m‖. Returns z^T (C,) and whether any
    cell was covered ().
    """
    total = weights.sum()
    mean = jnp.einsum("byx,byxc->c", weights, embeddings) / jnp.maximum(total, 1e-12)
    norm = jnp.linalg.norm(mean)
    z = scale * mean / jnp.maximum(norm, 1e-12)
    valid = (total > 0) & (norm > 0)
    return jnp.where(valid, z, 0.0), valid


def token_scale(spatial_defaults: jax.Array) -> jax.Array:
    """The mean L2 norm of the default point tokens (N, D): SemPrompt's class-token norm."""
    return jnp.linalg.norm(spatial_defaults, axis=-1).mean()


# ----------------------------------------------------------------------------- fusion


def fusion_weight(theta: jax.Array | None, config: SSPromptConfig, shape) -> jax.Array:
    """ŵ: sigmoid(θ), or the constant `fixed_weight` of the given shape."""
    if config.learnable_weight:
        return jax.nn.sigmoid(theta)
    return jnp.full(shape, config.fixed_weight, jnp.float32)


def fuse(z_hat: jax.Array, z_default: jax.Array, w: jax.Array) -> jax.Array:
    """Eq. 4 / 6: Z_n = ŵ_n·ẑ_n + (1 − ŵ_n)·z_n. z_hat (..., T, D), z_default (T, D) or
    broadcastable, w (..., T) -> (..., T, D)."""
    w = w[..., None]
    return w * z_hat + (1.0 - w) * z_default


def init_prompts(
    z_spatial: jax.Array, z_semantic: jax.Array | None, config: SSPromptConfig
) -> Params:
    """Learnable params from their initial embeddings: {"spatial": {"z_hat" (..., N, D),
    "theta" (..., N)}, "semantic": {"z_hat" (..., 1, D), "theta" (..., 1)}}; θ = 0 (ŵ = 0.5)
    and only with a learnable weight; "semantic" only with SemPrompt."""

    def one(z):
        p = {"z_hat": jnp.array(z, jnp.float32)}  # a copy: never aliases the defaults
        if config.learnable_weight:
            p["theta"] = jnp.zeros(z.shape[:-1], jnp.float32)
        return p

    out = {"spatial": one(z_spatial)}
    if config.semantic:
        out["semantic"] = one(z_semantic)
    return out


def prompt_tokens(
    params: Params, dflt: dict, z_semantic: jax.Array | None, config: SSPromptConfig
) -> jax.Array:
    """The sparse prompts: fused spatial tokens (..., N, D), then the fused class token
    (SemPrompt), then the pad token: (..., T, D). `z_semantic` (..., 1, D) the default class
    embedding(s)."""
    sp = params["spatial"]
    w = fusion_weight(sp.get("theta"), config, sp["z_hat"].shape[:-1])
    tokens = [fuse(sp["z_hat"], dflt["spatial"], w)]
    if config.semantic:
        se = params["semantic"]
        w_t = fusion_weight(se.get("theta"), config, se["z_hat"].shape[:-1])
        tokens.append(fuse(se["z_hat"], z_semantic, w_t))
    if config.pad_token:
        lead = tokens[0].shape[:-2]
        tokens.append(jnp.broadcast_to(dflt["pad"], (*lead, *dflt["pad"].shape)))
    return jnp.concatenate(tokens, axis=-2)


def decode(
    sam_params: Params, embeddings: jax.Array, tokens: jax.Array, dflt: dict, config
) -> jax.Array:
    """The frozen decoder: image b with prompt set b (or one image shared, batch 1);
    embeddings (B or 1, g, g, D), tokens (B, T, D) -> single-output low-res logits
    (B, m, m)."""
    b = tokens.shape[0]
    dense = jnp.broadcast_to(dflt["dense"], (b, *dflt["dense"].shape))
    low, _ = sam_model.decode_masks(
        sam_params, embeddings, tokens, dense, config=config.sam, multimask_output=False
    )
    return low[:, 0]


# ----------------------------------------------------------------------------- setting 2


def bce_dice(logits: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
    """BCE-with-logits (mean over pixels) + Dice (smoothed by 1) per shot, the mean over the
    valid shots: logits, target (K, H, W), valid (K,) -> (). VRP-SAM's loss terms, per shot."""
    bce = optax.sigmoid_binary_cross_entropy(logits, target).mean(axis=(1, 2))
    p = jax.nn.sigmoid(logits)
    num = 2.0 * (p * target).sum(axis=(1, 2))
    den = p.sum(axis=(1, 2)) + target.sum(axis=(1, 2))
    dice = 1.0 - (num + 1.0) / (den + 1.0)
    w = valid.astype(jnp.float32)
    return ((bce + dice) * w).sum() / jnp.maximum(w.sum(), 1.0)


def sample_points(
    annotations: jax.Array, rng: jax.Array, num_points: int, image_size: int
) -> tuple[jax.Array, jax.Array]:
    """N points drawn uniformly (with replacement) from the annotated pixels of all K shots.

    annotations (K, H, W) -> points (N, 2) (x, y) in SAM input pixels (`apply_coords`:
    pixel (col, row) scaled by S / W, S / H) and whether any pixel was annotated (). With
    none, the points are uniform over the image (the episode is then returned empty).
    """
    k, h, w = annotations.shape
    flat = (annotations > 0).reshape(-1)
    noise = jax.random.uniform(rng, (num_points, flat.size))
    idx = jnp.argmax(noise + 2.0 * flat[None], axis=1)  # (N,) flat (shot, row, col)
    pix = idx % (h * w)
    scale = jnp.array([image_size / w, image_size / h], jnp.float32)
    points = jnp.stack([pix % w, pix // w], axis=-1).astype(jnp.float32) * scale
    return points, flat.any()


def reference_loss(
    params: Params,
    sam_params: Params,
    ref_embeddings: jax.Array,
    targets: jax.Array,
    valid: jax.Array,
    dflt: dict,
    z_semantic: jax.Array | None,
    config: SSPromptConfig,
) -> jax.Array:
    """BCE + Dice of the prompts `params` on an episode's K references: ref_embeddings
    (K, g, g, D), targets (K, H, W) the annotations, valid (K,) -> (). SAM is behind
    stop_gradient: only the prompts get gradients."""
    sam_params = jax.lax.stop_gradient(sam_params)
    k, h, w = targets.shape
    tokens = prompt_tokens(params, dflt, z_semantic, config)
    tokens = jnp.broadcast_to(tokens, (k, *tokens.shape))
    low = decode(sam_params, ref_embeddings, tokens, dflt, config)
    logits = resize_bilinear(low, (h, w), align_corners=True, channels_last=False)
    return bce_dice(logits, targets.astype(jnp.float32), valid)


def fit(
    params: Params,
    sam_params: Params,
    ref_embeddings: jax.Array,
    targets: jax.Array,
    valid: jax.Array,
    dflt: dict,
    z_semantic: jax.Array | None,
    config: SSPromptConfig,
) -> tuple[Params, jax.Array]:
    """One episode's test-time prompt tuning: Adam on (ẑ, θ) for `config.steps` steps of
    `reference_loss`, one `lax.scan`.

    params: `init_prompts` of one episode; ref_embeddings (K, g, g, D); targets (K, H, W) the
    reference annotations; valid (K,) the shots that count; z_semantic (1, D) or None.
    Returns the fitted params and the loss before each step (steps,).
    """
    opt = optax.adam(config.lr)
    loss = lambda p: reference_loss(
        p, sam_params, ref_embeddings, targets, valid, dflt, z_semantic, config
    )

    def step(carry, _):
        p, state = carry
        value, grad = jax.value_and_grad(loss)(p)
        updates, state = opt.update(grad, state, p)
        return (optax.apply_updates(p, updates), state), value

    (params, _), history = jax.lax.scan(step, (params, opt.init(params)), None, length=config.steps)
    return params, history


def episode(
    sam_params: Params,
    ref_embeddings: jax.Array,
    annotations: jax.Array,
    query_embedding: jax.Array,
    rng: jax.Array,
    dflt: dict,
    out_size: tuple[int, int],
    config: SSPromptConfig,
) -> dict[str, jax.Array]:
    """Setting 2 on one episode: ẑ from points sampled in the annotations, `fit` on the
    references, decode the target.

    ref_embeddings (K, g, g, D), annotations (K, H, W), query_embedding (g, g, D) ->
    "logits" (H, W) at `out_size`, "losses" (steps,), "valid" (), "params" (the fitted ones).
    """
    sam = config.sam
    points, any_pixel = sample_points(annotations, rng, config.num_prompts, sam.image_size)
    z0 = point_tokens(sam_params, points[None], sam)[0]
    z_sem = None
    if config.semantic:
        weights = cell_weights(annotations, sam)
        z, _ = class_embedding(ref_embeddings, weights, token_scale(dflt["spatial"]))
        z_sem = z[None]
    params = init_prompts(z0, z_sem, config)
    shot_valid = (annotations > 0).any(axis=(1, 2))
    params, history = fit(
        params, sam_params, ref_embeddings, annotations, shot_valid, dflt, z_sem, config
    )
    tokens = prompt_tokens(params, dflt, z_sem, config)
    low = decode(sam_params, query_embedding[None], tokens[None], dflt, config)
    logits = resize_bilinear(low, out_size, align_corners=True, channels_last=False)[0]
    logits = jnp.where(any_pixel, logits, EMPTY_LOGIT)
    return {"logits": logits, "losses": history, "valid": any_pixel, "params": params}


def episode_keys(batch: dict, config: SSPromptConfig) -> jax.Array:
    """One key per episode: `config.seed` folded with the episode's `episode_seed` (set by
    `prepare` from the data's episode number, so an episode's points do not depend on the
    batch it is in), else with its position in the batch."""
    b = batch["support_images"].shape[0]
    ids = batch.get("episode_seed")
    ids = jnp.arange(b, dtype=jnp.int32) if ids is None else ids.astype(jnp.int32)
    base = jax.random.key(config.seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(ids)


def predict(sam_params: Params, batch: dict, config: SSPromptConfig) -> dict[str, jax.Array]:
    """Setting 2 on a batch of episodes, `episode` vmapped: "logits" (B, H, W), "losses"
    (B, steps), "valid" (B,), "params" (each leaf with a leading B)."""
    support, ann = batch["support_images"], batch["support_annotations"]
    if support.ndim != 5 or ann.shape != support.shape[:4]:
        raise ValueError(
            f"support_images (B, K, H, W, 3) and support_annotations (B, K, H, W) disagree: "
            f"{support.shape} and {ann.shape}"
        )
    b, k = support.shape[:2]
    out_size = tuple(int(x) for x in batch["query_image"].shape[1:3])
    sam_params = jax.lax.stop_gradient(sam_params)
    q_emb = frozen_sam.query_embeddings({"sam": sam_params}, batch, config.sam)
    s_emb = frozen_sam.image_embeddings(
        sam_params, support.reshape(b * k, *support.shape[2:]), config.sam
    )
    s_emb = s_emb.reshape(b, k, *s_emb.shape[1:])
    dflt = defaults(sam_params, config)
    run = lambda e, a, q, r: episode(sam_params, e, a, q, r, dflt, out_size, config)
    return jax.vmap(run)(s_emb, ann.astype(jnp.float32), q_emb, episode_keys(batch, config))


def apply(
    params: Params,
    frozen: Params,
    batch: dict,
    *,
    config: SSPromptConfig,
    rng: jax.Array | None = None,
    train: bool = False,
) -> jax.Array:
    """Setting 2's foreground logits (B, H, W); nothing is learned across episodes (`params`
    = {}); the points are seeded by `config.seed` and the episode (`episode_keys`), not by
    `rng`."""
    del params, rng, train
    return predict(frozen["sam"], batch, config)["logits"]


def prepare(batch: dict, config: SSPromptConfig) -> dict:
    """Host side: `episode_seed` (B,) int32 from the data's `episode` numbers, when present."""
    del config
    if "episode" not in batch:
        return batch
    return {**batch, "episode_seed": (np.asarray(batch["episode"]) % (2**31)).astype(np.int32)}


def frozen_spec(config: SSPromptConfig) -> FrozenSpec:
    """SSPrompt prompts SAM alone: no other backbone."""
    return FrozenSpec(sam=config.sam, backbone=None)


LEARNER = registry.register(
    Learner(
        name="ssprompt",
        title="SSPrompt",
        make_config=make_config,
        init=no_params,
        apply=apply,
        loss_fn=None,
        frozen=frozen_spec,
        module=__name__,
        batch_keys=("episode_seed",),
        prepare=prepare,
    )
)
