"""One writer at a time per LanceDB table, across processes.

LanceDB does not make `merge_insert` a uniqueness guarantee: two processes that upsert the same
keys at once both insert (STACK-FACTS: 601 rows for 301 keys). Every write path of the feature
store therefore holds an exclusive `fcntl.flock` on `<lancedb>/.locks/<table>.lock` across its
whole read-which-keys-exist -> write section, which turns check-then-insert into one atomic step.

flock works on a local (or NFS with lock support) folder only. A LanceDB on object storage
(`s3://`, `gs://`, `az://`, ...) has no folder to lock: there, run writers through the Dagster
concurrency pool the feature assets declare (`pool="lancedb_writes"`, limit 1) and keep the
`<table>_unique_keys` checks, which catch (and `repair_duplicates` removes) anything that slips by.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retro_ops.durable import file_lock

log = logging.getLogger(__name__)

#: The Dagster concurrency pool of every asset that writes the feature store.
WRITE_POOL = "lancedb_writes"
LOCK_DIR = ".locks"
_REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_held = threading.local()  # lock path -> depth, so a writer may re-enter a lock it holds


def lock_dir(uri: str) -> Path | None:
    """The folder holding the lock files of a LanceDB at `uri`; None for object storage."""
    if _REMOTE.match(uri) and not uri.startswith("file://"):
        return None
    return Path(uri.removeprefix("file://")) / LOCK_DIR


@contextmanager
def table_lock(uri: str, table: str) -> Iterator[None]:
    """Hold the inter-process writer lock of `table` (blocking). A no-op on object storage,
    where the Dagster pool serializes writers instead (see the module docstring). Re-entrant
    within a thread: a second flock on a new descriptor would wait for itself for ever."""
    folder = lock_dir(uri)
    if folder is None:
        log.debug("no file lock for %s on object storage %s: relying on pool %s",
                  table, uri, WRITE_POOL)
        yield
        return
    path = folder / f"{table}.lock"
    held = _held.__dict__.setdefault("depth", {})
    if held.get(path):
        held[path] += 1
        try:
            yield
        finally:
            held[path] -= 1
        return
    with file_lock(path):  # released by the kernel if this process is killed
        held[path] = 1
        try:
            yield
        finally:
            held.pop(path, None)
