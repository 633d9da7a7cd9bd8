"""A fake `gs://` for tests: every `gs://BUCKET/KEY` lives under a local root directory.

No real GCS is reachable from the tests, and a `gs://` path handled by `pathlib` would
silently become the local relative directory `gs:/BUCKET/KEY`. The fake routes the three
ways jaxvrp's paths reach storage to one root, so a test can check that every file landed
"in the bucket" and nothing under a local `gs:` folder:

- `etils.epath` (jaxvrp, orbax's metadata, TFDS): its fsspec backend (used for `gs://` when
  TensorFlow is absent) gets an fsspec filesystem for protocol `gcs` that is a
  `DirFileSystem` over the root (fsspec's own registration hook).
- tensorstore (orbax's array data): orbax's `gcs_utils.get_kvstore_for_gcs` spec is
  replaced by a `file` kvstore under the root.
- orbax's GCS hierarchical-namespace probe (a Cloud Storage API call) answers "no".

    with fake_gcs.mounted(tmp_path / "bucket_root") as root:
        train.train(config, "gs://bucket/run")      # files appear under root / "bucket/run"
"""

import contextlib
import importlib
import os
from pathlib import Path

import fsspec
from etils.epath import backend as epath_backend
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from orbax.checkpoint._src.path import gcs_utils

_REGISTRY = importlib.import_module("fsspec.registry")._registry  # no public unregister


def _filesystem_class(root: str):
    class FakeGCS(DirFileSystem):
        protocol = ("gs", "gcs")

        def __init__(self, *args, **kwargs):
            del args, kwargs  # e.g. epath's finalize_on_close=True
            super().__init__(path=root, fs=LocalFileSystem())

    return FakeGCS


@contextlib.contextmanager
def mounted(root: str | os.PathLike):
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    cls = _filesystem_class(str(root))
    saved = {p: _REGISTRY.get(p) for p in ("gs", "gcs")}
    kvstore, hns = gcs_utils.get_kvstore_for_gcs, gcs_utils.is_hierarchical_namespace_enabled

    def file_kvstore(ckpt_path: str) -> dict:
        bucket, key = gcs_utils.parse_gcs_path(ckpt_path, add_trailing_slash=False)
        return {"driver": "file", "path": str(root / bucket / key)}

    for p in ("gs", "gcs"):
        fsspec.register_implementation(p, cls, clobber=True)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    gcs_utils.get_kvstore_for_gcs = file_kvstore
    gcs_utils.is_hierarchical_namespace_enabled = lambda path: False
    try:
        yield root
    finally:
        gcs_utils.get_kvstore_for_gcs, gcs_utils.is_hierarchical_namespace_enabled = kvstore, hns
        for p, impl in saved.items():
            if impl is None:
                _REGISTRY.pop(p, None)
            else:
                _REGISTRY[p] = impl
        epath_backend.fsspec_backend._get_filesystem.cache_clear()
