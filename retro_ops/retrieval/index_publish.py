"""Publish indices atomically and load only what we built.

Layout under one retrieval set's index root:
    <root>/<build>/index.faiss, manifest.json   one folder per build, never modified
    <root>/CURRENT                              {"build": "<build>", "sha256": "..."}
A build is written to a hidden temp folder, fsynced, renamed into place, and only then does
CURRENT flip (write CURRENT.tmp, os.replace). A crash at any point leaves the previous CURRENT
and its index intact. A reader follows CURRENT only to a plain folder name inside the root,
checks the file's sha256 against CURRENT, the manifest and the catalog's record of builds,
checks ntotal against the retrieval-set version, and deserializes FAISS bytes (never pickle).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from retro_ops.errors import IndexIntegrityError
from retro_ops.ids import sha256_hex

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
CURRENT = "CURRENT"
_BUILD_NAME = re.compile(r"^[0-9A-Za-z_-]+$")
CrashPoint = Literal["after_index_write", "before_flip"]


@dataclass(frozen=True)
class IndexManifest:
    factory: str
    metric: str
    dim: int
    ntotal: int
    embedding_space_id: str
    retrieval_set: str
    retrieval_set_version_id: int
    retrieval_set_digest: str
    train_size: int
    sha256: str
    index_bytes: int
    build_seconds: float
    search_params: dict
    faiss_version: str
    created_at: str
    notes: list
    build_key: str = ""  # hash of the set version and build config: an equal key is reused

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


@dataclass(frozen=True)
class PublishedIndex:
    build: str
    path: Path
    manifest: IndexManifest


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def publish_index(root: Path, data: bytes, manifest: IndexManifest, *,
                  crash_at: CrashPoint | None = None) -> PublishedIndex:
    """Write a new build folder, then flip CURRENT to it. `crash_at` lets tests crash midway."""
    if sha256_hex(data) != manifest.sha256:
        raise IndexIntegrityError("manifest sha256 does not match the index bytes")
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    build = f"{stamp}-{manifest.sha256[:12]}-{uuid.uuid4().hex[:6]}"
    temp = root / f".tmp-{build}"
    temp.mkdir()
    _fsync_write(temp / INDEX_FILE, data)
    if crash_at == "after_index_write":
        raise RuntimeError("simulated crash after writing the index")
    _fsync_write(temp / MANIFEST_FILE, manifest.to_json().encode())
    os.rename(temp, root / build)
    if crash_at == "before_flip":
        raise RuntimeError("simulated crash before flipping CURRENT")
    _fsync_write(root / f"{CURRENT}.tmp", json.dumps({"build": build, "sha256": manifest.sha256}).encode())
    os.replace(root / f"{CURRENT}.tmp", root / CURRENT)
    directory = os.open(root, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return PublishedIndex(build, root / build, manifest)


def current_build(root: Path) -> tuple[str, str] | None:
    """(build folder name, sha256) that CURRENT names, or None when nothing is published."""
    pointer = root / CURRENT
    if not pointer.exists():
        return None
    data = json.loads(pointer.read_text())
    build, sha = str(data.get("build", "")), str(data.get("sha256", ""))
    if not _BUILD_NAME.match(build) or not (root / build).is_dir():
        raise IndexIntegrityError(f"{pointer} names {build!r}, which is not a build in {root}")
    return build, sha


def read_manifest(root: Path, build: str) -> IndexManifest:
    return IndexManifest(**json.loads((root / build / MANIFEST_FILE).read_text()))


def load_current(root: Path, *, expected_ntotal: int,
                 is_trusted: Callable[[str], bool]) -> tuple[faiss.Index, IndexManifest]:
    """The published index, after every integrity check; `IndexIntegrityError` otherwise."""
    found = current_build(root)
    if found is None:
        raise IndexIntegrityError(f"no index published under {root}")
    build, pointer_sha = found
    manifest = read_manifest(root, build)
    data = (root / build / INDEX_FILE).read_bytes()
    actual = sha256_hex(data)
    if not (actual == manifest.sha256 == pointer_sha):
        raise IndexIntegrityError(f"{root / build / INDEX_FILE}: sha256 {actual[:12]}... does not "
                                  f"match the manifest ({manifest.sha256[:12]}...); refusing to load")
    if not is_trusted(actual):
        raise IndexIntegrityError(f"{root / build}: no build with sha256 {actual[:12]}... in the "
                                  "catalog; refusing to load an index retro-ops did not build")
    if manifest.ntotal != expected_ntotal:
        raise IndexIntegrityError(f"{root / build}: ntotal {manifest.ntotal} != "
                                  f"{expected_ntotal} rows of its retrieval-set version")
    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    if index.ntotal != manifest.ntotal:
        raise IndexIntegrityError(f"{root / build}: index holds {index.ntotal} vectors, "
                                  f"manifest says {manifest.ntotal}")
    return index, manifest
