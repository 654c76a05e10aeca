"""Queries over the generation log: by meaning, by request id, by the chunks a generation read.

Search embeds the query text exactly as outputs (and chunks) are embedded and ranks generations
by cosine similarity of their outputs; a generation's own output finds itself first. `show`
returns one generation with, per completed chunk, its neighbours' text and sources as they are
now (a chunk since purged shows as missing, its id and score kept; an excluded one as its id and
the exclusion covering it, see `catalog.visibility`). `retrieving` answers the
lineage question: which generations read any of these chunks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from lancedb.expr import col, lit

from retro_ops.catalog.visibility import ChunkView
from retro_ops.errors import GenerationLogError
from retro_ops.features.store import FeatureStore
from retro_ops.generations.records import GENERATIONS

#: What listings show of a generation (no vectors, no neighbour lists).
SUMMARY_COLUMNS = ["request_id", "created_at", "source", "model", "retrieval_set",
                   "retrieval_set_version", "deployment_id", "text_hashed", "prompt", "output",
                   "prompt_sha256", "output_sha256"]
_IN_BATCH = 1000


def _table(store: FeatureStore):
    if GENERATIONS not in set(store.db.list_tables().tables):
        return None
    return store.db.open_table(GENERATIONS)


def search(store: FeatureStore, embedder, text: str, k: int = 5) -> list[dict]:
    """The k generations whose output is nearest `text` in the embedding space, best first."""
    if not text.strip():
        raise GenerationLogError("empty search text: give some text to look for")
    if k < 1:
        raise GenerationLogError(f"k must be >= 1, got {k}")
    table = _table(store)
    if table is None:
        return []
    vector = embedder.embed([text])[0]
    rows = (table.search(vector, vector_column_name="vector").distance_type("cosine")
            .select(SUMMARY_COLUMNS).limit(k).to_arrow().to_pylist())
    for row in rows:
        row["score"] = round(1.0 - float(row.pop("_distance")), 6)
    return rows


def show(store: FeatureStore, catalog, request_id: str, *, reveal_to: str | None = None) -> dict:
    """One generation, its params and per completed chunk the neighbours it read with their
    current text and sources. An excluded neighbour shows as its id and the exclusion covering
    it (`excluded`; text and sources None) unless `reveal_to` names an auditor: then its text
    too, recorded in the exclusion log before this returns."""
    table = _table(store)
    found = [] if table is None else (
        table.search().where((col("request_id") == lit(request_id)).to_sql())
        .limit(2).to_arrow().drop_columns(["vector"]).to_pylist())
    if not found:
        raise GenerationLogError(f"no generation with request id {request_id!r} in the log")
    view = ChunkView(catalog, purpose=f"generations show {request_id}", reveal_to=reveal_to)
    row = found[0]
    row["params"] = json.loads(row["params"])
    ids = row.pop("neighbour_chunk_ids")
    chunks = {c["chunk_id"]: c for c in store.chunks_by_id(ids, ["chunk_id", "doc_id", "content_hash", "text"])}
    sources: dict[str, list[str]] = {}
    for use in row["neighbours"]:
        use["neighbours"] = []
        for chunk_id, doc_id, score in zip(use.pop("chunk_ids"), use.pop("doc_ids"), use.pop("scores")):
            stored = chunks.get(chunk_id) or {}
            shown = view.chunk(chunk_id, stored.get("content_hash"), doc_id, stored.get("text"))
            if not shown.hidden and doc_id not in sources:
                sources[doc_id] = catalog.document_sources(doc_id)
            use["neighbours"].append({"chunk_id": chunk_id, "doc_id": doc_id, "score": round(score, 6),
                                      "text": shown.text, "excluded": shown.excluded,
                                      "sources": None if shown.hidden else sources[doc_id]})
    view.audit()
    return row


def retrieving(store: FeatureStore, chunk_ids: Sequence[int]) -> list[dict]:
    """Every generation that read any of `chunk_ids` as a neighbour (oldest first), with the
    ones it read among them (`chunk_ids_read`)."""
    table = _table(store)
    wanted = sorted({int(c) for c in chunk_ids})
    if table is None or not wanted:
        return []
    found: dict[str, dict] = {}
    for start in range(0, len(wanted), _IN_BATCH):
        ids = wanted[start:start + _IN_BATCH]
        # lancedb.expr has no list predicate; the values are ints formatted by int(), so no
        # text from outside reaches the filter
        where = f"array_has_any(neighbour_chunk_ids, [{', '.join(str(int(c)) for c in ids)}])"
        rows = (table.search().where(where)
                .select(["request_id", "created_at", "source", "model", "retrieval_set",
                         "retrieval_set_version", "deployment_id", "neighbour_chunk_ids"])
                .limit(None).to_arrow().to_pylist())
        for row in rows:
            read = sorted(set(row.pop("neighbour_chunk_ids")) & set(wanted))
            entry = found.setdefault(row["request_id"], {**row, "chunk_ids_read": []})
            entry["chunk_ids_read"] = sorted(set(entry["chunk_ids_read"]) | set(read))
    return sorted(found.values(), key=lambda r: (r["created_at"], r["request_id"]))


def log_summary(store: FeatureStore) -> dict:
    """Rows and LanceDB version of the log (what the Dagster observation reports)."""
    table = _table(store)
    if table is None:
        return {"rows": 0, "lancedb_version": 0}
    return {"rows": table.count_rows(), "lancedb_version": table.version}
