"""Writers for tests/test_write_integrity.py, each run in a spawned process.

A module of its own, with imports inside the functions: a spawned child re-imports the module
its target lives in, so it then loads only what its own write needs (no torch for a raw write).
A crash is a real SIGKILL the worker sends itself at a seeded point.
"""

from __future__ import annotations

import os
import signal


def _sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _open(settings):
    from retro_ops.catalog import Catalog
    from retro_ops.features.store import FeatureStore

    return Catalog.open(settings.catalog_url), FeatureStore(settings.lancedb_uri)


def write_300_keys(uri: str, raw: bool, barrier) -> None:
    import pyarrow as pa

    from retro_ops.features.store import FeatureStore
    from retro_ops.features.schemas import DOCUMENTS, DOCUMENTS_SCHEMA

    store = FeatureStore(uri)
    rows = pa.table({"doc_id": [f"d{i:03d}" for i in range(300)],
                     "text": [f"text {i}" for i in range(300)], "n_chars": [6] * 300,
                     "metadata": ["{}"] * 300}, schema=DOCUMENTS_SCHEMA)
    table = store.table(DOCUMENTS, DOCUMENTS_SCHEMA)
    barrier.wait()
    if raw:  # what the store did before the fix: an "idempotent" merge_insert, no lock
        table.merge_insert("doc_id").when_not_matched_insert_all().execute(rows)
    else:
        store._insert_new(DOCUMENTS, DOCUMENTS_SCHEMA, "doc_id", rows)


def materialize(settings, corpus: str, barrier) -> None:
    from retro_ops.features import pipeline
    from retro_ops.features.chunking import Chunker
    from retro_ops.features.embedder import Embedder

    embedder = Embedder()
    catalog, store = _open(settings)
    barrier.wait()
    pipeline.ingest_documents(catalog, store, corpus)
    pipeline.chunk_corpus(catalog, store, Chunker(embedder.tokenizer), corpus, write_every=5)
    pipeline.embed_corpus(catalog, store, embedder, corpus, block=4)


def build_set(settings, space, barrier, results) -> None:
    from retro_ops.retrieval.sets import build_retrieval_set_version

    catalog, store = _open(settings)
    barrier.wait()
    results.put(build_retrieval_set_version(catalog, store, "s", space).created)


def chunk_then_die(settings, corpus: str, after_documents: int) -> None:
    """Chunk in blocks of 5 and die after the first block that is stored once `after_documents`
    documents are complete and that ends inside a document (progress comes after each block)."""
    from retro_ops.features import pipeline
    from retro_ops.features.chunking import Chunker
    from retro_ops.features.embedder import default_model_dir

    catalog, store = _open(settings)

    def progress(done: int, total: int) -> None:
        if done >= after_documents and store.chunked_documents()[1]:
            _sigkill_self()

    pipeline.chunk_corpus(catalog, store, Chunker.from_model_dir(default_model_dir()), corpus,
                          write_every=5, progress=progress)


def embed_then_die(settings, corpus: str, block: int) -> None:
    """Die right after the first block of vectors is written."""
    from retro_ops.features import pipeline
    from retro_ops.features.embedder import Embedder

    def progress(done: int, total: int) -> None:
        if done >= block:
            _sigkill_self()

    catalog, store = _open(settings)
    pipeline.embed_corpus(catalog, store, Embedder(), corpus, block=block, progress=progress)


def build_set_then_die(settings, space) -> None:
    """Die the moment the members are stored, before the catalog records the version, while the
    members lock is held (the kernel must release it for the rebuild)."""
    from retro_ops.catalog import Catalog
    from retro_ops.retrieval.sets import build_retrieval_set_version

    Catalog.record_retrieval_set_version = lambda self, name, **fields: _sigkill_self()
    catalog, store = _open(settings)
    build_retrieval_set_version(catalog, store, "s", space)
