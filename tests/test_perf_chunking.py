"""Chunking on every core (#17): documents sharded over processes give the very chunks, in the
very order, that one process gives."""

from __future__ import annotations

from retro_ops.corpus import collect_documents, read_corpus
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.features.chunking import Chunker, ChunkerConfig, worker_pids
from retro_ops.features.embedder import default_model_dir


def _documents() -> list[tuple[str, str]]:
    raw = list(read_corpus(CORPORA_DIR / "moby_dick" / "*.txt"))[:30]
    return [(d.doc_id, d.text) for d in collect_documents(raw).documents]


def test_processes_give_the_same_chunks_in_the_same_order():
    # 4 documents a batch and a 20k-character segment: many batches, long documents segmented
    config = ChunkerConfig(batch_segments=4, segment_chars=20_000)
    chunker = Chunker.from_model_dir(default_model_dir(), config)
    documents = _documents()
    alone = list(chunker.chunk_documents(documents, workers=1))
    sharded = list(chunker.chunk_documents(documents, workers=2))
    assert len(alone) > 500 and sharded == alone
    assert len({c.doc_id for c in sharded}) == len(documents)
    pids = set(worker_pids())
    assert len(pids) >= 2  # this call's 2 workers (other tests' pools may be alive too)
    assert list(chunker.chunk_documents(documents, workers=2)) == alone
    assert set(worker_pids()) == pids  # the pool is kept: no workers started for the second call


def test_default_all_cores_config_chunks_like_one_process():
    chunker = Chunker.from_model_dir(default_model_dir(), ChunkerConfig(workers=0))
    documents = _documents()[:3]
    assert list(chunker.chunk_documents(documents)) == list(chunker.chunk_documents(documents, workers=1))


def test_chunk_tables_store_exactly_the_chunk_objects(tmp_path):
    """The write path's Arrow tables (no object per chunk) store the very rows `add_chunks`
    stores from `Chunk` objects: ids, token lists, spans, hashes, continuations and the
    missing continuation of each last chunk; an empty document gives no row; sharded or not."""
    import pyarrow as pa

    from retro_ops.features.store import FeatureStore
    from retro_ops.features.schemas import CHUNKS, CHUNKS_SCHEMA

    chunker = Chunker.from_model_dir(default_model_dir(), ChunkerConfig(batch_segments=4, segment_chars=3_000))
    documents = _documents()[:12] + [("empty", ""), ("short", "Call me Ishmael.")]
    objects, tables = FeatureStore(str(tmp_path / "objects")), FeatureStore(str(tmp_path / "tables"))
    objects.add_chunks(list(chunker.chunk_documents(documents, workers=1)))
    for workers in (1, 2):
        written = tables.add_chunk_table(pa.concat_tables(chunker.chunk_tables(documents, workers=workers)))
        assert written.inserted == (0 if workers == 2 else objects.table(CHUNKS, CHUNKS_SCHEMA).count_rows())

    def rows(store):
        return store.table(CHUNKS, CHUNKS_SCHEMA).to_arrow().sort_by("chunk_id")
    assert rows(tables).equals(rows(objects)) and rows(tables).num_rows > 100
    assert rows(tables).column("next_chunk_id").null_count == len(documents) - 1
