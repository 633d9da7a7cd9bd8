"""The frozen tree of a run: SAM and the semantic backbone, from checkpoints or random.

`config.frozen.sam_checkpoint` / `backbone_checkpoint` name directories written by
`conversion.sam` / `conversion.backbone`. Empty means seeded random weights (the `runlocal`
configs and tests); that is logged as a warning, since nothing trained that way means much.
"""

import jax
from absl import logging

from jaxvrp import backbones
from jaxvrp import sam as sam_lib
from jaxvrp.backbones.sam_vit import SamViTConfig


def load(config, lconfig) -> dict:
    """{"sam": params, "backbone": params} matching the learner config's shapes."""
    v = getattr(lconfig, "vrp", lconfig)  # ProSAM wraps a VRP config
    f = config.frozen
    k_sam, k_bb = jax.random.split(jax.random.key(f.seed))
    if f.sam_checkpoint:
        sam_params, sam_config = sam_lib.load(f.sam_checkpoint)
        if sam_config.architecture() != v.sam.architecture():
            raise ValueError(
                f"SAM checkpoint {f.sam_checkpoint} does not match config.model.sam "
                f"({sam_config.encoder_embed_dim} wide, {sam_config.encoder_depth} deep)"
            )
    else:
        logging.warning("config.frozen.sam_checkpoint is empty: using a RANDOM SAM")
        sam_params = sam_lib.init(k_sam, v.sam)
    if isinstance(v.backbone, SamViTConfig):  # SAM's own encoder: the SAM's weights
        if f.backbone_checkpoint:
            raise ValueError(
                f"backbone {config.model.backbone!r} is the SAM's own encoder: leave "
                "config.frozen.backbone_checkpoint empty"
            )
        bb_params = sam_backbone_params(sam_params, v)
    elif f.backbone_checkpoint:
        bb_params, bb_config = backbones.load(f.backbone_checkpoint)
        if bb_config != v.backbone:
            raise ValueError(
                f"backbone checkpoint {f.backbone_checkpoint} is {bb_config}, but "
                f"config.model.backbone asks for {v.backbone}"
            )
    else:
        logging.warning("config.frozen.backbone_checkpoint is empty: using a RANDOM backbone")
        bb_params = backbones.init(k_bb, v.backbone)
    return {"sam": sam_params, "backbone": bb_params}


def sam_backbone_params(sam_params: dict, v) -> dict:
    """The backbone params of a "sam_<variant>" backbone: the SAM's image encoder, which
    must be that variant."""
    if v.backbone.sam_config.architecture() != v.sam.architecture():
        raise ValueError(
            f"backbone sam_{v.backbone.sam} is a SAM encoder, but the learner's SAM is a "
            "different architecture; use the backbone of the SAM the learner prompts"
        )
    return sam_params["image_encoder"]
