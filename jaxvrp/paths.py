"""Paths: every workdir, checkpoint, cache, dataset and output path of jaxvrp is an
`etils.epath.Path`, so `gs://bucket/run` (and `s3://`, ...) works end to end: orbax, TFDS and
tensorstore take these paths as they are, where `pathlib.Path("gs://b/run")` would collapse
to the local directory `gs:/b/run` and every host of a pod would write to its own disk.
Local paths behave exactly as before (the same files, byte for byte).

Writes that several processes may race on, or that a kill may interrupt, go to a temporary
sibling with a per-process unique name and are then renamed into place (`write_atomic`,
`save_npy`): a reader never sees a half-written file, and two hosts filling the same shared
cache never write to the same temporary file. On object stores (GCS) a rename is a copy
then a delete: still all-or-nothing for a reader of the final name.
"""

import io
import os
import socket
import uuid
from typing import Any

import numpy as np
from etils import epath

PathLike = str | os.PathLike


def as_path(path: PathLike) -> epath.Path:
    """`epath.Path(path)`: local or remote (`gs://...`)."""
    return epath.Path(path)


def is_local(path: PathLike) -> bool:
    """Whether `path` is on the local filesystem (no `scheme://` prefix)."""
    return "://" not in os.fspath(path)


def absolute(path: PathLike) -> epath.Path:
    """The absolute path; a remote path is absolute already (`epath`'s `absolute()` would
    make `gs://b/x` the local `$PWD/gs:/b/x`)."""
    path = as_path(path)
    return path.absolute() if is_local(path) else path


def files_under(root: PathLike) -> list[epath.Path]:
    """Every file below `root`, recursively, sorted (epath has no `rglob`: a recursive glob
    on an object store would be one request per directory anyway)."""
    out, todo = [], [as_path(root)]
    while todo:
        for p in todo.pop().iterdir():
            (todo if p.is_dir() else out).append(p)
    return sorted(out)


def temp_sibling(path: PathLike, tag: str = "tmp") -> epath.Path:
    """A hidden sibling of `path` with a name unique to this process and call
    (`.NAME.TAG-HOST-PID-RANDOM`), in the same directory, so the rename stays on one
    filesystem."""
    path = as_path(path)
    unique = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return path.with_name(f".{path.name}.{tag}-{unique}")


def write_atomic(path: PathLike, data: bytes | str) -> None:
    """Write `data` to `path` through a per-process temporary sibling renamed into place."""
    path = as_path(path)
    tmp = temp_sibling(path)
    try:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def save_npy(path: PathLike, array: Any) -> None:
    """`np.save` to `path` (the same bytes), atomically (`write_atomic`)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array))
    write_atomic(path, buf.getvalue())


def load_npy(path: PathLike) -> np.ndarray:
    with as_path(path).open("rb") as f:
        return np.load(f)


class JsonLines:
    """An append-only text log (`metrics.jsonl`). Local: a file opened for appending, as
    before. Remote (object stores cannot append): the lines are kept and the whole file is
    rewritten atomically at every `flush`; the log is small (one line per logged step)."""

    def __init__(self, path: PathLike):
        self.path = as_path(path)
        self._local = is_local(self.path)
        if self._local:
            self._file = open(self.path, "a")
        else:
            self._text = self.path.read_text() if self.path.exists() else ""

    def write(self, text: str) -> None:
        if self._local:
            self._file.write(text)
        else:
            self._text += text

    def flush(self) -> None:
        if self._local:
            self._file.flush()
        else:
            write_atomic(self.path, self._text)

    def close(self) -> None:
        if self._local:
            self._file.close()
        else:
            self.flush()


class _RemoteRecordFile:
    """A tensorboardX record file on a remote filesystem: the bytes are buffered and the
    whole object rewritten on every flush (event files are small)."""

    def __init__(self, path: str):
        self.path = as_path(path)
        self.buffer = bytearray()

    def write(self, data: bytes) -> None:
        self.buffer += data

    def flush(self) -> None:
        write_atomic(self.path, bytes(self.buffer))

    def close(self) -> None:
        self.flush()


class _RemoteRecordFactory:
    def open(self, path: str) -> _RemoteRecordFile:
        return _RemoteRecordFile(path)

    def directory_check(self, path: str) -> None:
        as_path(path).mkdir(parents=True, exist_ok=True)


def register_tensorboard(logdir: PathLike) -> None:
    """Let tensorboardX write event files under a remote `logdir` through epath (its own
    GCS / S3 writers need other client libraries)."""
    if is_local(logdir):
        return
    from tensorboardX import record_writer

    scheme = os.fspath(logdir).split("://", 1)[0]
    record_writer.register_writer_factory(scheme, _RemoteRecordFactory())
