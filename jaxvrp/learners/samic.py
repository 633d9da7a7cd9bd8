"""SAMIC: HSNet as an in-context heat-map predictor whose peaks prompt a frozen SAM.

Paper: papers/samic.md (no public code). HSNet (`jaxvrp.learners.hsnet`, a port of
juhongm999/hsnet) predicts, from a reference image whose features are masked by the
Gaussian heat map of its point prompts (§3.2-3.3), a heat map of the target image; its
peaks (threshold 0.5, connected components, one point each; §3.4) are SAM's point prompts.
HSNet is trained with the saliency losses KLD + CC + NSS (§3.5) against the Gaussian heat
map of the target's points.

    config = make_config(backbone="resnet50", sam="vit_h")      # the paper's set-up
    params = init(rng, config)                                 # HSNet's 2.6M parameters
    heat = heatmap(params, frozen, batch, config=config)       # (B, H, W) in [0, 1]
    logits = apply(params, frozen, batch, config=config)       # (B, H, W) SAM logits
    loss, terms = loss_fn(params, frozen, batch, config=config, rng=rng)

`frozen = {"sam": sam_params, "backbone": backbone_params}`. Batch: the learners' standard
keys (`query_image` (B, H, W, 3), `support_images` (B, K, H, W, 3), ImageNet-normalised)
plus `support_points` (B, K, P, 2) float (x, y) pixels of each reference with
`support_point_valid` (B, K, P) bool, and for the loss `query_points` (B, P, 2) with
`query_point_valid` (B, P). `jaxvrp.learners.mask_points.add_points` derives them from
masks. Every choice the paper leaves open is an option; see docs/samic.md.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvrp.image import resize_bilinear
from jaxvrp.learners import frozen_sam, heatmaps, hsnet, registry
from jaxvrp.learners.protocol import FrozenSpec, Learner
from jaxvrp.sam import config as sam_config
from jaxvrp.sam import model as sam_model

Params = dict[str, Any]

NAME = "samic"
HEATMAPS = ("channel_softmax", "spatial_softmax")
POINTS = ("centroid", "peak")
SAM_CALLS = ("per_component", "joint")
POINT_SOURCES = ("interior", "sam_greedy")  # = mask_points.METHODS
NSS_FORMS = ("printed", "standard")
POINT_KEYS = ("support_points", "support_point_valid", "query_points", "query_point_valid")
# The logit of every pixel when the heat map has no peak: an empty mask, sigmoid ~ 4e-44.
EMPTY_LOGIT = -100.0


@dataclasses.dataclass(frozen=True)
class SAMICConfig:
    hsnet: Any  # hsnet.HSNetConfig (its backbone is SAMIC's frozen backbone)
    sam: sam_config.SamConfig
    sigma: float = 0.02  # §3.2, normalised coordinates
    threshold: float = 0.5  # §3.4, tau
    max_components: int = 8  # static bound on the prompts per image (largest kept)
    point: str = "centroid"  # §3.4; "peak": the component's heat-map maximum
    sam_calls: str = "per_component"  # one SAM call per component, masks united; or "joint"
    heatmap: str = "channel_softmax"  # §3.3 "followed by softmax"; or "spatial_softmax"
    kld_weight: float = 1.0  # §3.5: the three terms are summed
    cc_weight: float = 1.0
    nss_weight: float = 1.0
    nss: str = "printed"  # eq. 3 as printed; "standard": -mean z(Ghat) at the fixations
    kld_normalize: bool = True  # sum-normalise both maps before eq. 1 (saliency practice)
    eps: float = 1e-6  # §3.5
    multimask_output: bool = False  # True: SAM's best-of-three by predicted IoU
    connectivity: int = 8  # 8 matches cv2.findContours' outer contours; or 4
    # where the point keys come from (docs/samic.md "Points from masks"): "interior" =
    # `prepare` derives them from the batch's masks on the host at every step (one point
    # per connected component, farthest from its boundary); "sam_greedy" = SAMBOX-like
    # greedy points of the frozen SAM, computed once per (record, class) by
    # `python -m jaxvrp.precompute` into config.data.feature_cache and read from there
    # (`jaxvrp.point_store`); `jaxvrp segment` computes them for its references
    point_source: str = "interior"
    max_points: int = 8  # P, the padded number of points per mask
    points_seed: int = 0
    # "sam_greedy" only (`mask_points.sam_greedy_points`): stop when a point raises SAM's
    # IoU with the mask by less than this; candidates per step (interior points of the
    # largest false-negative components); seeded random candidates per step
    greedy_min_gain: float = 0.01
    greedy_candidates: int = 8
    greedy_random: int = 0


def _check(config: SAMICConfig) -> None:
    for field, allowed in (
        ("heatmap", HEATMAPS),
        ("point", POINTS),
        ("sam_calls", SAM_CALLS),
        ("nss", NSS_FORMS),
        ("point_source", POINT_SOURCES),
    ):
        if getattr(config, field) not in allowed:
            raise ValueError(f"{field} must be one of {allowed}, got {getattr(config, field)!r}")
    if config.connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {config.connectivity}")
    if config.max_components < 1:
        raise ValueError(f"max_components must be >= 1, got {config.max_components}")
    if config.max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {config.max_points}")
    if config.greedy_min_gain <= 0:
        raise ValueError(f"greedy_min_gain must be > 0, got {config.greedy_min_gain}")
    if config.sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {config.sigma}")
    if not 0.0 <= config.threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {config.threshold}")


def make_config(
    backbone: str = "resnet50",
    sam: str = "vit_h",
    sam_dtype: str = "float32",
    **options: Any,
) -> SAMICConfig:
    """A `SAMICConfig`: SAMIC's own options (the fields of `SAMICConfig`) are taken from
    `options`, the rest (e.g. `num_4d_layers`, Table 5) go to `hsnet.make_config`.
    §4.2: ResNet-50 (torchvision stem). The paper never names its SAM; PerSAM, its baseline,
    is ViT-H, hence the default."""
    own = {f.name for f in dataclasses.fields(SAMICConfig)} - {"hsnet", "sam"}
    mine = {k: v for k, v in options.items() if k in own}
    rest = {k: v for k, v in options.items() if k not in own}
    try:
        hsnet_config = hsnet.make_config(backbone=backbone, **rest)
    except TypeError as e:
        raise TypeError(f"{e}; SAMIC's own options: {sorted(own)}") from None
    config = SAMICConfig(
        hsnet=hsnet_config,
        sam=sam_config.get_config(sam, dtype=sam_dtype),
        **mine,
    )
    _check(config)
    return config


def init(rng: jax.Array, config: SAMICConfig) -> Params:
    """HSNet's parameters: SAMIC learns nothing else."""
    return hsnet.init(rng, config.hsnet)


def num_params(params: Params) -> int:
    return hsnet.num_params(params)


def _require(batch: dict, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(
            f"SAMIC needs batch keys {missing} (point prompts; "
            "jaxvrp.learners.mask_points.add_points derives them from masks)"
        )


def to_heatmap(logits: jax.Array, mode: str) -> jax.Array:
    """HSNet's two-channel logits (..., H, W, 2) -> heat map (..., H, W) in [0, 1].

    - "channel_softmax": softmax over the two channels, channel 1 (HSNet's foreground
      probability; the reading of §3.3's "followed by softmax" used by default);
    - "spatial_softmax": softmax over all pixels of (channel 1 - channel 0), divided by its
      maximum, i.e. exp(d - max d): the peak is 1, as the max-normalised targets.
    """
    if mode == "channel_softmax":
        return jax.nn.softmax(logits, axis=-1)[..., 1]
    if mode == "spatial_softmax":
        d = logits[..., 1] - logits[..., 0]
        return jnp.exp(d - d.max(axis=(-2, -1), keepdims=True))
    raise ValueError(f"heatmap must be one of {HEATMAPS}, got {mode!r}")


def reference_heatmaps(batch: dict, config: SAMICConfig) -> jax.Array:
    """The Gaussian heat maps of the reference points (§3.2): (B, K, H, W)."""
    size = batch["support_images"].shape[2:4]
    return heatmaps.gaussian_heatmap(
        batch["support_points"], batch["support_point_valid"], size, config.sigma
    )


def target_heatmap(batch: dict, config: SAMICConfig) -> jax.Array:
    """The Gaussian heat map of the target's points, the training target: (B, H, W)."""
    _require(batch, ("query_points", "query_point_valid"))
    size = batch["query_image"].shape[1:3]
    return heatmaps.gaussian_heatmap(
        batch["query_points"], batch["query_point_valid"], size, config.sigma
    )


def heatmap(params: Params, frozen: Params, batch: dict, *, config: SAMICConfig) -> jax.Array:
    """The predicted target heat map (B, H, W) in [0, 1] at the query size.

    Each of the K shots pairs the query with one reference whose backbone features HSNet
    masks with the reference's heat map (`support_weights`, §3.3); the K heat maps are
    averaged (§3.3, unlike HSNet's mask voting).
    """
    _require(batch, ("support_points", "support_point_valid"))
    query, support = batch["query_image"], batch["support_images"]
    b, k = support.shape[:2]
    size = query.shape[1:3]
    weights = reference_heatmaps(batch, config)
    query_stages, support_stages = hsnet.shot_stages(batch, k)  # precomputed, when served
    logits = hsnet.correlation_logits(
        params,
        frozen["backbone"],
        jnp.repeat(query, k, axis=0),
        support.reshape(b * k, *support.shape[2:]),
        weights.reshape(b * k, *weights.shape[2:]),
        config=config.hsnet,
        query_stages=query_stages,
        support_stages=support_stages,
    )
    if logits.shape[1:3] != size:  # HSNet's own final upsampling (align_corners=True)
        logits = resize_bilinear(logits, size, align_corners=True)
    heat = to_heatmap(logits, config.heatmap)
    return heat.reshape(b, k, *size).mean(axis=1)


def sam_embeddings(sam_params: Params, query: jax.Array, config: SAMICConfig) -> jax.Array:
    """SAM image embeddings of ImageNet-normalised queries (B, H, W, 3): bilinear
    (align_corners=True) resize to SAM's input (as `jaxvrp.learners.vrp`); the dataset's
    ImageNet normalisation equals SAM's pixel normalisation."""
    return frozen_sam.image_embeddings(sam_params, query, config.sam)


def to_sam_frame(points: jax.Array, size: tuple[int, int], image_size: int) -> jax.Array:
    """(x, y) pixels of an (H, W) image -> SAM's input frame, for the align_corners=True
    resize of the image to image_size^2: x * (S - 1) / (W - 1), likewise y."""
    h, w = size
    scale = jnp.array(
        [(image_size - 1) / max(w - 1, 1), (image_size - 1) / max(h - 1, 1)], jnp.float32
    )
    return points * scale


def _decode(sam_params, emb, points, labels, config: SAMICConfig) -> jax.Array:
    """SAM's low-res logits (N, 4h, 4w) for N prompt sets: the single mask, or with
    `multimask_output` the one of highest predicted IoU."""
    low, scores = sam_model.predict_masks(
        sam_params,
        emb,
        config=config.sam,
        points=points,
        point_labels=labels,
        multimask_output=config.multimask_output,
    )
    best = jnp.argmax(scores, axis=1)
    return jnp.take_along_axis(low, best[:, None, None, None], axis=1)[:, 0]


def prompt_sam(
    sam_params: Params,
    embeddings: jax.Array,
    points: jax.Array,
    valid: jax.Array,
    out_size: tuple[int, int],
    *,
    config: SAMICConfig,
) -> jax.Array:
    """Positive points (B, M, 2) in query pixels, valid (B, M) -> logits (B, H, W).

    - "per_component": one SAM call per point (B * M calls, one point each, plus SAM's own
      padding point), each mask resized to `out_size` (bilinear, align_corners=True), then
      united by the maximum logit over the valid components;
    - "joint": one call with all M points, the invalid ones labelled -1 (SAM's
      `not_a_point_embed`, so their tokens are not real points; with static shapes these
      extra padding tokens are still attended to, unlike SAM called with exactly the valid
      points).

    An image without any valid point gets `EMPTY_LOGIT` everywhere (an empty mask).
    """
    b, m = valid.shape
    pts = to_sam_frame(points, out_size, config.sam.image_size)

    def resize(low):
        return resize_bilinear(low, out_size, align_corners=True, channels_last=False)

    if config.sam_calls == "per_component":
        emb = jnp.repeat(embeddings, m, axis=0) if b > 1 else embeddings
        low = _decode(
            sam_params,
            emb,
            pts.reshape(b * m, 1, 2),
            jnp.ones((b * m, 1), jnp.int32),
            config,
        )
        logits = resize(low).reshape(b, m, *out_size)
        logits = jnp.where(valid[:, :, None, None], logits, -jnp.inf).max(axis=1)
    elif config.sam_calls == "joint":
        labels = jnp.where(valid, 1, -1).astype(jnp.int32)
        logits = resize(_decode(sam_params, embeddings, pts, labels, config))
    else:
        raise ValueError(f"sam_calls must be one of {SAM_CALLS}, got {config.sam_calls!r}")
    return jnp.where(valid.any(axis=1)[:, None, None], logits, EMPTY_LOGIT)


def prompts(heat: jax.Array, config: SAMICConfig) -> dict[str, jax.Array]:
    """§3.4's peaks of heat maps (B, H, W): `heatmaps.heatmap_prompts` with the config's
    threshold, bound, point rule and connectivity."""
    return heatmaps.heatmap_prompts(
        heat,
        threshold=config.threshold,
        max_components=config.max_components,
        point=config.point,
        connectivity=config.connectivity,
    )


def apply(
    params: Params,
    frozen: Params,
    batch: dict,
    *,
    config: SAMICConfig,
    rng: jax.Array | None = None,
    train: bool = False,
) -> jax.Array:
    """SAM's foreground logits (B, H, W) at the query size, prompted by the peaks of the
    predicted heat map. Not differentiable in `params` through the peaks (training uses
    `loss_fn`, on the heat map). `rng` and `train` are unused (HSNet has no dropout)."""
    del rng, train
    heat = heatmap(params, frozen, batch, config=config)
    peaks = prompts(heat, config)
    emb = frozen_sam.query_embeddings(frozen, batch, config.sam)
    return prompt_sam(
        frozen["sam"], emb, peaks["points"], peaks["valid"], heat.shape[1:], config=config
    )


def loss_fn(
    params: Params,
    frozen: Params,
    batch: dict,
    *,
    config: SAMICConfig,
    rng: jax.Array | None = None,
    train: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """§3.5's weighted KLD + CC + NSS between the predicted heat map and the Gaussian heat map
    of `query_points`; targets without any valid point are left out. (loss, {"kld", "cc",
    "nss"})."""
    del rng, train
    target = target_heatmap(batch, config)
    pred = heatmap(params, frozen, batch, config=config)
    return heatmaps.heatmap_loss(
        pred,
        target,
        kld_weight=config.kld_weight,
        cc_weight=config.cc_weight,
        nss_weight=config.nss_weight,
        nss=config.nss,
        kld_normalize=config.kld_normalize,
        eps=config.eps,
        valid=jnp.asarray(batch["query_point_valid"]).any(axis=1),
    )


def prepare(batch: dict, config: SAMICConfig) -> dict:
    """The protocol's host-side step: SAMIC's point keys. Keys already in the batch are
    kept (the "sam_greedy" points `jaxvrp.point_store` adds from its store, or those of
    `greedy_points`); else, with `point_source="interior"`, they are derived from the batch's
    reference masks (and the query mask when there is one), seeded by `points_seed`."""
    if all(k in batch for k in POINT_KEYS[:2]):
        return batch
    if config.point_source == "sam_greedy":
        raise ValueError(
            "SAMIC with point_source='sam_greedy' reads its points from the precomputed "
            "store, and this batch has no support_points: set config.data.feature_cache=DIR "
            "and run `python -m jaxvrp.precompute --config ...` (or config.data.precompute="
            "True); a batch built by hand takes them from samic.greedy_points"
        )
    from jaxvrp.learners import mask_points

    return mask_points.add_points(
        {k: np.asarray(v) for k, v in batch.items()},
        max_points=config.max_points,
        method="interior",
        seed=config.points_seed,
    )


def greedy_options(config: SAMICConfig) -> dict[str, Any]:
    """The keyword options of `mask_points.sam_greedy_points` the config sets."""
    return {
        "min_gain": float(config.greedy_min_gain),
        "max_candidates": int(config.greedy_candidates),
        "num_random": int(config.greedy_random),
    }


def greedy_predict(sam_params: Params, config: SAMICConfig):
    """`make_sam_predict` of the frozen SAM as the greedy rule calls it: image -> PredictFn."""
    from jaxvrp.learners import mask_points

    return functools.partial(
        mask_points.make_sam_predict,
        sam_params,
        config=config.sam,
        multimask_output=config.multimask_output,
    )


def greedy_points(batch: dict, sam_params: Params, config: SAMICConfig) -> dict:
    """`batch` with the point keys by the "sam_greedy" rule, computed now with the frozen SAM
    from its `support_annotations` (and `query_mask` if any); masks are seeded by position
    as `mask_points.add_points`. `jaxvrp segment` uses it for the user's references;
    training and evaluation read the same rule's points per (record, class) from
    `jaxvrp.point_store`, computed once."""
    from jaxvrp.learners import mask_points

    return mask_points.add_points(
        {k: np.asarray(v) for k, v in batch.items()},
        max_points=config.max_points,
        method="sam_greedy",
        seed=config.points_seed,
        sam_predict=greedy_predict(sam_params, config),
        **greedy_options(config),
    )


def frozen_spec(config: SAMICConfig) -> FrozenSpec:
    """SAMIC reads HSNet's frozen backbone and prompts a frozen SAM."""
    return FrozenSpec(sam=config.sam, backbone=config.hsnet.backbone)


LEARNER = registry.register(
    Learner(
        name=NAME,
        title="SAMIC",
        make_config=make_config,
        init=init,
        apply=apply,
        loss_fn=loss_fn,
        frozen=frozen_spec,
        module=__name__,
        batch_keys=POINT_KEYS,
        prepare=prepare,
        backbone_stages=lambda c: hsnet.precomputable_stages(c.hsnet),
    )
)
