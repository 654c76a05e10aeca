"""Durable local files: one exclusive inter-process lock, fsynced writes and renames.

Shared by every stage that writes files another process may read or write at once (LanceDB
writers, index publishers, checkpoints, the MLflow SQLite store). `flock` is released by the
kernel when its holder dies, even by SIGKILL, so a crashed writer never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing; blocking). Not re-entrant: a
    second lock on a new descriptor in the same process would wait for itself."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def fsync_path(path: Path) -> None:
    """fsync a file's bytes, or a folder's entries (a rename or unlink is durable only then)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_fsynced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp path beside `path` for a writer that makes the file itself (numpy, ONNX): when the
    block ends the temp is fsynced, renamed over `path`, and the folder fsynced for the rename;
    on an error it is removed and `path` left as it was. Named for this process and thread, so
    two writers never share one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a reader, or a writer killed at any instant, sees the
    old bytes or the new ones, never a mix (`atomic_path`: a temp beside it, fsynced, renamed)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
