"""The disk-refine index (#17): codes and row ids in RAM, the exact re-rank read from a
memory-mapped vectors file published (and verified) beside the index."""

from __future__ import annotations

import numpy as np
import pytest

from retro_ops.errors import IndexIntegrityError
from retro_ops.retrieval.index.disk_refine import IDS_FILE, VECTORS_FILE, DiskRefinedIndex, file_sha256
from retro_ops.retrieval.index.build import IndexConfig, build_index, choose_factory
from retro_ops.retrieval.index.publish import serialize
from retro_ops.retrieval.index.quality import exact_neighbours
from retro_ops.retrieval.index.route import index_retrieval_set
from retro_ops.retrieval.sets import build_retrieval_set_version, retrieval_set_vectors

# The at-scale structure forced onto a small real set (nlist 2: the ~150 chunks train it).
DISK = IndexConfig(factory="IVF2_HNSW32,PQ48x4fs,DiskRefine")


@pytest.fixture(scope="module")
def disk_set(ws):
    ws.catalog.create_retrieval_set("small_disk", ["small"])
    build_retrieval_set_version(ws.catalog, ws.store, "small_disk", ws.embedder.space)
    return index_retrieval_set(ws.catalog, ws.store, ws.settings.indices_dir, "small_disk",
                               ws.embedder.space.dim, config=DISK)


def test_at_scale_default_keeps_no_raw_vectors_in_ram():
    factory = choose_factory(1_000_000, 384)
    assert factory.endswith(",DiskRefine") and "RFlat" not in factory and "IDMap" not in factory
    assert choose_factory(1_000, 384) == "IDMap,Flat"  # small sets stay exact


def test_resident_bytes_per_vector_are_codes_and_ids_only():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((6_000, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    built = build_index(vectors[:3_000], np.arange(3_000), IndexConfig(factory=DISK.factory))
    assert isinstance(built.index, DiskRefinedIndex)
    before = len(serialize(built.index))
    built.index.coarse.add(vectors[3_000:])
    per_vector = (len(serialize(built.index)) - before) / 3_000
    assert per_vector <= 64, per_vector  # PQ48x4fs: 24 B of codes + 8 B of id


def test_disk_refine_top1_equals_exact_search(ws, disk_set):
    assert disk_set.published is not None and disk_set.manifest.factory == DISK.factory
    folder = disk_set.published.path
    assert disk_set.manifest.extra_files == {VECTORS_FILE: file_sha256(folder / VECTORS_FILE),
                                             IDS_FILE: file_sha256(folder / IDS_FILE)}
    retriever = ws.retriever("small_disk")
    assert isinstance(retriever.index, DiskRefinedIndex)
    assert isinstance(retriever.index.vectors, np.memmap)  # read from disk, not held in RAM
    ids, vectors = retrieval_set_vectors(ws.store, retriever.version, ws.embedder.space.dim)
    queries = vectors[np.random.default_rng(1).choice(len(vectors), 100, replace=False)]
    queries = queries + 0.05 * np.random.default_rng(2).standard_normal(queries.shape).astype(np.float32)
    exact = exact_neighbours(vectors, ids, queries.astype(np.float32), 1)[:, 0]
    found = retriever.search(queries, 1)[1][:, 0]
    assert (found == exact).mean() == 1.0
    rows = ws.store.members(retriever.version.digest, ["chunk_id", "text"]).to_pylist()[:5]
    hits = retriever.retrieve([r["text"] for r in rows], k=2)
    assert [h[0].chunk_id for h in hits] == [r["chunk_id"] for r in rows]


def test_tampered_vectors_file_is_refused(ws, disk_set):
    path = disk_set.published.path / VECTORS_FILE
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[-1] ^= 0xFF
    path.write_bytes(bytes(damaged))
    try:
        with pytest.raises(IndexIntegrityError, match="vectors.npy: sha256 .* does not match the manifest"):
            ws.retriever("small_disk")
    finally:
        path.write_bytes(original)
    assert ws.retriever("small_disk").index.ntotal == disk_set.manifest.ntotal


def test_more_candidates_than_vectors_pad_with_minus_one():
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((400, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    built = build_index(vectors, np.arange(1_000, 1_400), DISK)
    scores, ids = built.index.search(vectors[:2], 500)
    assert ids.shape == (2, 500) and (ids[:, 400:] == -1).all() and np.isneginf(scores[:, 400:]).all()
    assert list(ids[:, 0]) == [1_000, 1_001]
