"""Chunk-text scores: a feature set in LanceDB keyed by (content hash, scorer id and version).

Scores depend only on a chunk's text and the scorer, so identical text in any document is scored
once, and rescoring a grown corpus touches only texts not scored by that scorer version yet.
Insert-only under the table's writer lock, like every feature table (`FeatureStore._insert_new`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
from lancedb.expr import col, lit

from retro_ops.features.store import CHUNKS, CHUNKS_SCHEMA, FeatureStore, TableWrite

SCORES = "chunk_scores"
SCORES_SCHEMA = pa.schema([
    ("score_key", pa.string()),  # "<scorer key>|<content_hash>": the row's identity
    ("content_hash", pa.string()), ("scorer", pa.string()),  # scorer key: "<id>@<version>"
    ("score", pa.float64()), ("detail", pa.string()),
])


def score_key(scorer: str, content_hash: str) -> str:
    return f"{scorer}|{content_hash}"


def add_scores(store: FeatureStore, scorer: str, content_hashes: Sequence[str],
               scores: Sequence[float], details: Sequence[str]) -> TableWrite:
    rows = pa.table({
        "score_key": pa.array([score_key(scorer, h) for h in content_hashes], pa.string()),
        "content_hash": pa.array(list(content_hashes), pa.string()),
        "scorer": pa.array([scorer] * len(content_hashes), pa.string()),
        "score": pa.array(list(scores), pa.float64()), "detail": pa.array(list(details), pa.string()),
    }, schema=SCORES_SCHEMA)
    return store._insert_new(SCORES, SCORES_SCHEMA, "score_key", rows)


def scores_of(store: FeatureStore, scorer: str, content_hashes: Sequence[str]) -> dict[str, tuple[float, str]]:
    """{content_hash: (score, detail)} for the hashes this scorer version has scored."""
    if SCORES not in store._table_names():
        return {}
    keys = [score_key(scorer, h) for h in content_hashes]
    rows = store._rows_where_in(SCORES, SCORES_SCHEMA, "score_key", keys,
                                ["content_hash", "score", "detail"])
    return {r["content_hash"]: (r["score"], r["detail"]) for r in rows.to_pylist()}


def chunk_rows(store: FeatureStore, chunk_ids: Sequence[int], columns: list[str]) -> list[dict]:
    """Rows of `chunks` by id (an unknown id is simply absent)."""
    if CHUNKS not in store._table_names():
        return []
    return store._rows_where_in(CHUNKS, CHUNKS_SCHEMA, "chunk_id", [int(c) for c in chunk_ids],
                                columns).to_pylist()


def chunks_with_hash(store: FeatureStore, content_hash: str, columns: list[str]) -> list[dict]:
    if CHUNKS not in store._table_names():
        return []
    table = store.table(CHUNKS, CHUNKS_SCHEMA)
    return (table.search().where((col("content_hash") == lit(content_hash)).to_sql())
            .select(columns).limit(None).to_arrow().to_pylist())
