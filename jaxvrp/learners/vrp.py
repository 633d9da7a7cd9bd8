"""VRP-SAM's visual reference prompt encoder, as pure functions.

Official: syp2ysy/VRP-SAM `model/VRP_encoder.py`, `model/base/transformer_decoder.py`,
`SAM2pred.py`. Module and parameter names follow the official module tree
(`downsample_query.0` -> `downsample_query_0`, ...), so official checkpoints convert by name.

    config = make_config(backbone="resnet50_deepstem", sam="vit_h")
    params = init(rng, config)                           # the learner's 1,592,064 parameters
    logits = apply(params, frozen, batch, config=config, rng=rng, train=True)   # (B, H, W)
    loss = loss_fn(params, frozen, batch, config=config, rng=rng)

`frozen = {"sam": sam_params, "backbone": backbone_params}` is a separate tree: gradients are
only ever taken with respect to `params`.

Batch (all arrays, fixed shapes):
- `query_image` (B, H, W, 3) and `support_images` (B, K, H, W, 3): ImageNet-normalised.
- `support_annotations` (B, K, H, W): binary reference annotations (point / scribble / box /
  mask, see `jaxvrp.data.annotations`).
- optional `query_embedding` (B, h, w, C): precomputed SAM image embeddings (a cache).
- optional precomputed frozen-backbone stages (`precomputable_stages`, `jaxvrp.precompute`
  with `data.backbone_features`): `query_features/<stage>` (B, h, w, C) for the query's
  `QUERY_STAGES` and `support_features/<stage>` (B, K, h, w, C) for each reference's
  `support_stages` (before the annotation masks layer3); the step then runs no backbone on
  the query and only layer4 on each masked reference.
- for the loss: `query_mask` (B, H, W) binary, optional `query_ignore` (B, H, W) bool.

Where the official code and the paper differ, or the code is weak, a config option chooses:
`pseudo_mask_minmax` (paper: min-max normalised pseudo-mask; code: raw; default code) and
`annotation_downsample` ("nearest", the official `F.interpolate(mode="nearest")`, which drops
most single-pixel points; "any": a feature cell counts as annotated if any pixel in it is,
which keeps them).
"""

import dataclasses
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvrp import backbones
from jaxvrp.backbones.dinov2 import Dinov2Config
from jaxvrp.backbones.sam_vit import SamViTConfig
from jaxvrp.image import resize_bilinear, resize_nearest
from jaxvrp.learners import frozen_sam, protocol, registry
from jaxvrp.learners.attention import (
    CrossAttentionLayer,
    SelfAttentionLayer,
    sine_position_embedding,
)
from jaxvrp.learners.losses import segmentation_loss
from jaxvrp.learners.protocol import FrozenSpec, Learner, stored_features
from jaxvrp.masks import any_pool
from jaxvrp.sam import config as sam_config
from jaxvrp.sam import model as sam_model
from jaxvrp.sam.common import Embedding

Params = dict[str, Any]

CHECKPOINT_KIND = "vrp_sam"


@dataclasses.dataclass(frozen=True)
class VRPConfig:
    backbone: Any  # a backbone config (jaxvrp.backbones)
    sam: sam_config.SamConfig
    num_queries: int = 50  # VRP-SAM paper and code
    hidden_dim: int = 256
    num_heads: int = 4
    num_layers: int = 1
    dropout: float = 0.5  # Dropout2d after the shared 1x1 conv (official code)
    pseudo_mask_minmax: bool = False
    annotation_downsample: str = "nearest"  # "nearest" (official) or "any"
    cosine_eps: float = 1e-7  # official get_pseudo_mask
    prototype_eps: float = 5e-4  # official mask_feature


def make_config(
    backbone: str = "resnet50_deepstem",
    sam: str = "vit_h",
    sam_dtype: str = "float32",
    **overrides: Any,
) -> VRPConfig:
    """A `VRPConfig` from a backbone name and a SAM variant name.

    `sam_dtype="bfloat16"` runs the frozen SAM in bf16 (float32 parameters). The prompt
    width (`hidden_dim`) is SAM's prompt embedding width (256 for official SAMs).
    """
    if overrides.get("annotation_downsample", "nearest") not in ("nearest", "any"):
        raise ValueError("annotation_downsample must be 'nearest' or 'any'")
    sam_cfg = sam_config.get_config(sam, dtype=sam_dtype)
    hidden = overrides.setdefault("hidden_dim", sam_cfg.prompt_embed_dim)
    if hidden != sam_cfg.prompt_embed_dim:
        raise ValueError(
            f"hidden_dim {hidden} must equal the SAM prompt width {sam_cfg.prompt_embed_dim}"
        )
    return VRPConfig(backbones.get_config(backbone), sam_cfg, **overrides)


def channel_dropout(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """PyTorch's Dropout2d on NHWC: zero whole channels per example, scale by 1/(1-rate).

    x (N, h, w, C); rng one key for the batch, or (N,) keys, each example's channels drawn
    from its own key (`jaxvrp.learners.protocol`: the same draw at any batch position)."""
    if protocol.per_example(rng):
        draw = lambda key: jax.random.bernoulli(key, 1.0 - rate, (1, 1, x.shape[-1]))
        keep = jax.vmap(draw)(rng)
    else:
        keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0], 1, 1, x.shape[-1]))
    return jnp.where(keep, x / (1.0 - rate), 0.0)


class TransformerDecoder(nn.Module):
    """50 learned queries: cross-attn to the reference, self-attn, cross-attn to the target,
    self-attn (official `transformer_decoder`, post-norm, no FFN)."""

    num_queries: int
    hidden_dim: int
    num_heads: int
    num_layers: int = 1

    @nn.compact
    def __call__(self, target: jax.Array, reference: jax.Array) -> jax.Array:
        """target, reference (B, h, w, C) -> queries (B, num_queries, C)."""
        b, h, w, c = target.shape
        pos = sine_position_embedding(h, w, c // 2).reshape(1, h * w, c)
        src_t = target.reshape(b, h * w, c)
        src_r = reference.reshape(b, h * w, c)
        queries = Embedding(self.num_queries, self.hidden_dim, name="supp_q_feat")()
        queries = jnp.broadcast_to(queries[None], (b, *queries.shape))
        d, n = self.hidden_dim, self.num_heads
        for i in range(self.num_layers):
            # As the official forward: every layer starts again from the learned queries and
            # only the last layer's output is returned (earlier layers do not contribute).
            out = CrossAttentionLayer(d, n, name=f"transformer_cross_attention_layers_0_{i}")(
                queries, src_r, pos
            )
            out = SelfAttentionLayer(d, n, name=f"transformer_self_attention_layers_0_{i}")(out)
            out = CrossAttentionLayer(d, n, name=f"transformer_cross_attention_layers_{i}")(
                out, src_t, pos
            )
            out = SelfAttentionLayer(d, n, name=f"transformer_self_attention_layers_{i}")(out)
        return out


class VRPEncoder(nn.Module):
    """Feature augmenter + prompt generator on precomputed backbone features."""

    config: VRPConfig

    @nn.compact
    def __call__(
        self,
        query_feat: jax.Array,
        support_feat: jax.Array,
        support_mask: jax.Array,
        pseudo_mask: jax.Array,
        *,
        train: bool,
        rng: jax.Array | None,
    ) -> jax.Array:
        """Mid-level features (B, h, w, Cin), masks (B, h, w, 1) -> prompts (B, Q, C)."""
        c = self.config
        down = nn.Conv(c.hidden_dim, (1, 1), use_bias=False, name="downsample_query_0")
        q = nn.relu(down(query_feat))
        s = nn.relu(down(support_feat))
        if train and c.dropout > 0:
            if rng is None:
                raise ValueError("train=True needs an rng for dropout")
            rq, rs = protocol.split_keys(rng)
            q, s = channel_dropout(q, c.dropout, rq), channel_dropout(s, c.dropout, rs)
        prototype = masked_average_pool(s, support_mask, c.prototype_eps)  # (B, C)
        proto_map = jnp.broadcast_to(prototype[:, None, None, :], s.shape)
        merge = nn.Conv(c.hidden_dim, (1, 1), use_bias=False, name="merge_1_0")
        s = nn.relu(merge(jnp.concatenate([s, proto_map, support_mask * 10.0], axis=-1)))
        q = nn.relu(merge(jnp.concatenate([q, proto_map, pseudo_mask * 10.0], axis=-1)))
        return TransformerDecoder(
            c.num_queries, c.hidden_dim, c.num_heads, c.num_layers, name="transformer_decoder"
        )(q, s)


def masked_average_pool(feat: jax.Array, mask: jax.Array, eps: float) -> jax.Array:
    """sum(feat * mask) / (sum(mask) + eps) over space: (B, h, w, C), (B, h, w, 1) -> (B, C)."""
    return (feat * mask).sum(axis=(1, 2)) / (mask.sum(axis=(1, 2)) + eps)


def downsample_annotation(ann: jax.Array, size: tuple[int, int], method: str) -> jax.Array:
    """Binary annotations (B, H, W) -> (B, h, w, 1) at feature resolution."""
    if method == "nearest":
        return resize_nearest(ann[..., None], size)

    # "any": a cell is annotated when any input pixel of its adaptive-pooling window is
    return any_pool(ann, size)[..., None]


def pseudo_mask(
    support4: jax.Array, query4: jax.Array, mask: jax.Array, eps: float, minmax: bool
) -> jax.Array:
    """Max cosine similarity of each query position to the masked support features.

    support4, query4 (B, h, w, C); mask (B, h', w', 1) -> (B, h, w, 1).
    """
    b, h, w, c = query4.shape
    if mask.shape[1:3] != (h, w):  # official: bilinear, align_corners=True
        mask = resize_bilinear(mask, (h, w), align_corners=True)
    s = (support4 * mask).reshape(b, -1, c)
    q = query4.reshape(b, -1, c)
    num = jnp.einsum("bsc,bqc->bsq", s, q)
    den = jnp.linalg.norm(s, axis=-1)[:, :, None] * jnp.linalg.norm(q, axis=-1)[:, None, :]
    sim = (num / (den + eps)).max(axis=1)  # (B, hw)
    if minmax:  # paper, eq. 2
        sim = frozen_sam.minmax(sim, 1, eps)
    return sim.reshape(b, h, w, 1)


def _mid_level(feats: dict[str, jax.Array]) -> jax.Array:
    """concat(layer2, layer3); layer2 resized to layer3's size when they differ (VGG)."""
    l2, l3 = feats["layer2"], feats["layer3"]
    if l2.shape[1:3] != l3.shape[1:3]:
        l2 = resize_bilinear(l2, l3.shape[1:3], align_corners=True)
    return jnp.concatenate([l2, l3], axis=-1)


def backbone_input(images: jax.Array, config: VRPConfig) -> jax.Array:
    """Images as the backbone takes them: a ViT needs sides that are multiples of its patch
    size, so DINOv2 gets a bilinear resize to the nearest multiples (512 -> 518 = 37 x 14);
    SAM's encoder takes exactly SAM's input size (bilinear, align_corners=True, as SAM's
    own input in `sam_embeddings`)."""
    return backbone_input_of(images, config.backbone)


def backbone_input_of(images: jax.Array, bb: Any) -> jax.Array:
    """`backbone_input` for a backbone config `bb`."""
    if isinstance(bb, SamViTConfig):
        s = (bb.image_size, bb.image_size)
        return images if images.shape[1:3] == s else resize_bilinear(images, s, align_corners=True)
    if not isinstance(bb, Dinov2Config):
        return images
    p = bb.patch_size
    size = tuple(max(1, round(n / p)) * p for n in images.shape[1:3])
    return images if size == images.shape[1:3] else resize_bilinear(images, size)


# The frozen backbone's annotation-independent stages `reference_features` reads, which
# `jaxvrp.precompute` can store per record (`data.backbone_features`): the query's mid-level
# (layer2, layer3) and layer4, and each reference's stages up to layer3 (its layer4 runs on
# the annotation-masked layer3, so it stays in the step).
QUERY_STAGES = ("layer2", "layer3", "layer4")
SUPPORT_STAGES = ("layer2", "layer3")
# ... plus a ViT's (DINOv2's) class/register tokens after layer3, which its layer4 continues
# from (they are not masked): stored as `support_features/layer3_prefix` (B, K, 1 + regs, D).
SUPPORT_PREFIX = "layer3_prefix"


def support_stages(bb: Any) -> tuple[str, ...]:
    """The reference stages `reference_features` reads for backbone config `bb`."""
    return (*SUPPORT_STAGES, SUPPORT_PREFIX) if isinstance(bb, Dinov2Config) else SUPPORT_STAGES


def precomputable_stages(config: VRPConfig) -> dict[str, tuple[str, ...]]:
    """`Learner.backbone_stages` of the learners on `shot_features` (VRP-SAM, ProSAM,
    GP-SAM): the query's `QUERY_STAGES` and the references' `support_stages`."""
    return {"query": QUERY_STAGES, "support": support_stages(config.backbone)}


def stored_stages(
    backbone_params: Params, images: jax.Array, bb: Any, stages: tuple[str, ...]
) -> dict[str, jax.Array]:
    """The backbone's `stages` of ImageNet-normalised images (B, H, W, 3), as
    `reference_features` computes them (one full pass on `backbone_input_of`): what
    `jaxvrp.precompute` stores, {stage: (B, h, w, C)} ((B, n, D) for a prefix)."""
    out = backbones.apply(backbone_params, backbone_input_of(images, bb), config=bb)
    return {s: jax.lax.stop_gradient(out[s]) for s in stages}


def with_stored_stages(
    batch: dict,
    backbone_params: Params,
    bb: Any,
    stages: dict[str, tuple[str, ...]] | None = None,
) -> dict:
    """`batch` (host arrays) plus the backbone's stages of its images as `jaxvrp.precompute`
    stores them with `data.backbone_features`: `query_features/<stage>` (B, h, w, C) for
    `stages["query"]`, `support_features/<stage>` (B, K, ...) for `stages["support"]`
    (a `Learner.backbone_stages(config)`; by default this module's `precomputable_stages`),
    computed here (benchmarks, tests, notebooks without a store)."""
    if stages is None:
        stages = {"query": QUERY_STAGES, "support": support_stages(bb)}
    names = tuple(dict.fromkeys(stages["query"] + stages["support"]))
    refs = batch["support_images"]
    b, k = refs.shape[:2]
    run = jax.jit(lambda p, x: stored_stages(p, x, bb, names))
    q = run(backbone_params, batch["query_image"])
    r = run(backbone_params, refs.reshape(b * k, *refs.shape[2:]))
    return {
        **batch,
        **{f"query_features/{n}": np.asarray(q[n]) for n in stages["query"]},
        **{
            f"support_features/{n}": np.asarray(r[n]).reshape(b, k, *r[n].shape[1:])
            for n in stages["support"]
        },
    }


def reference_features(
    backbone_params: Params,
    query: jax.Array,
    support: jax.Array,
    annotation: jax.Array,
    config: VRPConfig,
    query_features: dict[str, jax.Array] | None = None,
    support_features: dict[str, jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Frozen-backbone side of VRP-SAM, shots folded into the batch.

    query (B, H, W, 3), support (B * K, H, W, 3), annotation (B * K, H, W) ->
    (query mid-level, support mid-level, support mask, pseudo-mask), all (B * K, h, w, *):
    row b * K + k pairs query b with its shot k. Each query goes through the backbone once
    (its features are then repeated for its K shots), not once per shot;
    `query_features`: the query's backbone stages (`QUERY_STAGES`, (B, h, w, C)) already
    computed (`frozen_features`) or precomputed; `support_features`: the references'
    stages up to layer3 (`support_stages`, (B * K, ...)) precomputed. Given both, the
    backbone runs only layer4 on each masked reference.
    """
    bb = partial(backbones.apply, backbone_params, config=config.backbone)
    k = support.shape[0] // query.shape[0]
    if k * query.shape[0] != support.shape[0]:
        raise ValueError(f"{support.shape[0]} shots for {query.shape[0]} queries")
    qf = bb(backbone_input(query, config)) if query_features is None else query_features
    if k > 1:
        qf = {name: jnp.repeat(v, k, axis=0) for name, v in qf.items()}
    if support_features is None:
        sf = bb(backbone_input(support, config), stop="layer3")
    else:
        missing = set(support_stages(config.backbone)) - set(support_features)
        if missing:
            raise KeyError(f"precomputed support features lack stages {sorted(missing)}")
        sf = support_features
    mask = downsample_annotation(annotation, sf["layer3"].shape[1:3], config.annotation_downsample)
    # a ViT continues from its class/register tokens, which are not masked
    s4 = bb(sf["layer3"] * mask, start="layer4", prefix=sf.get("layer3_prefix"))["layer4"]
    pm = pseudo_mask(s4, qf["layer4"], mask, config.cosine_eps, config.pseudo_mask_minmax)
    mid_q, mid_s = _mid_level(qf), _mid_level(sf)
    if pm.shape[1:3] != mid_q.shape[1:3]:  # an undilated layer4 (torchvision ResNet): as PFENet
        pm = resize_bilinear(pm, mid_q.shape[1:3], align_corners=True)
    return tuple(jax.lax.stop_gradient(x) for x in (mid_q, mid_s, mask, pm))


def shot_features(
    frozen: Params, batch: dict, config: VRPConfig, query_features=None
) -> tuple[jax.Array, ...]:
    """`reference_features` for every (query, shot) pair, shots folded into the batch:
    each of the K shots pairs the same query with its own reference, (B * K, h, w, *).
    The batch's precomputed `query_features/*` and `support_features/*` (B, K, ...) stages
    are used when present (`stored_features`)."""
    support = batch["support_images"]
    b, k = support.shape[:2]
    if query_features is None:
        query_features = stored_features(batch, "query")
    sf = stored_features(batch, "support")
    if sf is not None:
        sf = {name: v.reshape(b * k, *v.shape[2:]) for name, v in sf.items()}
    return reference_features(
        frozen["backbone"],
        batch["query_image"],
        support.reshape(b * k, *support.shape[2:]),
        batch["support_annotations"].reshape(b * k, *support.shape[2:4]),
        config,
        query_features,
        sf,
    )


def shares_sam_encoder(config: VRPConfig) -> bool:
    """Whether the backbone is the prompted SAM's own encoder ("sam_<variant>" of the same
    architecture and compute dtype: `jaxvrp.frozen` gives it the SAM's encoder weights), so
    that one encoder pass on the query gives both its backbone stages and its embedding."""
    return same_encoder(config.backbone, config.sam)


def same_encoder(bb: Any, sam: Any) -> bool:
    """`shares_sam_encoder` for a backbone config and a `SamConfig` (either may be None)."""
    return (
        isinstance(bb, SamViTConfig)
        and sam is not None
        and bb.sam_config.architecture() == sam.architecture()
        and bb.sam_config.dtype == sam.dtype
    )


def frozen_features(frozen: Params, batch: dict, config: VRPConfig):
    """(`shot_features`, the query's SAM embedding (B, h, w, C)): the frozen side of a step.

    The batch's precomputed `query_embedding` when present. Otherwise, with a backbone that
    is the SAM's own encoder (`shares_sam_encoder`), the query's embedding is SAM's neck on
    its backbone "layer4" (the last block's output): one encoder pass on the query instead
    of two (the same blocks on the same resized image; the backbone's blocks use the "xla"
    attention whatever `config.sam.attention`). With precomputed `query_features/*` in the
    batch the query's backbone does not run (`shot_features` reads them)."""
    precomputed = "query_embedding" in batch or stored_features(batch, "query") is not None
    if precomputed or not shares_sam_encoder(config):
        return shot_features(frozen, batch, config), query_embeddings(frozen, batch, config)
    bb = backbones.apply(
        frozen["backbone"], backbone_input(batch["query_image"], config), config=config.backbone
    )
    emb = sam_model.encode_neck(frozen["sam"], bb["layer4"], config=config.sam)
    return shot_features(frozen, batch, config, bb), jax.lax.stop_gradient(emb)


def encode_prompts(
    params: Params,
    frozen: Params,
    batch: dict,
    *,
    config: VRPConfig,
    train: bool,
    rng: jax.Array | None,
    feats: tuple[jax.Array, ...] | None = None,
) -> jax.Array:
    """The prompt embeddings for the batch: (B, K * num_queries, C); the K shots' prompt
    sets are concatenated along the token axis (official `predict_mask_nshot`). `rng`: one
    key, or (B,) per-example keys (each shot then draws from `fold_in(key, shot)`);
    `feats`: `shot_features` already computed."""
    feats = shot_features(frozen, batch, config) if feats is None else feats
    rng = protocol.shot_keys(rng, batch["support_images"].shape[1])
    prompts = VRPEncoder(config).apply({"params": params}, *feats, train=train, rng=rng)
    return prompts.reshape(batch["support_images"].shape[0], -1, prompts.shape[-1])


def sam_embeddings(sam_params: Params, query: jax.Array, config: VRPConfig) -> jax.Array:
    """SAM image embeddings of ImageNet-normalised query images (B, H, W, 3), as official
    `SAM2pred` (`jaxvrp.learners.frozen_sam.image_embeddings`)."""
    return frozen_sam.image_embeddings(sam_params, query, config.sam)


def decode_with_prompts(
    sam_params: Params,
    embeddings: jax.Array,
    prompts: jax.Array,
    out_size: tuple[int, int],
    config: VRPConfig,
) -> jax.Array:
    """Sparse prompts (B, N, C) as SAM's only prompts (dense = no_mask_embed, mask token 0),
    logits upsampled (bilinear, align_corners=True) to `out_size`: (B, H, W)."""
    b = prompts.shape[0]
    _, dense = sam_model.encode_prompts(sam_params, config=config.sam)
    dense = jnp.broadcast_to(dense, (b, *dense.shape[1:]))
    low, _ = sam_model.decode_masks(
        sam_params, embeddings, prompts, dense, config=config.sam, multimask_output=False
    )
    return resize_bilinear(low[:, 0], out_size, align_corners=True, channels_last=False)


def query_embeddings(frozen: Params, batch: dict, config: VRPConfig) -> jax.Array:
    """The batch's cached `query_embedding`, else computed from `query_image`."""
    return frozen_sam.query_embeddings(frozen, batch, config.sam)


def apply(
    params: Params,
    frozen: Params,
    batch: dict,
    *,
    config: VRPConfig,
    rng: jax.Array | None = None,
    train: bool = False,
) -> jax.Array:
    """Target-image logits (B, H, W) at the query image's size."""
    feats, emb = frozen_features(frozen, batch, config)
    prompts = encode_prompts(
        params, frozen, batch, config=config, train=train, rng=rng, feats=feats
    )
    return decode_with_prompts(frozen["sam"], emb, prompts, batch["query_image"].shape[1:3], config)


def loss_fn(
    params: Params,
    frozen: Params,
    batch: dict,
    *,
    config: VRPConfig,
    rng: jax.Array,
    train: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """BCE-with-logits + Dice (1:1), ignore-aware: (loss, {"bce", "dice"})."""
    logits = apply(params, frozen, batch, config=config, rng=rng, train=train)
    return segmentation_loss(logits, batch["query_mask"], batch.get("query_ignore"))


def feature_placeholders(config: VRPConfig) -> list[jax.Array]:
    """Zero inputs of the encoder's shapes (for `init`), from the backbone's channels."""

    def features(bb_params):
        img = jnp.zeros((1, 64, 64, 3))
        return reference_features(bb_params, img, img, jnp.zeros((1, 64, 64)), config)

    shapes = jax.eval_shape(features, backbones.param_shapes(config.backbone))
    return [jnp.zeros(x.shape) for x in shapes]


def init(rng: jax.Array, config: VRPConfig) -> Params:
    """Fresh learner parameters (float32); shapes follow the backbone's channels."""
    feats = feature_placeholders(config)
    return VRPEncoder(config).init(rng, *feats, train=False, rng=None)["params"]


def param_shapes(config: VRPConfig) -> Params:
    return jax.eval_shape(partial(init, config=config), jax.random.key(0))


def config_to_dict(config: VRPConfig, *, backbone: str, sam: str) -> dict[str, Any]:
    """JSON-able form of a config made by `make_config(backbone, sam, ...)`."""
    d = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return {**d, "backbone": backbone, "sam": sam}


def num_params(params: Params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def frozen_spec(config: VRPConfig) -> FrozenSpec:
    """VRP-SAM prompts its SAM from its backbone's features."""
    return FrozenSpec(sam=config.sam, backbone=config.backbone)


LEARNER = registry.register(
    Learner(
        name=CHECKPOINT_KIND,
        title="VRP-SAM",
        make_config=make_config,
        init=init,
        apply=apply,
        loss_fn=loss_fn,
        frozen=frozen_spec,
        module=__name__,
        backbone_stages=precomputable_stages,
    )
)
