"""The frozen tree of a run: SAM and the semantic backbone, from checkpoints or random.

`config.frozen.sam_checkpoint` / `backbone_checkpoint` name directories written by
`conversion.sam` / `conversion.backbone`. Empty means seeded random weights (the `runlocal`
configs and tests); that is logged as a warning, since nothing trained that way means much.
"""

import jax
from absl import logging

from jaxvrp import backbones
from jaxvrp import sam as sam_lib


def load(config, lconfig) -> dict:
    """{"sam": params, "backbone": params} matching the learner config's shapes."""
    v = getattr(lconfig, "vrp", lconfig)  # ProSAM wraps a VRP config
    f = config.frozen
    k_sam, k_bb = jax.random.split(jax.random.key(f.seed))
    if f.sam_checkpoint:
        sam_params, sam_config = sam_lib.load(f.sam_checkpoint)
        if sam_config.to_dict() | {"dtype": v.sam.dtype} != v.sam.to_dict():
            raise ValueError(
                f"SAM checkpoint {f.sam_checkpoint} does not match config.model.sam "
                f"({sam_config.encoder_embed_dim} wide, {sam_config.encoder_depth} deep)"
            )
    else:
        logging.warning("config.frozen.sam_checkpoint is empty: using a RANDOM SAM")
        sam_params = sam_lib.init(k_sam, v.sam)
    if f.backbone_checkpoint:
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
