"""A trained learner as one self-describing directory (what `jaxvrp segment --learner` reads).

    save(directory, learner="vrp_sam", model=dict(config.model), params=..., image_size=128,
         backbone_params=...)
    ckpt = load(directory)      # .learner, .module, .config, .params, .backbone_params, ...

Layout (`jaxvrp.params_io`): params `{"learner": ..., "backbone": ...}` and `metadata.json`
with `kind` ("vrp_sam" or "prosam"), `config` (the `make_config` arguments: backbone and SAM
names plus every option, i.e. a training config's `config.model`) and `image_size` (the
square side the learner was trained at). `conversion.vrp_sam` writes the same layout (its
`image_size` is the official 512). A learner whose backbone is the SAM's own encoder
("sam_<variant>") stores no backbone: it comes from the SAM checkpoint used with it.
`jaxvrp.train` writes `workdir/learner` in this form at the end of training.
"""

import dataclasses
from pathlib import Path
from typing import Any

from jaxvrp import params_io
from jaxvrp.backbones.sam_vit import SamViTConfig
from jaxvrp.learners import prosam, vrp

MODULES = {"vrp_sam": vrp, "prosam": prosam}
DEFAULT_IMAGE_SIZE = 512  # VRP-SAM's training size (official FSSDataset img_size)


@dataclasses.dataclass(frozen=True)
class LearnerCheckpoint:
    learner: str  # "vrp_sam" or "prosam"
    module: Any  # jaxvrp.learners.vrp or .prosam
    config: Any  # VRPConfig or ProSAMConfig
    params: Any
    backbone_params: Any  # None when the backbone is the SAM's encoder
    image_size: int
    metadata: dict

    @property
    def vrp_config(self) -> vrp.VRPConfig:
        return getattr(self.config, "vrp", self.config)


def save(
    directory: str | Path,
    *,
    learner: str,
    model: dict,
    params: Any,
    image_size: int,
    backbone_params: Any = None,
    extra: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a learner checkpoint atomically; `model` holds backbone, sam and the options."""
    if learner not in MODULES:
        raise ValueError(f"unknown learner {learner!r}; known: {sorted(MODULES)}")
    model = dict(model)
    config = MODULES[learner].make_config(model["backbone"], model["sam"], **_options(model))
    v = getattr(config, "vrp", config)
    tree = {"learner": params}
    if not isinstance(v.backbone, SamViTConfig):  # a SAM-encoder backbone comes with the SAM
        if backbone_params is None:
            raise ValueError(f"backbone {model['backbone']!r} needs its backbone_params saved")
        tree["backbone"] = backbone_params
    metadata = {"kind": learner, "config": model, "image_size": int(image_size), **(extra or {})}
    return params_io.save_params(directory, tree, metadata, overwrite=overwrite)


def _options(model: dict) -> dict:
    return {k: v for k, v in model.items() if k not in ("backbone", "sam")}


def load(directory: str | Path) -> LearnerCheckpoint:
    """Read a learner checkpoint; a wrong kind or a malformed config is a `CheckpointError`."""
    meta = params_io.load_metadata(directory)
    kind = meta.get("kind")
    if kind not in MODULES:
        raise params_io.CheckpointError(
            f"{directory} holds a {kind!r} checkpoint, expected a learner ({sorted(MODULES)})"
        )
    params, meta = params_io.load_params(directory, expected_kind=kind)
    c = dict(meta.get("config", {}))
    if "backbone" not in c or "sam" not in c:
        raise params_io.CheckpointError(f"{directory}: metadata config lacks backbone / sam")
    try:
        config = MODULES[kind].make_config(c["backbone"], c["sam"], **_options(c))
    except (TypeError, ValueError) as e:
        raise params_io.CheckpointError(f"{directory}: bad learner config: {e}") from e
    v = getattr(config, "vrp", config)
    if not isinstance(v.backbone, SamViTConfig) and "backbone" not in params:
        raise params_io.CheckpointError(f"{directory} has no backbone params")
    return LearnerCheckpoint(
        learner=kind,
        module=MODULES[kind],
        config=config,
        params=params["learner"],
        backbone_params=params.get("backbone"),
        image_size=int(meta.get("image_size", DEFAULT_IMAGE_SIZE)),
        metadata=meta,
    )
