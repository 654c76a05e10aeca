"""Nothing lost, nothing duplicated: concurrent writers and SIGKILLed runs on the feature store.

Writers are real processes (multiprocessing, spawn) on a real LanceDB; a crash is a real SIGKILL
that the worker sends itself at a seeded point (after N documents / one embedding block / the
members write), so the kill lands in the same place on every run.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from pathlib import Path

import pytest

from retro_ops.catalog import Catalog
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.features import checks, pipeline
from retro_ops.features.locks import lock_dir
from retro_ops.features.store import FeatureStore
from retro_ops.features.schemas import CHUNKS, DOCUMENTS, DOCUMENTS_SCHEMA, MEMBERS, embeddings_table_name
from retro_ops.retrieval.index.route import index_retrieval_set
from retro_ops.retrieval.sets import build_retrieval_set_version
from retro_ops.settings import Settings
from write_workers import (
    build_set,
    build_set_then_die,
    chunk_then_die,
    embed_then_die,
    materialize,
    write_300_keys,
)

SPAWN = mp.get_context("spawn")
CHAPTER = (CORPORA_DIR / "moby_dick" / "chapter_1.txt").read_text()
PARAGRAPHS = [p for p in CHAPTER.split("\n\n") if len(p) > 200]


def _corpus(folder: Path, texts: list[str]) -> Path:
    folder.mkdir(parents=True)
    for i, text in enumerate(texts):
        (folder / f"doc_{i:02d}.txt").write_text(text)
    return folder


def _long_documents(n: int = 5, chars: int = 2000) -> list[str]:
    """n documents of ~7 chunks each: a block flush then lands mid-document."""
    return [CHAPTER[i * chars:(i + 1) * chars] for i in range(n)]


def _home(root: Path) -> Settings:
    settings = Settings(home=root)
    settings.ensure_dirs()
    return settings


def _start(target, *args) -> mp.Process:
    process = SPAWN.Process(target=target, args=args)
    process.start()
    return process


def _join(*processes: mp.Process, timeout: float = 120) -> list[int]:
    for p in processes:
        p.join(timeout)
    codes = [p.exitcode for p in processes]
    for p in processes:
        if p.exitcode is None:
            p.kill()
    return codes


def _chunk_rows(store: FeatureStore) -> list[tuple]:
    rows = store.db.open_table(CHUNKS).to_arrow().sort_by("chunk_id")
    return list(zip(*(rows.column(c).to_pylist() for c in
                      ("chunk_id", "doc_id", "position", "token_ids", "text", "next_chunk_id"))))


def _feed(root: Path, embedder, chunker, texts: list[str]):
    """A home whose corpus `c` is chunked and embedded, with a retrieval set `s` over it."""
    settings = _home(root / "home")
    catalog, store = Catalog.open(settings.catalog_url), FeatureStore(settings.lancedb_uri)
    catalog.add_corpus("c", str(_corpus(root / "c", texts)))
    pipeline.ingest_documents(catalog, store, "c")
    pipeline.chunk_corpus(catalog, store, chunker, "c")
    pipeline.embed_corpus(catalog, store, embedder, "c")
    catalog.create_retrieval_set("s", ["c"])
    return settings, catalog, store


# -- concurrent writers ----------------------------------------------------------------------
@pytest.mark.parametrize("path", [
    "store",
    # The bug, kept as a demonstration: without the lock, two processes' merge_insert of the same
    # keys both insert (Lance's conflict resolution lets two inserts through). strict: if this
    # ever stops duplicating, the xfail turns into a failure and tells us.
    pytest.param("raw_merge_insert", marks=pytest.mark.xfail(
        strict=True, reason="merge_insert is not a uniqueness guarantee across processes")),
])
def test_two_processes_insert_the_same_300_keys_once(tmp_path: Path, path: str):
    uri = str(tmp_path / "lancedb")
    FeatureStore(uri).table(DOCUMENTS, DOCUMENTS_SCHEMA)
    barrier = SPAWN.Barrier(2)
    codes = _join(*(_start(write_300_keys, uri, path != "store", barrier) for _ in range(2)))
    assert codes == [0, 0]
    store = FeatureStore(uri)
    assert store.db.open_table(DOCUMENTS).count_rows() == 300
    assert store.duplicate_keys(DOCUMENTS).num_rows == 0


@pytest.mark.slow  # two processes each load the BERT; the write path is covered fast above
def test_overlapping_materializations_store_each_key_once(tmp_path: Path, embedder, chunker):
    """Corpora a and b share 3 of their 6 documents each and are materialized at the same time."""
    settings = _home(tmp_path / "home")
    catalog = Catalog.open(settings.catalog_url)
    catalog.add_corpus("a", str(_corpus(tmp_path / "a", PARAGRAPHS[0:6])))
    catalog.add_corpus("b", str(_corpus(tmp_path / "b", PARAGRAPHS[3:9])))
    barrier = SPAWN.Barrier(2)
    assert _join(*(_start(materialize, settings, c, barrier) for c in "ab")) == [0, 0]

    store = FeatureStore(settings.lancedb_uri)
    assert store.db.open_table(DOCUMENTS).count_rows() == 9
    doc_ids = sorted({d for c in "ab" for d in catalog.corpus_doc_ids(catalog.latest_corpus_version(c).id)})
    space = embedder.space
    tables = [DOCUMENTS, CHUNKS, embeddings_table_name(space.space_id)]
    for table in tables:
        outcome = checks.unique_keys(store, table)
        assert outcome.passed, outcome.metadata
    assert checks.chunks_complete(store, chunker, doc_ids).passed
    data = checks.CorpusVectors.load(store, space.space_id, space.dim, doc_ids)
    assert checks.embeddings_complete(data).passed
    assert data.table.num_rows == len(data.hashes)  # one vector per chunk text, not two


def test_unique_keys_fails_on_duplicated_rows_and_repair_keeps_one(tmp_path: Path, embedder, chunker):
    """A store written before the fix (raw appends of rows already there): each table's
    `<table>_unique_keys` check fails; repair_duplicates keeps exactly one row per key."""
    settings, catalog, store = _feed(tmp_path, embedder, chunker, PARAGRAPHS[:4])
    build_retrieval_set_version(catalog, store, "s", embedder.space)
    tables = [DOCUMENTS, CHUNKS, embeddings_table_name(embedder.space.space_id), MEMBERS]
    for table in tables:
        lance = store.db.open_table(table)
        rows = lance.count_rows()
        assert checks.unique_keys(store, table).passed
        lance.add(lance.to_arrow().slice(0, 2))
        lance.add(lance.to_arrow().slice(0, 1))  # the first key now three times
        failed = checks.unique_keys(store, table)
        assert not failed.passed, table
        assert (failed.metadata["duplicated_keys"], failed.metadata["extra_rows"]) == (2, 3)
        assert store.repair_duplicates(table) == 3
        assert checks.unique_keys(store, table).passed
        assert store.db.open_table(table).count_rows() == rows  # a fresh handle: lance is stale
    doc_ids = catalog.corpus_doc_ids(catalog.latest_corpus_version("c").id)
    assert checks.chunks_complete(store, chunker, doc_ids).passed
    assert store.repair_duplicates(CHUNKS) == 0


def test_two_builds_of_one_set_at_once_make_one_version(tmp_path: Path, embedder, chunker):
    settings, catalog, store = _feed(tmp_path, embedder, chunker, PARAGRAPHS[:6])
    barrier, results = SPAWN.Barrier(2), SPAWN.Queue()
    codes = _join(*(_start(build_set, settings, embedder.space, barrier, results) for _ in range(2)))
    assert codes == [0, 0]
    assert sorted([results.get(timeout=5), results.get(timeout=5)]) == [False, True]
    version = catalog.latest_retrieval_set_version("s")
    members = store.members(version.digest, ["chunk_id"])
    assert members.num_rows == version.n_chunks == len(set(members.column("chunk_id").to_pylist()))
    assert checks.unique_keys(store, MEMBERS).passed
    built = index_retrieval_set(catalog, store, tmp_path / "indices", "s", embedder.dim)
    assert built.manifest.ntotal == version.n_chunks


# -- SIGKILL mid-write, then rerun -----------------------------------------------------------
def test_sigkill_while_chunking_then_rerun_equals_an_uninterrupted_run(tmp_path: Path, chunker):
    folder = _corpus(tmp_path / "corpus", _long_documents())
    homes = {}
    for name in ("killed", "clean"):
        settings = _home(tmp_path / name)
        catalog, store = Catalog.open(settings.catalog_url), FeatureStore(settings.lancedb_uri)
        catalog.add_corpus("c", str(folder))
        pipeline.ingest_documents(catalog, store, "c")
        homes[name] = settings, catalog, store
    settings, catalog, store = homes["killed"]
    doc_ids = catalog.corpus_doc_ids(catalog.latest_corpus_version("c").id)

    process = _start(chunk_then_die, settings, "c", 2)
    assert _join(process) == [-signal.SIGKILL]
    complete, partial = store.chunked_documents()
    assert len(complete) >= 1 and len(partial) == 1  # killed after a block ending mid-document
    broken = checks.chunks_complete(store, chunker, doc_ids)
    assert not broken.passed and broken.metadata["incomplete_documents"] == len(doc_ids) - len(complete)

    rerun = pipeline.chunk_corpus(catalog, store, chunker, "c", write_every=5)
    assert rerun.resumed_documents == 1
    clean = homes["clean"]
    pipeline.chunk_corpus(clean[1], clean[2], chunker, "c")
    assert _chunk_rows(store) == _chunk_rows(clean[2])
    assert checks.chunks_complete(store, chunker, doc_ids).passed
    assert checks.unique_keys(store, CHUNKS).passed


def test_sigkill_while_embedding_then_rerun_embeds_each_text_once(tmp_path: Path, embedder, chunker):
    settings = _home(tmp_path / "home")
    catalog, store = Catalog.open(settings.catalog_url), FeatureStore(settings.lancedb_uri)
    catalog.add_corpus("c", str(_corpus(tmp_path / "c", PARAGRAPHS[:5])))
    pipeline.ingest_documents(catalog, store, "c")
    pipeline.chunk_corpus(catalog, store, chunker, "c")

    assert _join(_start(embed_then_die, settings, "c", 4)) == [-signal.SIGKILL]
    space = embedder.space
    assert store.db.open_table(embeddings_table_name(space.space_id)).count_rows() == 4
    rerun = pipeline.embed_corpus(catalog, store, embedder, "c")
    assert rerun.newly_embedded == rerun.distinct_texts - 4
    doc_ids = catalog.corpus_doc_ids(rerun.corpus_version.id)
    data = checks.CorpusVectors.load(store, space.space_id, space.dim, doc_ids)
    assert checks.embeddings_complete(data).passed
    assert data.table.num_rows == len(data.hashes) == rerun.distinct_texts
    assert checks.unique_keys(store, embeddings_table_name(space.space_id)).passed


def test_sigkill_during_a_set_build_then_rebuild(tmp_path: Path, embedder, chunker):
    settings, catalog, store = _feed(tmp_path, embedder, chunker, PARAGRAPHS[6:10])
    assert _join(_start(build_set_then_die, settings, embedder.space)) == [-signal.SIGKILL]
    assert catalog.get_retrieval_set("s").latest_version_id is None  # killed before recording
    assert store.db.open_table(MEMBERS).count_rows() > 0  # ... but after storing the members

    build = build_retrieval_set_version(catalog, store, "s", embedder.space)  # lock was released
    assert build.created
    members = store.members(build.version.digest, ["chunk_id"])
    assert members.num_rows == build.version.n_chunks  # the killed run's members, not twice
    assert checks.unique_keys(store, MEMBERS).passed
    built = index_retrieval_set(catalog, store, tmp_path / "indices", "s", embedder.dim)
    assert built.manifest.ntotal == build.version.n_chunks


def test_lock_folder_is_local_only():
    assert lock_dir("s3://bucket/lancedb") is None
    assert lock_dir("/data/lancedb") == Path("/data/lancedb/.locks")
    assert lock_dir("file:///data/lancedb") == Path("/data/lancedb/.locks")


def test_unique_keys_of_an_unknown_table_is_refused(tmp_path: Path):
    with pytest.raises(KeyError, match="no key columns known for feature-store table 'nope'"):
        FeatureStore(str(tmp_path / "lancedb")).duplicate_keys("nope")


def test_atomic_path_publishes_whole_files_or_nothing(tmp_path: Path):
    """`durable.atomic_path`, under every hand-made file (specs, neighbour caches, int8
    encoders, lineage CSVs): the new bytes replace the old only when the writer finished; a
    writer that fails leaves the old file and no temp file."""
    from retro_ops.durable import atomic_path, write_atomic

    target = tmp_path / "folder" / "spec.json"
    write_atomic(target, b"old")
    with pytest.raises(RuntimeError, match="writer died"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the n")
            raise RuntimeError("writer died")
    assert target.read_bytes() == b"old"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name != target.name
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and [p.name for p in target.parent.iterdir()] == ["spec.json"]
