"""Rebuilding an index after exclusions by the cheapest correct route, on real chunk embeddings.

A set that only lost a few chunks gets the published index minus their ids; it must answer
exactly as a full rebuild of the same version does (compared on IVF and on the refined IVF-PQ
structure used at scale, both searched exhaustively so that the routes, not k-means seeds, are
compared). Many removals, added chunks, unremovable structures and failed recall take the full
route; both publish atomically; a running server picks the new index up through its hot swap.
Training text drops excluded chunks, and models and cached neighbours are keyed by them.
"""

from __future__ import annotations

import itertools

import faiss
import numpy as np
import pyarrow as pa
import pytest
import requests
from helpers import free_port, serve_in_thread, tiny_spec

from retro_ops.catalog.exclusions import NewExclusion
from retro_ops.errors import SimulatedCrash
from retro_ops.retrieval.index.build import IndexConfig, build_index
from retro_ops.retrieval.index.incremental import removal_blocker, remove_ids
from retro_ops.retrieval.index.publish import current_build, index_root
from retro_ops.retrieval.index.route import index_retrieval_set
from retro_ops.retrieval.retriever import Retriever
from retro_ops.retrieval.sets import build_retrieval_set_version, retrieval_set_vectors
from retro_ops.serving.app import Limits, create_app
from retro_ops.serving.deployment import DeploymentHolder
from retro_ops.training.data import make_sequences
from retro_ops.training.neighbours import NeighbourConfig
from retro_ops.training.prepare import model_key, neighbours_for, prepare_training
from retro_ops.training.run import train_model

EXACT = IndexConfig(factory="IDMap,Flat")
IVF = IndexConfig(factory="IVF2,Flat", nprobe=2)  # every list probed: exact answers
# the structure chosen at >= 200k vectors; both lists probed and 64x re-ranking cover all vectors
REFINED = IndexConfig(factory="IDMap,IVF2_HNSW32,PQ16x4fs,RFlat", nprobe=2)
DISK = IndexConfig(factory="IVF2_HNSW32,PQ48x4fs,DiskRefine", nprobe=2)  # the at-scale default's shape
TOKEN = "rebuild-test-admin-token"
_names = itertools.count()


@pytest.fixture
def indexed_home(own_home):
    """Every test here records exclusions (they apply to every set of a home): each test gets
    its own copy of the home, with set `small` published."""
    return own_home


@pytest.fixture
def ws(indexed_home, embedder):
    from retro_ops.workspace import Workspace

    return Workspace(*indexed_home, embedder)


def new_set(indexed_home, embedder, config: IndexConfig, **kwargs):
    """A fresh set over corpus `small` as it stands, fully built and published with `config`."""
    settings, catalog, _ = indexed_home
    name = f"rebuild-{next(_names)}"
    catalog.create_retrieval_set(name, ["small"])
    return name, rebuild(indexed_home, embedder, name, config, **kwargs)


def rebuild(indexed_home, embedder, name: str, config: IndexConfig, **kwargs):
    """A new set version for the exclusions now in force, indexed by whichever route fits."""
    settings, catalog, store = indexed_home
    build_retrieval_set_version(catalog, store, name, embedder.space)
    return index_retrieval_set(catalog, store, settings.indices_dir, name, 384, config=config, **kwargs)


def exclude(catalog, members: list[dict], n: int, offset: int = 3) -> list[dict]:
    """Exclude `n` chunks spread over the set (by chunk id, one by its text)."""
    chosen = members[offset::max(1, len(members) // n)][:n]
    catalog.record_exclusions([NewExclusion("content_hash" if i == 0 else "chunk",
                                            r["content_hash"] if i == 0 else str(r["chunk_id"]), "test")
                               for i, r in enumerate(chosen)], actor="pytest")
    return chosen


def members(indexed_home, name: str) -> list[dict]:
    _, catalog, store = indexed_home
    version = catalog.latest_retrieval_set_version(name)
    return store.members(version.digest, ["chunk_id", "doc_id", "position", "content_hash",
                                          "text"]).sort_by("chunk_id").to_pylist()


def opened(indexed_home, embedder, name: str) -> Retriever:
    settings, catalog, store = indexed_home
    return Retriever.open(catalog, store, embedder, settings.indices_dir, name)


def index_ids(index: faiss.Index, vectors: np.ndarray, k: int) -> list[set[int]]:
    return [set(row[row >= 0].tolist()) for row in index.search(vectors, k)[1]]


@pytest.mark.parametrize("config", [IVF, REFINED, DISK], ids=["ivf", "ivf_hnsw_pq_refine", "disk_refine"])
def test_few_exclusions_remove_ids_and_answer_like_a_full_rebuild(indexed_home, embedder, config):
    settings, catalog, store = indexed_home
    name, first = new_set(indexed_home, embedder, config)
    assert first.manifest.route == "full" and first.manifest.factory == config.factory
    before = members(indexed_home, name)
    gone = exclude(catalog, before, 3)
    result = rebuild(indexed_home, embedder, name, config, min_recall=0.9)
    manifest = result.manifest
    assert manifest.route == "incremental" and result.published is not None
    assert manifest.ntotal == result.version.n_chunks == first.version.n_chunks - 3
    assert manifest.full_build_ntotal == first.manifest.ntotal
    assert f"removed 3 ids from build {first.manifest.sha256[:12]}" in manifest.notes[-1]
    assert manifest.train_size == first.manifest.train_size  # not retrained
    assert result.quality.recall_at_k >= 0.9
    incremental = opened(indexed_home, embedder, name)  # the published build, every check passed
    assert incremental.manifest.sha256 == manifest.sha256 and incremental.index.ntotal == manifest.ntotal
    # the same version built in full, as another set over the same chunks
    full_name, full = new_set(indexed_home, embedder, config)
    assert full.manifest.route == "full" and full.version.digest == result.version.digest
    ids, vectors = retrieval_set_vectors(store, result.version, 384)
    gone_ids = {r["chunk_id"] for r in gone}
    gone_vectors = store.vectors_of(result.version.embedding_space_id, 384,
                                    pa.array([r["content_hash"] for r in gone]))
    queries = np.concatenate([vectors[::4], gone_vectors])  # a fixed sample plus the removed texts
    by_removal = index_ids(incremental.index, queries, 10)
    by_rebuild = index_ids(opened(indexed_home, embedder, full_name).index, queries, 10)
    assert by_removal == by_rebuild and all(len(s) == 10 for s in by_removal)
    assert not gone_ids & set().union(*by_removal)  # the removed chunks are nowhere
    hits = incremental.search(gone_vectors, incremental.index.ntotal)[1]  # raw search, no filter
    assert not gone_ids & set(hits.ravel().tolist())


def test_removals_add_up_and_many_or_added_chunks_take_the_full_route(indexed_home, embedder):
    settings, catalog, store = indexed_home
    name, first = new_set(indexed_home, embedder, EXACT)
    n = first.version.n_chunks
    budget = int(0.05 * n)  # removals allowed since the last full build
    exclude(catalog, members(indexed_home, name), budget - 1, offset=1)
    step = rebuild(indexed_home, embedder, name, EXACT)
    assert step.manifest.route == "incremental" and step.manifest.full_build_ntotal == n
    exclude(catalog, members(indexed_home, name), 2, offset=5)  # past the budget, counted from n
    over = rebuild(indexed_home, embedder, name, EXACT)
    assert over.manifest.route == "full" and over.manifest.full_build_ntotal == over.manifest.ntotal
    assert f"{budget + 1} of {n} vectors removed since the last full build" in over.manifest.notes[-1]
    # a revoked exclusion brings a chunk back: it is not in the published index, so build anew
    [back] = catalog.list_exclusions(include_revoked=False)[-1:]
    catalog.revoke_exclusion(back.id, reason="test", actor="pytest")
    exclude(catalog, members(indexed_home, name), 2, offset=7)
    added = rebuild(indexed_home, embedder, name, EXACT)
    assert added.manifest.route == "full" and "1 chunks were added" in added.manifest.notes[-1]
    # a whole document is far more than 5%: retrain on what is left
    doc = members(indexed_home, name)[0]["doc_id"]
    catalog.record_exclusions([NewExclusion("document", doc, "takedown")], actor="pytest")
    many = rebuild(indexed_home, embedder, name, EXACT)
    assert many.manifest.route == "full" and many.published is not None
    assert "% > 5.0%): retraining" in many.manifest.notes[-1]
    assert doc not in {r["doc_id"] for r in members(indexed_home, name)}
    assert opened(indexed_home, embedder, name).index.ntotal == many.version.n_chunks


def test_unremovable_structures_and_failed_recall_take_the_full_route(indexed_home, embedder):
    settings, catalog, store = indexed_home
    pca = IndexConfig(factory="IDMap,PCA64,Flat")
    name, _ = new_set(indexed_home, embedder, pca)
    exclude(catalog, members(indexed_home, name), 1)
    result = rebuild(indexed_home, embedder, name, pca)
    assert result.manifest.route == "full" and result.published is not None
    assert "no known-correct way to remove vectors from IndexPreTransform" in result.manifest.notes[-1]
    assert "IndexHNSWFlat" in removal_blocker(faiss.IndexIDMap(faiss.IndexHNSWFlat(8, 4)))
    # recall after removal below the check: the full route is tried, and fails the check too
    name, _ = new_set(indexed_home, embedder, IVF)
    root = index_root(settings.indices_dir, name)
    before = current_build(root)
    exclude(catalog, members(indexed_home, name), 1, offset=9)
    failed = rebuild(indexed_home, embedder, name, IVF, min_recall=1.01)
    assert failed.manifest.route == "full" and failed.published is None
    assert "after removing ids is below 1.01" in failed.manifest.notes[-1]
    assert current_build(root) == before  # the previous index keeps serving


def test_faiss_own_id_map_removal_misnumbers_an_ivf_and_ours_does_not():
    """Why removal is done structure by structure: IndexIDMap.remove_ids over an IVF."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(2000, dtype=np.int64) * 7 + 3
    keep = np.arange(2000) % 10 != 0
    config = IndexConfig(factory="IDMap,IVF8,Flat", nprobe=8)
    theirs, ours = build_index(vectors, ids, config).index, build_index(vectors, ids, config).index
    theirs.remove_ids(faiss.IDSelectorBatch(ids[~keep]))
    assert remove_ids(ours, ids[~keep]) == 200 and ours.ntotal == 1800
    own = ids[keep]
    assert (theirs.search(vectors[keep], 1)[1][:, 0] == own).mean() < 0.5
    assert (ours.search(vectors[keep], 1)[1][:, 0] == own).all()


def test_a_crash_while_publishing_a_removal_keeps_the_previous_index(indexed_home, embedder):
    settings, catalog, store = indexed_home
    name, first = new_set(indexed_home, embedder, IVF)
    root = index_root(settings.indices_dir, name)
    before = current_build(root)
    exclude(catalog, members(indexed_home, name), 2, offset=11)
    with pytest.raises(SimulatedCrash, match="before flipping CURRENT"):
        rebuild(indexed_home, embedder, name, IVF, crash_at="before_flip")
    assert current_build(root) == before
    assert opened(indexed_home, embedder, name).index.ntotal == first.manifest.ntotal
    again = index_retrieval_set(catalog, store, settings.indices_dir, name, 384, config=IVF)
    assert again.manifest.route == "incremental" and current_build(root)[1] == again.manifest.sha256
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == [".lock"]


def test_a_running_server_picks_up_the_rebuilt_index_through_the_hot_swap(indexed_home, embedder, ws):
    settings, catalog, store = indexed_home
    rebuild(indexed_home, embedder, "small", EXACT)  # current with the exclusions made so far
    info = train_model(ws, prepare_training(ws, tiny_spec(steps=2)), "retro").info
    port = free_port()
    holder = DeploymentHolder.start(ws, info.ref, "small", f"http://127.0.0.1:{port}", TOKEN)
    with serve_in_thread(create_app(holder, admin_token=TOKEN, limits=Limits()), port) as base:
        served = requests.get(f"{base}/deployment", timeout=10).json()
        [gone] = exclude(catalog, members(indexed_home, "small"), 1, offset=13)
        result = rebuild(indexed_home, embedder, "small", EXACT)
        assert result.manifest.route == "incremental"
        swapped = requests.put(f"{base}/deployment/retrieval-set", json={"retrieval_set": "small"},
                               headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert swapped.status_code == 200, swapped.text
        now = requests.get(f"{base}/deployment", timeout=10).json()
        assert now["retrieval_set_version"] == result.version.id != served["retrieval_set_version"]
        assert now["index_sha256"] == result.manifest.sha256 and now["chunks"] == served["chunks"] - 1
        assert holder.current.retriever.index.ntotal == result.manifest.ntotal
        answer = requests.post(f"{base}/retrieve", json={"text": gone["text"], "k": 5}, timeout=60).json()
        assert answer["retrieval_set_version"] == result.version.id
        assert gone["chunk_id"] not in {n["chunk_id"] for n in answer["neighbours"]}


def test_training_text_drops_excluded_chunks_and_keys_change(indexed_home, embedder, ws):
    settings, catalog, store = indexed_home
    rebuild(indexed_home, embedder, "small", EXACT)
    spec = tiny_spec(steps=2)
    before = prepare_training(ws, spec)
    table = before.train_table
    doc = table.doc_ids[0]
    rows = np.flatnonzero(table.doc_ids == doc)
    middle = int(table.chunk_ids[rows[len(rows) // 2]])
    other = int(np.flatnonzero(table.doc_ids != doc)[0])
    catalog.record_exclusions([NewExclusion("chunk", str(middle), "private"),
                               NewExclusion("content_hash", table.content_hashes[other], "toxic")],
                              actor="pytest")
    after = prepare_training(ws, spec)
    kept = set(after.train_table.chunk_ids.tolist())
    assert middle not in kept and int(table.chunk_ids[other]) not in kept
    assert len(after.train_table) == len(table) - 2 and after.train_table.dropped
    assert not set(after.train_table.content_hashes) & {table.content_hashes[other]}
    # a sequence never bridges the gap the excluded chunk left in its document
    sequences = make_sequences(after.train_table, spec.model.n_chunks)
    for row in sequences.chunk_index:
        real = row[row >= 0]
        positions, docs = after.train_table.positions[real], after.train_table.doc_ids[real]
        assert (np.diff(positions) == 1).all() and len(set(docs)) == 1
    for kind in ("baseline", "retro"):  # a checkpoint trained on the excluded text is not reused
        assert model_key(kind, before, None, "t") != model_key(kind, after, None, "t")
    assert after.train_neighbours.key != before.train_neighbours.key
    used = set(after.train_neighbours.neighbours.ids[after.train_neighbours.neighbours.mask].tolist())
    assert middle not in used


def test_cached_neighbours_are_re_derived_when_an_exclusion_is_added(indexed_home, embedder, ws):
    settings, catalog, store = indexed_home
    rebuild(indexed_home, embedder, "small", EXACT)
    retriever = ws.retriever("small")
    table = prepare_training(ws, tiny_spec(steps=2)).heldout_table
    config = NeighbourConfig(k=3, depth_factor=8)
    first = neighbours_for(ws, table, retriever, config, 64)
    again = neighbours_for(ws, table, retriever, config, 64)
    assert again.key == first.key and not again.computed_now  # cached
    counts = np.unique(first.neighbours.ids[first.neighbours.mask], return_counts=True)
    popular = int(counts[0][np.argmax(counts[1])])  # a neighbour of several chunks
    catalog.record_exclusions([NewExclusion("chunk", str(popular), "test")], actor="pytest")
    derived = neighbours_for(ws, table, retriever, config, 64)  # same index: only the list changed
    assert derived.key != first.key and derived.computed_now
    assert popular not in set(derived.neighbours.ids[derived.neighbours.mask].tolist())
