"""The frozen tree of a run: the SAM and the semantic backbone a learner needs
(`Learner.frozen(config)`, a `FrozenSpec`), from checkpoints or random.

`config.frozen.sam_checkpoint` / `backbone_checkpoint` name directories written by
`conversion.sam` / `conversion.backbone`. Empty means seeded random weights, which only
`config.frozen.allow_random=True` permits (the `runlocal` configs, tests and benchmarks):
otherwise `check` refuses the config, naming the flag to set, before anything is loaded or
compiled. A backbone that is the SAM's own encoder ("sam_<variant>") takes the SAM's
weights.
"""

import jax
from absl import logging

from jaxvrp import backbones
from jaxvrp import sam as sam_lib
from jaxvrp.learners.protocol import FrozenSpec


class RandomWeightsError(ValueError):
    """A config would run on random frozen weights without `frozen.allow_random`."""


def check(config, spec: FrozenSpec) -> None:
    """Refuse a config whose needed frozen models have no checkpoint, unless
    `config.frozen.allow_random`: the error names each flag to set."""
    f = config.frozen
    if f.get("allow_random", False):
        return
    missing = []
    if spec.sam is not None and not f.sam_checkpoint:
        sam = config.model.get("sam", "?")
        missing.append(f"--config.frozen.sam_checkpoint=DIR (a SAM {sam!r}: `jaxvrp convert sam`)")
    if spec.backbone is not None and not spec.backbone_is_sam_encoder:
        if not f.backbone_checkpoint:
            bb = config.model.get("backbone", "?")
            missing.append(
                f"--config.frozen.backbone_checkpoint=DIR (backbone {bb!r}: "
                "`jaxvrp convert backbone`)"
            )
    if missing:
        raise RandomWeightsError(
            f"learner {config.learner!r} would run on RANDOM frozen weights: set "
            + " and ".join(missing)
            + "; or --config.frozen.allow_random=True to run on random weights on purpose "
            "(benchmarks, tests)"
        )


def load(config, spec: FrozenSpec) -> dict:
    """{"sam": params, "backbone": params}, only the keys `spec` needs, matching its shapes
    (random ones only if `check` allows them)."""
    check(config, spec)
    f = config.frozen
    k_sam, k_bb = jax.random.split(jax.random.key(f.seed))
    out = {}
    if spec.sam is not None:
        if f.sam_checkpoint:
            sam_params, sam_config = sam_lib.load(f.sam_checkpoint)
            if sam_config.architecture() != spec.sam.architecture():
                raise ValueError(
                    f"SAM checkpoint {f.sam_checkpoint} does not match config.model.sam "
                    f"({sam_config.encoder_embed_dim} wide, {sam_config.encoder_depth} deep)"
                )
        else:
            logging.warning("config.frozen.sam_checkpoint is empty: using a RANDOM SAM")
            sam_params = sam_lib.init(k_sam, spec.sam)
        out["sam"] = sam_params
    if spec.backbone is None:
        return out
    if spec.backbone_is_sam_encoder:  # SAM's own encoder: the SAM's weights
        if f.backbone_checkpoint:
            raise ValueError(
                f"backbone {config.model.backbone!r} is the SAM's own encoder: leave "
                "config.frozen.backbone_checkpoint empty"
            )
        out["backbone"] = sam_backbone_params(out["sam"], spec)
    elif f.backbone_checkpoint:
        bb_params, bb_config = backbones.load(f.backbone_checkpoint)
        if bb_config != spec.backbone:
            raise ValueError(
                f"backbone checkpoint {f.backbone_checkpoint} is {bb_config}, but "
                f"config.model.backbone asks for {spec.backbone}"
            )
        out["backbone"] = bb_params
    else:
        logging.warning("config.frozen.backbone_checkpoint is empty: using a RANDOM backbone")
        out["backbone"] = backbones.init(k_bb, spec.backbone)
    return out


def sam_backbone_params(sam_params: dict, spec: FrozenSpec) -> dict:
    """The backbone params of a "sam_<variant>" backbone: the SAM's image encoder, which
    must be that variant."""
    if spec.sam is None or spec.backbone.sam_config.architecture() != spec.sam.architecture():
        raise ValueError(
            f"backbone sam_{spec.backbone.sam} is a SAM encoder, but the learner's SAM is a "
            "different architecture; use the backbone of the SAM the learner prompts"
        )
    return sam_params["image_encoder"]


def param_shapes(spec: FrozenSpec) -> dict:
    """Shapes of the frozen tree `load` returns (nothing allocated)."""
    out = {}
    if spec.sam is not None:
        out["sam"] = sam_lib.param_shapes(spec.sam)
    if spec.backbone is not None:
        out["backbone"] = (
            out["sam"]["image_encoder"]
            if spec.backbone_is_sam_encoder
            else backbones.param_shapes(spec.backbone)
        )
    return out
