"""Publish indices atomically and load only what we built.

Layout under one retrieval set's index root:
    <root>/<build>/index.faiss, manifest.json   one folder per build, never modified
    <root>/CURRENT                              {"build": "<build>", "sha256": "..."}
    <root>/.lock                                held (flock) by the one publisher at work
A build is written to a hidden temp folder, fsynced, renamed into place, and only then does
CURRENT flip (a pointer temp file named after the build, then os.replace). Publishers take the
lock, so two never interleave, and the kernel frees it when a holder is killed. A crash at any
point leaves the previous CURRENT and its index intact; the next publish (or `recover_publish`)
removes what the dead one left: its temp folder and pointer, and its build folder when CURRENT
never named it (a `.pending-<build>` marker says so). A reader follows CURRENT only to a plain
folder name inside the root, requires the manifest to name the set whose folder it is in, checks
the index's sha256 against CURRENT and the manifest, and the (set, version, index sha256,
manifest sha256) against the catalog's record of builds, checks ntotal against the
retrieval-set version, and deserializes FAISS bytes (never pickle). A disk-refined index has two
more files in its build folder (`disk_refine`: its vectors and ids as .npy); the manifest carries
their sha256 (`extra_files`), so the catalog's manifest digest binds them too; they are checked
before being memory-mapped, and written and fsynced before the folder is renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from retro_ops.durable import file_lock, fsync_path, write_fsynced
from retro_ops.errors import CrashMode, IndexIntegrityError, SimulatedCrash
from retro_ops.ids import sha256_hex, validate_name
from retro_ops.retrieval.index.disk_refine import (
    IDS_FILE, VECTORS_FILE, DiskRefinedIndex, file_sha256, is_disk_refined, open_disk_refined, write_npy,
)

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
CURRENT = "CURRENT"
LOCK_FILE = ".lock"
TEMP_PREFIX, PENDING_PREFIX, POINTER_TEMP_PREFIX = ".tmp-", ".pending-", f"{CURRENT}.tmp"
_BUILD_NAME = re.compile(r"^[0-9A-Za-z_-]+$")
CrashPoint = Literal["mid_index_write", "after_index_write", "before_flip", "mid_pointer_write",
                     "after_flip"]
# (retrieval set, its version id, index sha256, manifest sha256) -> did the catalog record it?
TrustCheck = Callable[[str, int, str, str], bool]


def index_root(indices_dir: Path, retrieval_set: str) -> Path:
    """The set's folder under `indices_dir`; a name like `../x` never becomes a path."""
    return indices_dir / validate_name(retrieval_set, "retrieval set")


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
    route: str = "full"  # "incremental": the previous build minus removed ids (notes say why)
    full_build_ntotal: int = 0  # size of the last full build this descends from (0: this one)
    extra_files: dict = field(default_factory=dict)  # file name -> sha256 (disk-refine sidecars)
    config: dict = field(default_factory=dict)  # the IndexConfig it was built with ({}: older builds)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def digest(self) -> str:
        """sha256 of manifest.json as published: the catalog records it to bind the build."""
        return sha256_hex(self.to_json().encode())


@dataclass(frozen=True)
class PublishedIndex:
    build: str
    path: Path
    manifest: IndexManifest


def serialize(index: faiss.Index | DiskRefinedIndex) -> bytes:
    """The FAISS bytes (of a disk-refined index: its resident codes; the vectors go beside)."""
    coarse = index.coarse if isinstance(index, DiskRefinedIndex) else index
    return faiss.serialize_index(coarse).tobytes()


_SIDECARS = {VECTORS_FILE, IDS_FILE}


def _write_extra(folder: Path, extra: Mapping, manifest: IndexManifest) -> None:
    if set(extra) != set(manifest.extra_files) or not set(extra) <= _SIDECARS:
        raise IndexIntegrityError(f"extra files {sorted(extra)} do not match the manifest's "
                                  f"{sorted(manifest.extra_files)}")
    for name, array in extra.items():
        if write_npy(folder / name, array) != manifest.extra_files[name]:
            raise IndexIntegrityError(f"{name}: sha256 does not match the manifest")
        fsync_path(folder / name)


def _publish_lock(root: Path):
    """One publisher per root at a time; a SIGKILLed holder's flock is released by the kernel."""
    return file_lock(root / LOCK_FILE)


def _pointed_build(root: Path) -> str | None:
    """The build CURRENT names, or None when it is missing or unreadable (recovery only)."""
    try:
        found = current_build(root)
    except IndexIntegrityError:
        return None
    return found[0] if found else None


def _recover(root: Path) -> list[str]:
    """Remove what a killed publisher left (caller holds the lock); the names removed."""
    current, removed = _pointed_build(root), []
    for marker in sorted(root.glob(f"{PENDING_PREFIX}*")):
        build = marker.name[len(PENDING_PREFIX):]
        if build != current and _BUILD_NAME.match(build) and (root / build).is_dir():
            shutil.rmtree(root / build)  # renamed into place, never made current
            removed.append(build)
        marker.unlink()
        removed.append(marker.name)
    for leftover in sorted(root.glob(f"{TEMP_PREFIX}*")) + sorted(root.glob(f"{POINTER_TEMP_PREFIX}*")):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
        removed.append(leftover.name)
    if removed:
        fsync_path(root)
    return removed


def recover_publish(root: Path) -> list[str]:
    """Clean up after a publisher that died midway (no-op when none did): the names removed."""
    if not root.is_dir():
        return []
    with _publish_lock(root):
        return _recover(root)


def publish_index(root: Path, data: bytes, manifest: IndexManifest, *,
                  crash_at: CrashPoint | None = None, crash_mode: CrashMode = "raise",
                  extra: Mapping | None = None) -> PublishedIndex:
    """Write a new build folder, then flip CURRENT to it. `crash_at` lets tests crash midway.
    extra: file name -> array written beside the index (`sidecar_arrays`)."""
    if sha256_hex(data) != manifest.sha256:
        raise IndexIntegrityError("manifest sha256 does not match the index bytes")
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    build = f"{stamp}-{manifest.sha256[:12]}-{uuid.uuid4().hex[:6]}"
    with _publish_lock(root):
        _recover(root)
        temp = root / f"{TEMP_PREFIX}{build}"
        temp.mkdir()
        if crash_at == "mid_index_write":
            (temp / INDEX_FILE).write_bytes(data[: len(data) // 2])
            SimulatedCrash.at("while writing the index", crash_mode)
        write_fsynced(temp / INDEX_FILE, data)
        _write_extra(temp, extra or {}, manifest)
        if crash_at == "after_index_write":
            SimulatedCrash.at("after writing the index", crash_mode)
        write_fsynced(temp / MANIFEST_FILE, manifest.to_json().encode())  # sha256 = digest()
        fsync_path(temp)
        write_fsynced(root / f"{PENDING_PREFIX}{build}", b"")  # until CURRENT names it
        os.rename(temp, root / build)
        fsync_path(root)
        if crash_at == "before_flip":
            SimulatedCrash.at("before flipping CURRENT", crash_mode)
        pointer = root / f"{POINTER_TEMP_PREFIX}-{build}"  # unique: publishers never share it
        write_fsynced(pointer, json.dumps({"build": build, "sha256": manifest.sha256}).encode())
        if crash_at == "mid_pointer_write":
            SimulatedCrash.at("before replacing CURRENT", crash_mode)
        os.replace(pointer, root / CURRENT)
        fsync_path(root)
        if crash_at == "after_flip":
            SimulatedCrash.at("after flipping CURRENT", crash_mode)
        (root / f"{PENDING_PREFIX}{build}").unlink()
        fsync_path(root)
    return PublishedIndex(build, root / build, manifest)


def current_build(root: Path) -> tuple[str, str] | None:
    """(build folder name, sha256) that CURRENT names, or None when nothing is published."""
    pointer = root / CURRENT
    if not pointer.exists():
        return None
    try:
        data = json.loads(pointer.read_bytes())
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise IndexIntegrityError(f"{pointer}: not a valid pointer ({error}); refusing to guess "
                                  "which build to load") from error
    if not isinstance(data, dict):
        raise IndexIntegrityError(f"{pointer}: not a valid pointer (a JSON object is expected)")
    build, sha = str(data.get("build", "")), str(data.get("sha256", ""))
    if not _BUILD_NAME.match(build) or not (root / build).is_dir():
        raise IndexIntegrityError(f"{pointer} names {build!r}, which is not a build in {root}")
    return build, sha


def _read_manifest(root: Path, build: str) -> tuple[IndexManifest, str]:
    """The manifest and the sha256 of its bytes (what the catalog recorded)."""
    path = root / build / MANIFEST_FILE
    try:
        raw = path.read_bytes()
        return IndexManifest(**json.loads(raw)), sha256_hex(raw)
    except (OSError, ValueError, TypeError) as error:
        raise IndexIntegrityError(f"{path}: not a readable index manifest ({error})") from error


def read_manifest(root: Path, build: str) -> IndexManifest:
    return _read_manifest(root, build)[0]


def check_ntotal(path: Path, manifest: IndexManifest, expected_ntotal: int) -> None:
    if manifest.ntotal != expected_ntotal:
        raise IndexIntegrityError(f"{path}: ntotal {manifest.ntotal} != "
                                  f"{expected_ntotal} rows of its retrieval-set version")


def load_current(root: Path, *, retrieval_set: str, is_trusted: TrustCheck,
                 expected_ntotal: int | None = None) -> tuple[faiss.Index, IndexManifest]:
    """The published index of `retrieval_set`, after every integrity check (the caller checks
    ntotal itself when it passes no `expected_ntotal`); `IndexIntegrityError` otherwise."""
    found = current_build(root)
    if found is None:
        raise IndexIntegrityError(f"no index published under {root}")
    build, pointer_sha = found
    manifest, manifest_sha = _read_manifest(root, build)
    if manifest.retrieval_set != retrieval_set:
        raise IndexIntegrityError(f"{root / build}: built for retrieval set {manifest.retrieval_set!r}, "
                                  f"found under {retrieval_set!r}; refusing to load another set's index")
    data = (root / build / INDEX_FILE).read_bytes()
    actual = sha256_hex(data)
    if not (actual == manifest.sha256 == pointer_sha):
        raise IndexIntegrityError(f"{root / build / INDEX_FILE}: sha256 {actual[:12]}... does not "
                                  f"match the manifest ({manifest.sha256[:12]}...); refusing to load")
    if not is_trusted(retrieval_set, manifest.retrieval_set_version_id, actual, manifest_sha):
        raise IndexIntegrityError(
            f"{root / build}: no build of retrieval set {retrieval_set!r} with index sha256 "
            f"{actual[:12]}... and manifest sha256 {manifest_sha[:12]}... in the catalog; refusing "
            "to load an index retro-ops did not build for this set (one built before manifest "
            f"digests were recorded: `retro-ops materialize --set {retrieval_set}`)")
    if expected_ntotal is not None:
        check_ntotal(root / build, manifest, expected_ntotal)
    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    if index.ntotal != manifest.ntotal:
        raise IndexIntegrityError(f"{root / build}: index holds {index.ntotal} vectors, "
                                  f"manifest says {manifest.ntotal}")
    if not is_disk_refined(manifest.factory):
        return index, manifest
    if set(manifest.extra_files) != _SIDECARS:
        raise IndexIntegrityError(f"{root / build}: a disk-refined index needs "
                                  f"{sorted(_SIDECARS)}; its manifest names {sorted(manifest.extra_files)}")
    for name, expected in sorted(manifest.extra_files.items()):
        path = root / build / name
        actual = file_sha256(path) if path.is_file() else "missing"
        if actual != expected:
            raise IndexIntegrityError(f"{path}: sha256 {actual[:12]}... does not match the "
                                      f"manifest ({expected[:12]}...); refusing to load")
    try:
        return open_disk_refined(index, root / build), manifest
    except ValueError as error:
        raise IndexIntegrityError(f"{root / build}: {error}") from error
