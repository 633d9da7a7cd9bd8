"""Params-only checkpoints: an orbax PyTree under `DIR/params` plus `DIR/metadata.json`.

This is the format of converted weights (SAM, backbones, learners). Training checkpoints
(params + optimizer + data iterator) are a different thing, kept by the trainer.

Writes are process-local (in a multi-host run, one process writes) and all-or-nothing:
everything goes to a temporary sibling directory that is renamed into place only when
complete, so an interrupted or failed write leaves no `DIR`.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

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
) -> Path:
    """Write `params` (a pytree of arrays) and `metadata` (JSON-able) to `directory`."""
    directory = Path(directory).absolute()
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} already exists; choose another path or overwrite")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    try:
        params = jax.tree.map(np.asarray, params)
        _local_checkpointer().save(tmp / PARAMS_DIR, args=ocp.args.PyTreeSave(params))
        meta = {"format_version": FORMAT_VERSION, **metadata}
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
    path = Path(directory) / METADATA_FILE
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
    directory = Path(directory).absolute()
    metadata = load_metadata(directory)
    if expected_kind is not None and metadata.get("kind") != expected_kind:
        raise CheckpointError(
            f"{directory} holds a {metadata.get('kind')!r} checkpoint, expected {expected_kind!r}"
        )
    if not (directory / PARAMS_DIR).is_dir():
        raise CheckpointError(f"{directory} has no {PARAMS_DIR}/ directory")
    params = ocp.PyTreeCheckpointer().restore(directory / PARAMS_DIR)
    return jax.tree.map(np.asarray, params), metadata
