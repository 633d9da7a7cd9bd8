"""A trained learner as one self-describing directory (what `jaxvrp segment --learner` reads),
for any registered learner (`jaxvrp.learners.registry`).

    save(directory, learner="vrp_sam", model=dict(config.model), params=..., image_size=128,
         backbone_params=...)
    ckpt = load(directory)      # .learner (a Learner), .config, .params, .backbone_params, ...

Layout (`jaxvrp.params_io`): params `{"learner": ..., "backbone": ...}` and `metadata.json`
with `kind` (the learner's registry name), `config` (the `make_config` keyword arguments,
i.e. a training config's `config.model`), `image_size` (the square side the learner was
trained at) and `module` (the module that registers the learner, so a learner defined
outside jaxvrp is found again in a fresh process). The backbone is stored when the learner's
`FrozenSpec` names one that is not the SAM's own encoder ("sam_<variant>", whose weights
come from the SAM checkpoint used with it). `conversion.vrp_sam` writes the same layout (its
`image_size` is the official 512). `jaxvrp.train` writes `workdir/learner` at the end of
training.
"""

import dataclasses
from typing import Any

from jaxvrp import params_io
from jaxvrp.learners import registry
from jaxvrp.learners.protocol import FrozenSpec, Learner
from jaxvrp.paths import PathLike

DEFAULT_IMAGE_SIZE = 512  # VRP-SAM's training size (official FSSDataset img_size)


@dataclasses.dataclass(frozen=True)
class LearnerCheckpoint:
    learner: Learner
    config: Any  # the learner's make_config(**metadata["config"])
    params: Any
    backbone_params: Any  # None when no backbone is stored (none, or the SAM's encoder)
    image_size: int
    metadata: dict

    @property
    def frozen_spec(self) -> FrozenSpec:
        return self.learner.frozen(self.config)


def _stores_backbone(spec: FrozenSpec) -> bool:
    return spec.backbone is not None and not spec.backbone_is_sam_encoder


def save(
    directory: PathLike,
    *,
    learner: str,
    model: dict,
    params: Any,
    image_size: int,
    backbone_params: Any = None,
    module: str | None = None,
    extra: dict | None = None,
    overwrite: bool = False,
) -> params_io.epath.Path:
    """Write a learner checkpoint atomically; `model` holds the `make_config` arguments."""
    entry = registry.get(learner, module=module)
    model = dict(model)
    spec = entry.frozen(entry.make_config(**model))
    tree = {"learner": params}
    if _stores_backbone(spec):
        if backbone_params is None:
            raise ValueError(f"backbone {model.get('backbone')!r} needs its backbone_params saved")
        tree["backbone"] = backbone_params
    metadata = {
        "kind": entry.name,
        "config": model,
        "image_size": int(image_size),
        "module": entry.module,
        **(extra or {}),
    }
    return params_io.save_params(directory, tree, metadata, overwrite=overwrite)


def load(directory: PathLike) -> LearnerCheckpoint:
    """Read a learner checkpoint; an unknown kind or a malformed config is a
    `CheckpointError`."""
    meta = params_io.load_metadata(directory)
    kind = meta.get("kind")
    try:
        entry = registry.get(str(kind), module=meta.get("module") or None)
    except (ValueError, ImportError) as e:
        raise params_io.CheckpointError(
            f"{directory} holds a {kind!r} checkpoint, expected a learner ({registry.names()}): {e}"
        ) from e
    params, meta = params_io.load_params(directory, expected_kind=kind)
    c = dict(meta.get("config", {}))
    try:
        config = entry.make_config(**c)
    except (TypeError, ValueError, KeyError) as e:
        raise params_io.CheckpointError(f"{directory}: bad learner config: {e}") from e
    if _stores_backbone(entry.frozen(config)) and "backbone" not in params:
        raise params_io.CheckpointError(f"{directory} has no backbone params")
    return LearnerCheckpoint(
        learner=entry,
        config=config,
        params=params.get("learner", {}),
        backbone_params=params.get("backbone"),
        image_size=int(meta.get("image_size", DEFAULT_IMAGE_SIZE)),
        metadata=meta,
    )
