"""Params-only checkpoints: an orbax PyTree under `DIR/params` plus `DIR/metadata.json`.

This is the format of converted weights (SAM, backbones, learners). Training checkpoints
(params + optimizer + data iterator) are a different thing, kept by the trainer.

Writes are process-local (in a multi-host run, one process writes) and all-or-nothing:
everything goes to a temporary sibling directory that is renamed into place only when
complete, so an interrupted or failed write leaves no `DIR`. The temporary name is unique
to the process (`jaxvrp.paths.temp_sibling`); `DIR` may be remote (`gs://...`, where the
rename is a copy then a delete).
"""

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxvrp import paths

METADATA_FILE = "metadata.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A params checkpoint is missing, incomplete or of the wrong kind."""


def save_params(
    directory: str | os.PathLike,
    params: Any,
    metadata: dict[str, Any],
    *,
    overwrite: bool = False,
) -> epath.Path:
    """Write `params` (a pytree of arrays) and `metadata` (JSON-able) to `directory`."""
    directory = paths.absolute(directory)
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} already exists; choose another path or overwrite")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = paths.temp_sibling(directory, "partial")
    tmp.mkdir()
    try:
        params = jax.tree.map(np.asarray, params)
        _local_checkpointer().save(tmp / PARAMS_DIR, args=ocp.args.PyTreeSave(params))
        meta = {"format_version": FORMAT_VERSION, **metadata}
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if directory.exists():
            directory.rmtree()
        tmp.rename(directory)
    except BaseException:
        if tmp.exists():
            tmp.rmtree()
        raise
    return directory


def _local_checkpointer() -> ocp.Checkpointer:
    """An orbax checkpointer of this process alone: in a multi-host run one process (the
    trainers' process 0) writes params checkpoints, with no barrier with the others."""
    me = jax.process_index()
    options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.Checkpointer(
        ocp.PyTreeCheckpointHandler(multiprocessing_options=options),
        multiprocessing_options=options,
    )


def load_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    path = paths.as_path(directory) / METADATA_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a jaxvrp params checkpoint: no {METADATA_FILE}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e


def load_params(
    directory: str | os.PathLike, *, expected_kind: str | None = None
) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint written by `save_params`: (params as numpy arrays, metadata)."""
    directory = paths.absolute(directory)
    metadata = load_metadata(directory)
    if expected_kind is not None and metadata.get("kind") != expected_kind:
        raise CheckpointError(
            f"{directory} holds a {metadata.get('kind')!r} checkpoint, expected {expected_kind!r}"
        )
    if not (directory / PARAMS_DIR).is_dir():
        raise CheckpointError(f"{directory} has no {PARAMS_DIR}/ directory")
    params = ocp.PyTreeCheckpointer().restore(directory / PARAMS_DIR)
    return jax.tree.map(np.asarray, params), metadata
