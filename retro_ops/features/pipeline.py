"""The feature pipeline of one corpus: documents -> chunks -> embeddings, each step incremental.

Each function is what one Dagster asset calls: it reads the previous step's output from the
feature store, writes only what is new (a document whose chunks are all stored is not
re-chunked, a chunk text already embedded in this space is not re-embedded), records the LanceDB version it produced
in the catalog, and returns the numbers the asset shows. Progress goes to a callback, never to
stdout. Chunks and embeddings are written block by block, so an interrupted run keeps what it
finished; the rerun completes a document cut mid-way (its stored prefix is kept, the missing
positions are added). Writes are safe against a concurrent run (see `store`).

A purged document (erased with `retro-ops exclude doc --purge`) is never stored again: still in
(or back in) the corpus folder, it is left out of the corpus version with a read issue naming
the purge and its content hash (never its path or the purge's reason), and its document is
never re-chunked from what a purge left behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from retro_ops.catalog import Catalog, CorpusVersionInfo
from retro_ops.catalog.purges import source_hash
from retro_ops.features.chunking import Chunker
from retro_ops.corpus import ReaderConfig, ReadIssue, ReadReport, collect_documents, read_corpus
from retro_ops.corpus.documents import CorpusSnapshot
from retro_ops.features.embedder import Embedder
from retro_ops.features.spaces import EmbeddingSpace
from retro_ops.features.shards import ShardSpec
from retro_ops.features.store import FeatureStore, TableWrite
from retro_ops.features.schemas import CHUNKS, DOCUMENTS, embeddings_table_name
from retro_ops.ids import set_digest, sha256_hex

Progress = Callable[[int, int], None]  # (done, total)


def _no_progress(done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class DocumentsResult:
    corpus_version: CorpusVersionInfo
    files: int
    documents: int
    new_documents: int
    duplicates_collapsed: int
    issues: list[ReadIssue]
    write: TableWrite
    seconds: float


@dataclass(frozen=True)
class ChunksResult:
    corpus_version: CorpusVersionInfo
    chunks: int  # all chunks of this corpus version
    new_chunks: int
    new_documents_chunked: int
    new_tokens: int
    short_documents: int  # documents shorter than one chunk (kept as one short chunk)
    write: TableWrite
    seconds: float
    data_version: str
    resumed_documents: int = 0  # documents a killed run left partly chunked, completed now

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class EmbeddingsResult:
    corpus_version: CorpusVersionInfo
    space: EmbeddingSpace
    chunks: int
    distinct_texts: int
    newly_embedded: int
    write: TableWrite
    seconds: float
    data_version: str
    writes: list[TableWrite] = field(default_factory=list)

    @property
    def chunks_per_second(self) -> float:
        return self.newly_embedded / self.seconds if self.seconds > 0 else 0.0


def ingest_documents(
    catalog: Catalog, store: FeatureStore, corpus: str, *,
    reader_config: ReaderConfig = ReaderConfig(), run_id: str | None = None,
) -> DocumentsResult:
    """Read the corpus source, store new documents, record the corpus version it now is."""
    started = time.perf_counter()
    info = catalog.get_corpus(corpus)
    report = ReadReport()
    snapshot = _without_purged(catalog, collect_documents(
        read_corpus(info.source_uri, reader_config, report)), report)
    with store.lock(DOCUMENTS):  # LanceDB's merge_insert is no uniqueness guarantee across writers
        write = store.add_documents(snapshot.documents)
        version = catalog.record_corpus_version(
            corpus, snapshot.documents, snapshot.digest, documents_lance_version=write.version,
            n_issues=len(report.issues), run_id=run_id)
    return DocumentsResult(version, report.files, len(snapshot.documents), write.inserted,
                           snapshot.duplicates_collapsed, report.issues, write,
                           time.perf_counter() - started)


def chunk_corpus(
    catalog: Catalog, store: FeatureStore, chunker: Chunker, corpus: str, *,
    run_id: str | None = None, progress: Progress = _no_progress, write_every: int = 20_000,
    shard: ShardSpec | None = None,
) -> ChunksResult:
    """Chunk the documents of the corpus's latest version whose chunks are not all stored yet
    (only those of `shard`, when given). Chunk ids depend on (document, position) only, so
    re-chunking a partly stored document inserts exactly its missing positions."""
    started = time.perf_counter()
    version = catalog.latest_corpus_version(corpus)
    doc_ids = _of_shard(catalog.corpus_doc_ids(version.id), shard)
    complete, partial = store.chunked_documents()
    todo = sorted(set(doc_ids) - complete - catalog.purged_documents().keys())
    texts = store.document_texts(todo)
    inserted = new_tokens = short_docs = docs_done = 0
    lance_version = store.version(CHUNKS)
    progress(0, len(todo))
    for rows in row_blocks(chunker.chunk_tables((d, texts[d]) for d in todo), write_every):
        write = store.add_chunk_table(rows)
        inserted, lance_version = inserted + write.inserted, write.version
        n_tokens = rows.column("n_tokens")
        new_tokens += pc.sum(n_tokens).as_py() or 0
        short_docs += pc.sum(pc.and_(pc.equal(rows.column("position"), 0),
                                     pc.less(n_tokens, chunker.config.chunk_tokens))).as_py() or 0
        docs_done += pc.sum(pc.is_null(rows.column("next_chunk_id"))).as_py() or 0  # last chunks stored
        progress(docs_done, len(todo))
    progress(len(todo), len(todo))
    n_chunks = store.chunks_of_documents(doc_ids, ["chunk_id"]).num_rows
    seconds = time.perf_counter() - started
    data_version = sha256_hex(f"{version.digest}:{chunker.identity}{_suffix(shard)}")[:16]
    catalog.record_feature_version(f"chunks{_suffix(shard)}", version.id, CHUNKS, lance_version,
                                   rows_written=inserted, run_id=run_id,
                                   stats={"chunks": n_chunks, "new_tokens": new_tokens})
    return ChunksResult(version, n_chunks, inserted, len(todo), new_tokens, int(short_docs),
                        TableWrite(CHUNKS, inserted, lance_version), seconds, data_version,
                        resumed_documents=len(partial.intersection(todo)))


def row_blocks(tables: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """The rows of a stream of tables re-cut, as they come, into blocks of exactly `rows` (the
    last one shorter): what a crash can lose is bounded by the block, whatever the batching."""
    pending: pa.Table | None = None
    for table in tables:
        pending = table if pending is None else pa.concat_tables([pending, table])
        while pending.num_rows >= rows:
            yield pending.slice(0, rows)
            pending = pending.slice(rows)
    if pending is not None and pending.num_rows:
        yield pending


def embed_corpus(
    catalog: Catalog, store: FeatureStore, embedder: Embedder, corpus: str, *,
    run_id: str | None = None, progress: Progress = _no_progress, block: int = 512,
    shard: ShardSpec | None = None,
) -> EmbeddingsResult:
    """Embed the corpus's chunk texts (of `shard`'s documents, when given) that have no vector
    in this embedding space yet."""
    started = time.perf_counter()
    space = embedder.space
    table = embeddings_table_name(space.space_id)
    catalog.register_embedding_space(space)  # insert ... on conflict: any number of registrars at once
    version = catalog.latest_corpus_version(corpus)
    chunks = store.chunks_of_documents(_of_shard(catalog.corpus_doc_ids(version.id), shard),
                                       ["content_hash", "text"])
    missing = store.missing_embeddings(space.space_id, space.dim, chunks.column("content_hash"))
    todo = _first_text_per_hash(chunks, missing)
    writes: list[TableWrite] = []
    progress(0, len(todo))
    for start in range(0, len(todo), block):
        hashes, texts = zip(*todo[start:start + block])
        writes.append(store.add_embeddings(space.space_id, hashes, embedder.embed(texts)))
        progress(min(start + block, len(todo)), len(todo))
    inserted = sum(w.inserted for w in writes)
    lance_version = writes[-1].version if writes else store.version(table)
    seconds = time.perf_counter() - started
    digest = sha256_hex(f"{version.digest}:{space.space_id}{_suffix(shard)}")[:16]
    distinct = len(pc.unique(chunks.column("content_hash")))
    catalog.record_feature_version(
        f"chunk_embeddings{_suffix(shard)}", version.id, table, lance_version, rows_written=inserted,
        run_id=run_id, embedding_space_id=space.space_id,
        stats={"chunks": chunks.num_rows, "distinct_texts": distinct})
    return EmbeddingsResult(version, space, chunks.num_rows, distinct, inserted,
                            TableWrite(table, inserted, lance_version), seconds, digest, writes)


def materialize_corpus(
    catalog: Catalog, store: FeatureStore, chunker: Chunker, embedder: Embedder, corpus: str,
) -> tuple[DocumentsResult, ChunksResult, EmbeddingsResult]:
    """documents -> chunks -> embeddings of one corpus, in order, outside Dagster (tests,
    benchmarks, scripts); the Dagster assets run the same three steps, one asset each."""
    return (ingest_documents(catalog, store, corpus), chunk_corpus(catalog, store, chunker, corpus),
            embed_corpus(catalog, store, embedder, corpus))


def _without_purged(catalog: Catalog, snapshot: CorpusSnapshot, report: ReadReport) -> CorpusSnapshot:
    """The snapshot minus purged documents, each refusal one read issue naming the purge and the
    content hash, never the path or the reason (a file name can name a person, and read issues go
    into Dagster's run and event storage at every later run). Other issues about the refused
    documents' sources (a repaired byte, a bad line of a file only they came from) lose their path
    the same way: they become `purged:<sha256 prefix>`, as the catalog keeps them."""
    purged = catalog.purged_documents()
    refused = [d for d in snapshot.documents if d.doc_id in purged]
    if not refused:
        return snapshot
    kept = [d for d in snapshot.documents if d.doc_id not in purged]
    gone = {s for d in refused for s in d.sources}
    files = {_file_of(s) for s in gone} - {_file_of(s) for d in kept for s in d.sources}
    report.issues[:] = [i if i.source not in gone and _file_of(i.source) not in files else
                        ReadIssue(f"purged:{source_hash(_file_of(i.source))[:16]}", i.reason, i.severity)
                        for i in report.issues]
    report.issues.extend(ReadIssue(f"purge {purged[d.doc_id].id}", f"document {d.doc_id} (its content hash) "
                                   "was purged; not stored again") for d in refused)
    return CorpusSnapshot(kept, set_digest(d.doc_id for d in kept), snapshot.duplicates_collapsed)


def _file_of(source: str) -> str:
    """The file a read issue or a source is about: `f.jsonl#L3` and `f.jsonl:3` are in `f.jsonl`."""
    file = source.split("#", 1)[0]
    head, _, line = file.rpartition(":")
    return head if head and line.isdigit() else file


def _of_shard(doc_ids: list[str], shard: ShardSpec | None) -> list[str]:
    return doc_ids if shard is None else shard.select(doc_ids)


def _suffix(shard: ShardSpec | None) -> str:
    """What tells a shard's records and data versions from the whole corpus's."""
    return "" if shard is None else f"[shard {shard.key}]"


def _first_text_per_hash(chunks: pa.Table, wanted: pa.Array) -> list[tuple[str, str]]:
    """(hash, text) for each wanted hash, once: identical chunk texts are embedded once."""
    mask = pc.is_in(chunks.column("content_hash"), value_set=wanted)
    seen: dict[str, str] = {}
    for h, text in zip(chunks.column("content_hash").filter(mask).to_pylist(),
                       chunks.column("text").filter(mask).to_pylist()):
        seen.setdefault(h, text)
    return list(seen.items())
