"""FAISS indices on real chunk embeddings: build, publish atomically, refuse bad ones, retrieve."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retro_ops.errors import IndexBuildError, IndexIntegrityError
from retro_ops.retrieval.index.build import IndexConfig, build_index, choose_factory
from retro_ops.retrieval.index.publish import CURRENT, INDEX_FILE, current_build, index_root
from retro_ops.retrieval.index.route import index_retrieval_set
from retro_ops.retrieval.sets import build_retrieval_set_version, retrieval_set_vectors
from retro_ops.retrieval.retriever import Retriever

IVF = IndexConfig(factory="IVF3,Flat", nprobe=2)  # ~150 chunks support 3 lists


@pytest.fixture(scope="module")
def built(indexed_home, embedder):
    settings, catalog, store = indexed_home
    version = build_retrieval_set_version(catalog, store, "small", embedder.space).version
    first = index_retrieval_set(catalog, store, settings.indices_dir, "small", 384)
    return version, first


def open_retriever(indexed_home, embedder, **kwargs) -> Retriever:
    settings, catalog, store = indexed_home
    return Retriever.open(catalog, store, embedder, settings.indices_dir, "small", **kwargs)


def test_chunks_retrieve_themselves_exact_and_approximate(indexed_home, embedder, built):
    settings, catalog, store = indexed_home
    version, first = built
    assert first.manifest.factory == "IDMap,Flat" and first.quality.recall_at_k == 1.0
    members = store.members(version.digest, ["chunk_id", "text"]).to_pylist()[::7][:30]
    texts = [m["text"] for m in members]
    exact = open_retriever(indexed_home, embedder).retrieve(texts, k=3)
    ivf = index_retrieval_set(catalog, store, settings.indices_dir, "small", 384, config=IVF)
    assert ivf.manifest.factory == "IVF3,Flat" and ivf.published is not None
    approximate = open_retriever(indexed_home, embedder).retrieve(texts, k=3)
    for member, e, a in zip(members, exact, approximate):
        assert e[0].chunk_id == a[0].chunk_id == member["chunk_id"]
        assert e[0].score == pytest.approx(1.0, abs=1e-4)
        assert len(e[0].token_ids) > 64 or e[0].continuation_text == ""  # chunk + continuation


def test_neighbour_values_are_chunk_plus_continuation(indexed_home, embedder, built):
    _, _, store = indexed_home
    version, _ = built
    rows = store.members(version.digest).to_pylist()
    by_id = {r["chunk_id"]: r for r in rows}
    with_next = next(r for r in rows if r["continuation_text"])
    [hit] = open_retriever(indexed_home, embedder).retrieve([with_next["text"]], k=1)[0:1][0][:1]
    assert hit.text == with_next["text"] and hit.continuation_text == with_next["continuation_text"]
    assert hit.token_ids == with_next["token_ids"] + with_next["continuation_token_ids"]
    last = [r for r in rows if not r["continuation_text"]]
    assert len(last) == 6  # one per document: a continuation never crosses a document end
    assert all(r["continuation_token_ids"] is None for r in last)
    assert len(by_id) == version.n_chunks


def test_k_larger_than_ntotal_and_empty_queries(indexed_home, embedder, built):
    settings, catalog, store = indexed_home
    version, _ = built
    index_retrieval_set(catalog, store, settings.indices_dir, "small", 384)  # exact: all reachable
    retriever = open_retriever(indexed_home, embedder)
    results = retriever.retrieve(["whale", "", "   "], k=100_000)
    assert len(results[0]) == version.n_chunks
    assert all(n.chunk_id > 0 for n in results[0])  # no -1 leaks out
    assert [n.rank for n in results[0][:3]] == [1, 2, 3]
    assert results[1] == [] and results[2] == []
    assert retriever.retrieve([], k=5) == []


def test_recall_check_fails_on_a_bad_configuration_and_keeps_the_old_index(indexed_home, built):
    settings, catalog, store = indexed_home
    before = current_build(index_root(settings.indices_dir, "small"))
    bad = index_retrieval_set(catalog, store, settings.indices_dir, "small", 384,
                              config=IndexConfig(factory="IVF3,Flat", nprobe=1), min_recall=0.9)
    assert bad.quality.recall_at_k < 0.9
    assert bad.published is None
    assert current_build(index_root(settings.indices_dir, "small")) == before


@pytest.mark.parametrize("crash_at", ["after_index_write", "before_flip"])
def test_crash_during_publish_leaves_previous_index_served(indexed_home, embedder, built, crash_at):
    settings, catalog, store = indexed_home
    before = current_build(index_root(settings.indices_dir, "small"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        index_retrieval_set(catalog, store, settings.indices_dir, "small", 384, config=IVF,
                            crash_at=crash_at)
    assert current_build(index_root(settings.indices_dir, "small")) == before
    retriever = open_retriever(indexed_home, embedder)
    assert retriever.manifest.sha256 == before[1]
    assert retriever.retrieve(["the whale"], k=1)[0]


def test_sha256_mismatch_is_refused(indexed_home, embedder, built):
    settings, catalog, store = indexed_home
    index_retrieval_set(catalog, store, settings.indices_dir, "small", 384)
    root = index_root(settings.indices_dir, "small")
    build, _ = current_build(root)
    path = root / build / INDEX_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexIntegrityError, match=r"sha256 .* does not match the manifest"):
        open_retriever(indexed_home, embedder)
    index_retrieval_set(catalog, store, settings.indices_dir, "small", 384)  # repair for others


def test_untrusted_or_escaping_pointer_is_refused(indexed_home, embedder, built, tmp_path):
    settings, _, _ = indexed_home
    root = index_root(settings.indices_dir, "small")
    saved = (root / CURRENT).read_text()
    try:
        (root / CURRENT).write_text(json.dumps({"build": "../../etc", "sha256": "x"}))
        with pytest.raises(IndexIntegrityError, match=r"names '\.\./\.\./etc', which is not a build"):
            open_retriever(indexed_home, embedder)
    finally:
        (root / CURRENT).write_text(saved)


def test_index_not_in_catalog_is_refused(indexed_home, embedder, built, tmp_path):
    from retro_ops.catalog import Catalog
    from retro_ops.retrieval.index.publish import load_current

    settings, _, _ = indexed_home
    stranger = Catalog.open(f"sqlite:///{tmp_path / 'other.db'}")  # never built anything
    with pytest.raises(IndexIntegrityError, match="did not build"):
        load_current(index_root(settings.indices_dir, "small"), expected_ntotal=built[0].n_chunks,
                     retrieval_set="small", is_trusted=stranger.is_trusted_index)
    with pytest.raises(IndexIntegrityError, match=r"ntotal \d+ != 5 rows"):
        load_current(index_root(settings.indices_dir, "small"), expected_ntotal=5,
                     retrieval_set="small", is_trusted=lambda *_: True)


def test_nan_and_wrong_dimension_are_rejected_before_add(indexed_home, built):
    _, _, store = indexed_home
    ids, vectors = retrieval_set_vectors(store, built[0], 384)
    broken = vectors.copy()
    broken[[3, 10]] = np.nan
    broken[20, 5] = np.inf
    with pytest.raises(IndexBuildError, match=r"^3 of \d+ vectors contain NaN or Inf"):
        build_index(broken, ids)
    with pytest.raises(IndexBuildError, match=r"shape \(\d+, 100\); the index expects \(n, 384\)"):
        from retro_ops.retrieval.index.build import validate_vectors
        validate_vectors(vectors[:, :100], ids, 384)
    with pytest.raises(IndexBuildError, match="no vectors"):
        build_index(np.zeros((0, 384), np.float32), np.zeros(0, np.int64))


def test_too_few_training_points_lower_nlist_or_fall_back(indexed_home, built):
    _, _, store = indexed_home
    ids, vectors = retrieval_set_vectors(store, built[0], 384)
    lowered = build_index(vectors, ids, IndexConfig(factory="IVF1024,Flat"))
    supported = len(vectors) // 39
    assert lowered.factory == f"IVF{supported},Flat" and lowered.index.ntotal == len(vectors)
    assert lowered.notes == [f"nlist lowered from 1024 to {supported}: only {len(vectors)} training vectors"]
    flat = build_index(vectors[:50], ids[:50], IndexConfig(factory="IVF64,Flat"))
    assert flat.factory == "IDMap,Flat" and flat.index.ntotal == 50


def test_factory_chosen_by_size():
    assert choose_factory(1_000, 384) == "IDMap,Flat"
    assert choose_factory(50_000, 384) == "IVF894,Flat"
    assert choose_factory(5_800_000, 384) == "IVF9633_HNSW32,PQ48x4fs,DiskRefine"


def test_the_at_scale_factory_builds_with_chunk_ids(indexed_home, built):
    """The >= 200k structure, on real vectors (nlist lowered to what they support)."""
    _, _, store = indexed_home
    ids, vectors = retrieval_set_vectors(store, built[0], 384)
    result = build_index(vectors, ids, IndexConfig(factory=choose_factory(1_000_000, 384)))
    assert result.factory.startswith("IVF") and result.factory.endswith("_HNSW32,PQ48x4fs,DiskRefine")
    assert result.search_params["k_factor_rf"] == 64 and result.index.ntotal == len(ids)
    _, found = result.index.search(vectors[:5], 1)
    assert list(found[:, 0]) == list(ids[:5])


def test_a_chosen_graph_index_gets_its_own_search_depth(indexed_home, built):
    """`IDMap,HNSW16` (the graph is the index, no IVF): its depth is `efSearch`, which the recall
    gate may deepen unless the config fixed it (it used to set `quantizer_efSearch` and fail)."""
    from retro_ops.retrieval.index.tuning import deeper, fixed_by

    _, _, store = indexed_home
    ids, vectors = retrieval_set_vectors(store, built[0], 384)
    graph = build_index(vectors, ids, IndexConfig(factory="IDMap,HNSW16"))
    assert graph.search_params == {"efSearch": 64} and graph.index.ntotal == len(ids)
    _, found = graph.index.search(vectors[:5], 1)
    assert list(found[:, 0]) == list(ids[:5])
    assert deeper(graph.factory, graph.search_params) == {"efSearch": 128}
    fixed = IndexConfig(factory="IDMap,HNSW16", ef_search=40)
    assert build_index(vectors, ids, fixed).search_params == {"efSearch": 40}
    assert deeper("IDMap,HNSW16", {"efSearch": 40}, fixed_by(fixed)) is None


def test_unchanged_set_gets_no_new_version_and_exclusions_are_never_retrieved(
        indexed_home, embedder, built):
    settings, catalog, store = indexed_home
    version, _ = built
    assert build_retrieval_set_version(catalog, store, "small", embedder.space).created is False
    members = store.members(version.digest, ["chunk_id", "text", "continuation_text"]).to_pylist()
    victim = members[10]
    catalog.add_exclusions([victim["chunk_id"]], reason="test takedown", policy="manual",
                           created_by="pytest")
    try:
        new = build_retrieval_set_version(catalog, store, "small", embedder.space)
        assert new.created and new.version.n_chunks == version.n_chunks - 1
        assert new.version.n_excluded == 1
        index_retrieval_set(catalog, store, settings.indices_dir, "small", 384)
        hits = open_retriever(indexed_home, embedder).retrieve([victim["text"]], k=20)[0]
        assert victim["chunk_id"] not in {h.chunk_id for h in hits}
        assert victim["text"] not in {h.continuation_text for h in hits}
    finally:
        from retro_ops.catalog import tables as m
        with catalog.session() as s:
            s.query(m.Exclusion).delete()
        build_retrieval_set_version(catalog, store, "small", embedder.space)
        index_retrieval_set(catalog, store, settings.indices_dir, "small", 384)


def test_unchanged_set_and_config_reuse_the_published_index(indexed_home, built):
    settings, catalog, store = indexed_home
    first = index_retrieval_set(catalog, store, settings.indices_dir, "small", 384)
    again = index_retrieval_set(catalog, store, settings.indices_dir, "small", 384)
    assert again.reused and again.manifest.sha256 == first.manifest.sha256
    assert again.published.build == first.published.build and again.quality.recall_at_k == 1.0
    other = index_retrieval_set(catalog, store, settings.indices_dir, "small", 384, config=IVF)
    assert not other.reused and other.manifest.factory == "IVF3,Flat"
