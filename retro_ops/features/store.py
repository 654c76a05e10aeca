"""The LanceDB feature store: documents, chunks, and one embedding feature set per space.

Tables:
- `documents`: doc_id, text, n_chars, metadata (JSON). Content-addressed, insert-only.
- `chunks`: one row per chunk (ids, tokens, text span, continuation). Insert-only: a chunk id is
  derived from (doc_id, position) and doc_id from the content, so a row never changes.
- `embeddings_<space_id>`: content_hash -> vector, one table per embedding space, so features
  of different embedders live side by side and identical chunk text is embedded once.
- `chunk_scores`: (scorer id@version, content_hash) -> score, the governance scorers' feature set.
- `retrieval_set_chunks`: the members of each retrieval-set version with their neighbour values.
Every write is a LanceDB version; writers return it so lineage can pin exactly what was read.
Filters are built with `lancedb.expr` (never string-formatted SQL: see STACK-FACTS).

Erasure (`delete_rows`, `erase_old_versions`) is the one exception to insert-only: a purged
document's rows are deleted and every older version that still holds them is removed.

Writers may run at once (two materializations of overlapping corpora, two builds of one set):
every write holds its table's inter-process lock (`locks.table_lock`) from reading which keys
exist to committing, so a key is stored once. `duplicate_keys` / `repair_duplicates` find and
remove the duplicates of stores written before that (or by an unlocked object-store writer).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.expr import col, lit

from retro_ops.errors import ErasureError
from retro_ops.features.locks import lock_dir, table_lock
from retro_ops.features.schemas import (
    CHUNKS, CHUNKS_SCHEMA, DOCUMENTS, DOCUMENTS_SCHEMA, MEMBERS, MEMBERS_SCHEMA, SCORES, SCORES_SCHEMA,
    embeddings_schema, embeddings_table_name, score_key, table_keys,
)

if TYPE_CHECKING:  # type-only: writer subprocesses then start without importing transformers
    from retro_ops.corpus import Document
    from retro_ops.features.chunking import Chunk

_IN_BATCH = 1000  # values per IN (...) filter
_ERASE_PASSES = 3  # optimize calls before an erasure gives up on a single version


@dataclass(frozen=True)
class TableWrite:
    """The outcome of one write: which table, how many rows went in, and the version after it."""

    table: str
    inserted: int
    version: int


class FeatureStore:
    def __init__(self, uri: str):
        self.uri = uri
        self.db = lancedb.connect(uri)
        self._known: dict[str, tuple[tuple[int, int], set]] = {}  # table -> ((version, rows), keys)

    def table(self, name: str, schema: pa.Schema) -> lancedb.table.Table:
        return self.db.create_table(name, schema=schema, exist_ok=True)

    def _table_names(self) -> set[str]:
        return set(self.db.list_tables().tables)

    def version(self, name: str) -> int:
        return self.db.open_table(name).version if name in self._table_names() else 0

    def lock(self, name: str):
        """The writer lock of one table (re-entrant): hold it across read-check-write sections."""
        return table_lock(self.uri, name)

    # -- generic helpers ---------------------------------------------------------------------
    def _insert_new(self, name: str, schema: pa.Schema, key: str, rows: pa.Table) -> TableWrite:
        """Insert rows whose key is not present yet, once each; an empty batch writes no version.

        Under the table's lock the keys present are exactly those of the version we see, so a
        plain `add` cannot duplicate. The key set is cached per version: block-by-block writes
        re-read the key column only when another writer committed in between (not quadratic)."""
        with self.lock(name):
            table = self.table(name, schema)
            n_rows = table.count_rows()
            known = self._known_keys(name, schema, key, (table.version, n_rows))
            fresh, mask = set(), []
            for k in rows.column(key).to_pylist():
                mask.append(k not in known and k not in fresh)
                fresh.add(k)
            rows = rows.filter(pa.array(mask, pa.bool_())) if rows.num_rows else rows
            if rows.num_rows == 0:
                return TableWrite(name, 0, table.version)
            if lock_dir(self.uri) is None:  # object storage: no lock; merge_insert narrows races
                result = table.merge_insert(key).when_not_matched_insert_all().execute(rows)
                inserted, version = result.num_inserted_rows, result.version
            else:
                table.add(rows)
                inserted, version = rows.num_rows, table.version
            known |= set(rows.column(key).to_pylist())
            self._known[name] = ((version, n_rows + inserted), known)
            return TableWrite(name, inserted, version)

    def _known_keys(self, name: str, schema: pa.Schema, key: str, stamp: tuple[int, int]) -> set:
        """The table's keys; `stamp` = (version, rows) also catches a dropped and re-created
        table whose version numbers start again."""
        cached = self._known.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        keys = set(self._column(name, schema, key).to_pylist())
        self._known[name] = (stamp, keys)
        return keys

    def _column(self, name: str, schema: pa.Schema, column: str) -> pa.Array:
        table = self.table(name, schema)
        data = table.search().select([column]).limit(None).to_arrow()
        return data.column(column).combine_chunks()

    def _rows_where_in(self, name: str, schema: pa.Schema, column: str, values: Sequence,
                       columns: list[str] | None = None, version: int | None = None) -> pa.Table:
        table = self.table(name, schema)
        if version is not None:
            table = self.db.open_table(name, version=version)
        parts = []
        for start in range(0, len(values), _IN_BATCH):
            query = table.search().where(col(column).isin(list(values[start:start + _IN_BATCH])).to_sql())
            if columns:
                query = query.select(columns)
            parts.append(query.limit(None).to_arrow())
        if not parts:
            return (schema if not columns else pa.schema([schema.field(c) for c in columns])).empty_table()
        return pa.concat_tables(parts)

    # -- documents ---------------------------------------------------------------------------
    def add_documents(self, documents: Iterable[Document]) -> TableWrite:
        docs = list(documents)
        rows = pa.table({
            "doc_id": [d.doc_id for d in docs], "text": [d.text for d in docs],
            "n_chars": [len(d.text) for d in docs],
            "metadata": [json.dumps(d.metadata, sort_keys=True) for d in docs],
        }, schema=DOCUMENTS_SCHEMA)
        return self._insert_new(DOCUMENTS, DOCUMENTS_SCHEMA, "doc_id", rows)

    def document_texts(self, doc_ids: Sequence[str]) -> dict[str, str]:
        rows = self._rows_where_in(DOCUMENTS, DOCUMENTS_SCHEMA, "doc_id", doc_ids, ["doc_id", "text"])
        return dict(zip(rows.column("doc_id").to_pylist(), rows.column("text").to_pylist()))

    # -- chunks ------------------------------------------------------------------------------
    def chunked_documents(self) -> tuple[set[str], set[str]]:
        """(complete, partial) documents of the chunks table. Complete: the last chunk (no
        continuation) is stored and so is every position before it. A run killed mid-document
        leaves a prefix, which is partial: the next run re-chunks it and adds what is missing."""
        table = self.table(CHUNKS, CHUNKS_SCHEMA)
        rows = table.search().select(["doc_id", "position", "next_chunk_id"]).limit(None).to_arrow()
        rows = rows.append_column("is_last", pc.is_null(rows.column("next_chunk_id")))
        per_doc = rows.group_by("doc_id").aggregate([
            ("position", "count_distinct"), ("position", "max"), ("is_last", "any")])
        done = pc.and_(per_doc.column("is_last_any"), pc.equal(
            per_doc.column("position_count_distinct"), pc.add(per_doc.column("position_max"), 1)))
        docs = per_doc.column("doc_id")
        return set(docs.filter(done).to_pylist()), set(docs.filter(pc.invert(done)).to_pylist())

    def chunks_by_id(self, chunk_ids: Sequence[int], columns: list[str]) -> list[dict]:
        """Rows of `chunks` by id (an unknown id is simply absent)."""
        if CHUNKS not in self._table_names():
            return []
        return self._rows_where_in(CHUNKS, CHUNKS_SCHEMA, "chunk_id", [int(c) for c in chunk_ids],
                                   columns).to_pylist()

    def add_chunks(self, chunks: Sequence[Chunk]) -> TableWrite:
        return self.add_chunk_table(pa.table({
            "chunk_id": [c.chunk_id for c in chunks], "doc_id": [c.doc_id for c in chunks],
            "position": [c.position for c in chunks],
            "content_hash": [c.content_hash for c in chunks],
            "token_ids": [c.token_ids for c in chunks],
            "n_tokens": [len(c.token_ids) for c in chunks], "text": [c.text for c in chunks],
            "char_start": [c.char_start for c in chunks], "char_end": [c.char_end for c in chunks],
            "next_chunk_id": [c.next_chunk_id for c in chunks],
        }, schema=CHUNKS_SCHEMA))

    def add_chunk_table(self, rows: pa.Table) -> TableWrite:
        """Chunks as `Chunker.chunk_tables` gives them (CHUNKS_SCHEMA), each id once."""
        return self._insert_new(CHUNKS, CHUNKS_SCHEMA, "chunk_id", rows)

    def chunks_of_documents(self, doc_ids: Sequence[str], columns: list[str] | None = None,
                            version: int | None = None) -> pa.Table:
        return self._rows_where_in(CHUNKS, CHUNKS_SCHEMA, "doc_id", doc_ids, columns, version)

    # -- embeddings --------------------------------------------------------------------------
    def missing_embeddings(self, space_id: str, dim: int, content_hashes: pa.Array) -> pa.Array:
        """The distinct hashes that have no vector in this space yet."""
        name = embeddings_table_name(space_id)
        existing = self._column(name, embeddings_schema(dim), "content_hash")
        wanted = pc.unique(content_hashes)
        return wanted.filter(pc.invert(pc.is_in(wanted, value_set=existing)))

    def add_embeddings(self, space_id: str, content_hashes: Sequence[str],
                       vectors: np.ndarray) -> TableWrite:
        """Vectors for hashes the caller found missing (`missing_embeddings`)."""
        dim = vectors.shape[1]
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        rows = pa.table({
            "content_hash": pa.array(list(content_hashes), pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
        }, schema=embeddings_schema(dim))
        return self._insert_new(embeddings_table_name(space_id), embeddings_schema(dim),
                                "content_hash", rows)

    def embeddings_of(self, space_id: str, dim: int, content_hashes: Sequence[str],
                      version: int | None = None) -> pa.Table:
        return self._rows_where_in(embeddings_table_name(space_id), embeddings_schema(dim),
                                   "content_hash", content_hashes, None, version)

    def vectors_of(self, space_id: str, dim: int, content_hashes: pa.Array,
                   version: int | None = None) -> np.ndarray:
        """(len(content_hashes), dim) float32 in the given order; every hash must have a vector."""
        table = self.embeddings_of(space_id, dim, pc.unique(content_hashes).to_pylist(), version)
        index = pc.index_in(content_hashes, value_set=table.column("content_hash"))
        if index.null_count:
            raise KeyError(f"{index.null_count} chunk texts have no embedding in space {space_id}")
        flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return np.ascontiguousarray(flat.reshape(-1, dim)[index.to_numpy()], dtype=np.float32)

    # -- scores ------------------------------------------------------------------------------
    def add_scores(self, scorer: str, content_hashes: Sequence[str], scores: Sequence[float],
                   details: Sequence[str]) -> TableWrite:
        rows = pa.table({
            "score_key": pa.array([score_key(scorer, h) for h in content_hashes], pa.string()),
            "content_hash": pa.array(list(content_hashes), pa.string()),
            "scorer": pa.array([scorer] * len(content_hashes), pa.string()),
            "score": pa.array(list(scores), pa.float64()), "detail": pa.array(list(details), pa.string()),
        }, schema=SCORES_SCHEMA)
        return self._insert_new(SCORES, SCORES_SCHEMA, "score_key", rows)

    def scores_of(self, scorer: str, content_hashes: Sequence[str]) -> dict[str, tuple[float, str]]:
        """{content_hash: (score, detail)} for the hashes this scorer version has scored."""
        if SCORES not in self._table_names():
            return {}
        rows = self._rows_where_in(SCORES, SCORES_SCHEMA, "score_key",
                                   [score_key(scorer, h) for h in content_hashes],
                                   ["content_hash", "score", "detail"])
        return {r["content_hash"]: (r["score"], r["detail"]) for r in rows.to_pylist()}

    # -- retrieval-set members ---------------------------------------------------------------
    def has_members(self, set_digest: str) -> bool:
        table = self.table(MEMBERS, MEMBERS_SCHEMA)
        return table.count_rows((col("set_digest") == lit(set_digest)).to_sql()) > 0

    def add_members(self, set_digest: str, rows: pa.Table) -> TableWrite:
        """Store a set version's members unless they are there already. Check and append happen
        under the table lock, and one `add` is one commit: a version's members are all stored
        once or not at all, even when two builds race or one is killed."""
        with self.lock(MEMBERS):
            table = self.table(MEMBERS, MEMBERS_SCHEMA)
            if rows.num_rows == 0 or self.has_members(set_digest):
                return TableWrite(MEMBERS, 0, table.version)
            table.add(rows.select(MEMBERS_SCHEMA.names).cast(MEMBERS_SCHEMA))
            return TableWrite(MEMBERS, rows.num_rows, table.version)

    def members(self, set_digest: str, columns: list[str] | None = None,
                chunk_ids: Sequence[int] | None = None) -> pa.Table:
        """Members of a retrieval-set version, all or just `chunk_ids` (one batched lookup)."""
        table = self.table(MEMBERS, MEMBERS_SCHEMA)
        where = col("set_digest") == lit(set_digest)
        if chunk_ids is not None:
            if not len(chunk_ids):
                return MEMBERS_SCHEMA.empty_table().select(columns or MEMBERS_SCHEMA.names)
            where = where & col("chunk_id").isin([int(c) for c in chunk_ids])
        query = table.search().where(where.to_sql())
        if columns:
            query = query.select(columns)
        return query.limit(None).to_arrow()

    # -- integrity ---------------------------------------------------------------------------
    def duplicate_keys(self, name: str) -> pa.Table:
        """Keys stored more than once in a table, with their row count (`count`)."""
        keys = table_keys(name)
        if name not in self._table_names():
            return pa.table({**{k: pa.array([], pa.string()) for k in keys},
                             "count": pa.array([], pa.int64())})
        rows = self.db.open_table(name).search().select(keys).limit(None).to_arrow()
        counts = rows.group_by(keys).aggregate([([], "count_all")])
        counts = counts.rename_columns([*keys, "count"])
        return counts.filter(pc.greater(counts.column("count"), 1))

    def repair_duplicates(self, name: str) -> int:
        """Keep one row per key (the first written), delete the rest; returns rows deleted.

        One delete by row id is one commit, so a crash leaves either the duplicates or the
        repaired table, never a key with no row. Rows of one key are identical by construction
        (content-addressed), so which copy survives does not matter."""
        keys = table_keys(name)
        if name not in self._table_names():
            return 0
        with self.lock(name):
            table = self.db.open_table(name)
            rows = table.search().select(keys).with_row_id(True).limit(None).to_arrow()
            first = rows.group_by(keys).aggregate([("_rowid", "min")]).column("_rowid_min")
            extra = pc.invert(pc.is_in(rows.column("_rowid"), value_set=first))
            doomed = rows.column("_rowid").filter(extra).to_pylist()
            if doomed:
                table.delete(col("_rowid").isin(doomed).to_sql())
            self._known.pop(name, None)
            return len(doomed)

    # -- erasure -----------------------------------------------------------------------------
    def tables_with_column(self, column: str) -> list[str]:
        """Every table whose current schema has `column` (what an erasure must visit)."""
        return sorted(n for n in self._table_names() if column in self.db.open_table(n).schema.names)

    def delete_rows(self, name: str, column: str, values: Sequence) -> int:
        """Erase the rows whose `column` is one of `values`, under the table's lock; returns how
        many went. Idempotent: rows already gone delete nothing (a rerun after a kill is safe).

        A LanceDB delete only marks rows deleted, and compaction rewrites a data file only when
        over 10% of it is deleted (not configurable from lancedb): the text would stay in the file.
        So the rows sharing a data file (fragment) with the doomed ones are rewritten in the same
        commit (`merge_insert` update-all on their keys, plus delete-by-source of the doomed
        rows): the old fragment ends fully deleted, and `erase_old_versions` removes its file.
        Fragments are read from `_rowid` (fragment << 32 | offset: tables here have no stable
        row ids)."""
        values = list(values)
        if not values or name not in self._table_names():
            return 0
        deleted = 0
        with self.lock(name):
            table = self.db.open_table(name)
            for start in range(0, len(values), _IN_BATCH):
                where = col(column).isin(values[start:start + _IN_BATCH]).to_sql()
                doomed = (table.search().where(where).select([column]).with_row_id(True)
                          .limit(None).to_arrow().column("_rowid").to_pylist())
                if doomed:
                    self._erase(table, name, where, set(doomed))
                    deleted += len(doomed)
            self._known.pop(name, None)
        return deleted

    def _erase(self, table, name: str, where: str, doomed: set[int]) -> None:
        fragments = {r >> 32 for r in doomed}
        try:
            keys = table_keys(name)
        except KeyError:  # a table this store does not know: plain delete (its files may keep text)
            table.delete(where)
            return
        every = table.search().select([keys[0]]).with_row_id(True).limit(None).to_arrow()
        neighbours = [r for r in every.column("_rowid").to_pylist() if r >> 32 in fragments and r not in doomed]
        if not neighbours:
            table.delete(where)
            return
        rows = pa.concat_tables([table.take_row_ids(neighbours[i:i + 65_536]).to_arrow()
                                 for i in range(0, len(neighbours), 65_536)])
        rows = rows.select([n for n in table.schema.names])
        (table.merge_insert(keys if len(keys) > 1 else keys[0]).when_matched_update_all()
         .when_not_matched_by_source_delete(where).execute(rows))

    def hashes_in_use(self, content_hashes: Sequence[str]) -> set[str]:
        """Which of these content hashes some chunk still has (its text is still stored)."""
        if CHUNKS not in self._table_names():
            return set()
        return set(self._rows_where_in(CHUNKS, CHUNKS_SCHEMA, "content_hash", list(content_hashes),
                                       ["content_hash"]).column("content_hash").to_pylist())

    def tags(self, name: str) -> dict[str, int]:
        """tag -> the version it pins, of table `name` (a tag keeps its version's files)."""
        if name not in self._table_names():
            return {}
        return {tag: int(v["version"] if isinstance(v, dict) else v.version)  # a dict in lancedb 0.40
                for tag, v in self.db.open_table(name).tags.list().items()}

    def erase_old_versions(self, name: str) -> int:
        """Compact `name` and remove every version but the latest, tags included, so deleted rows
        leave no copy in older data files or older indices; returns the versions removed. Readers
        of an older version fail afterwards: the price of erasure.

        `optimize` prunes before it updates the indices, so the version it started from survives
        with the indices built while the rows were there: optimize again until one version is
        left (the second pass finds nothing to compact or index)."""
        if name not in self._table_names():
            return 0
        with self.lock(name):
            table = self.db.open_table(name)
            for tag in list(table.tags.list()):
                table.tags.delete(tag)
            before = _versions(table)
            for _ in range(_ERASE_PASSES):
                with warnings.catch_warnings():  # "removes every version except the latest": intended
                    warnings.simplefilter("ignore", UserWarning)
                    table.optimize(cleanup_older_than=timedelta(0), delete_unverified=True)
                if len(now := _versions(table)) == 1:
                    return len(before - now)
            raise ErasureError(f"LanceDB table {name}: older versions remain after {_ERASE_PASSES} "
                               f"compactions and cleanups ({len(_versions(table))} versions)")


def _versions(table) -> set[int]:
    return {int(v["version"] if isinstance(v, dict) else v.version) for v in table.list_versions()}
