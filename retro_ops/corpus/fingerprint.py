"""A corpus location's raw files as one digest, so an orchestrator can tell that they changed.

The digest covers each readable file's path (relative to the first file's folder, so a moved
home still agrees) and the sha256 of its bytes: touching a file without changing it changes
nothing, an edit, a new file or a removed one does. It reads every byte, so its cost is the
corpus size; it runs before any parsing, which is what `documents` then does.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from retro_ops.corpus.readers import scan_location

_BLOCK = 1 << 20


@dataclass(frozen=True)
class FilesFingerprint:
    digest: str
    files: int
    bytes: int


def _file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            sha.update(block)
    return sha.hexdigest()


def files_fingerprint(location: str | Path) -> FilesFingerprint:
    """Digest of the supported files `location` names (`CorpusError` when there are none)."""
    files, _ = scan_location(location)
    root = os.path.commonpath([str(p.parent) for p in files])
    total, outer = 0, hashlib.sha256()
    for path in files:
        total += path.stat().st_size
        outer.update(f"{os.path.relpath(path, root)}\0{_file_sha256(path)}\n".encode())
    return FilesFingerprint(outer.hexdigest(), len(files), total)
