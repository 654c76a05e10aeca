"""An index whose RAM holds compressed codes only; the exact re-rank reads vectors from disk.

FAISS's `RFlat` keeps every raw vector in RAM (1,536 bytes each at d=384): 9 TB for the Pile's
5.8 B chunks. Here the resident part is an IVF index of 4-bit fast-scan PQ codes whose ids are row
numbers (24 + 8 bytes a vector at PQ48x4fs), and the refine gathers each query's candidates from
a memory-mapped float32 `.npy` of the vectors, rows in the order they were added, beside an
`.npy` of their chunk ids. Only the pages of candidates are read, and the kernel may drop them
again, so neither file counts against resident memory. The re-rank is exact inner product, as
`RFlat`'s is, so with enough candidates the top-1 equals exact search.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import faiss
import numpy as np

MARKER = ",DiskRefine"  # factory suffix: build the rest with row ids and refine from disk
VECTORS_FILE, IDS_FILE = "vectors.npy", "ids.npy"


class DiskRefinedIndex:
    """Duck-types the part of `faiss.Index` retro-ops uses: `search`, `ntotal`, `d`."""

    def __init__(self, coarse: faiss.Index, vectors: np.ndarray, ids: np.ndarray, k_factor: int = 64):
        if len(vectors) != coarse.ntotal or len(ids) != coarse.ntotal:
            raise ValueError(f"{coarse.ntotal} codes, {len(vectors)} vectors and {len(ids)} ids")
        self.coarse, self.vectors, self.ids, self.k_factor = coarse, vectors, ids, k_factor

    @property
    def ntotal(self) -> int:
        return int(self.coarse.ntotal)

    @property
    def d(self) -> int:
        return int(self.coarse.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, chunk ids), each (n, k), best first; -1 / -inf where fewer than k exist."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        depth = max(k, min(k * self.k_factor, self.ntotal))
        _, rows = self.coarse.search(queries, depth)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        found = np.full((len(queries), k), -1, dtype=np.int64)
        for q, candidates in enumerate(rows):
            candidates = np.unique(candidates[candidates >= 0])  # sorted: sequential page reads
            if len(candidates) == 0:
                continue
            exact = self.vectors[candidates] @ queries[q]  # (c,) read from the mapped file
            best = np.argsort(-exact, kind="stable")[:k]
            scores[q, :len(best)], found[q, :len(best)] = exact[best], self.ids[candidates[best]]
        return scores, found


def is_disk_refined(factory: str) -> bool:
    return factory.endswith(MARKER)


def coarse_factory(factory: str) -> str:
    return factory[: -len(MARKER)] if is_disk_refined(factory) else factory


def sidecar_arrays(index) -> dict[str, np.ndarray]:
    """The files a disk-refined index needs beside `index.faiss`; none for any other index."""
    if not isinstance(index, DiskRefinedIndex):
        return {}
    return {VECTORS_FILE: np.asarray(index.vectors, np.float32), IDS_FILE: np.asarray(index.ids, np.int64)}


class _Hashing:
    """A write-only file object that only hashes (np.save streams into it in blocks)."""

    def __init__(self, sink=None):
        self.digest, self.sink = hashlib.sha256(), sink

    def write(self, data) -> int:
        self.digest.update(data)
        if self.sink is not None:
            self.sink.write(data)
        return len(data)


def npy_sha256(array: np.ndarray) -> str:
    """sha256 of the bytes `np.save(array)` writes, without building them in memory."""
    out = _Hashing()
    np.lib.format.write_array(out, np.ascontiguousarray(array), allow_pickle=False)
    return out.digest.hexdigest()


def write_npy(path: Path, array: np.ndarray) -> str:
    """Write `array` as .npy (no pickle) and return the sha256 of what was written."""
    with path.open("wb") as handle:
        out = _Hashing(handle)
        np.lib.format.write_array(out, np.ascontiguousarray(array), allow_pickle=False)
    return out.digest.hexdigest()


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def open_disk_refined(coarse: faiss.Index, folder: Path) -> DiskRefinedIndex:
    """Map the sidecar files read-only (the caller has checked their digests)."""
    vectors = np.load(folder / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
    ids = np.load(folder / IDS_FILE, mmap_mode="r", allow_pickle=False)
    return DiskRefinedIndex(coarse, vectors, ids)
