"""The feature store's tables: their names, Arrow schemas and key columns (`store.py` reads and
writes them). Apart from the store so that what only names a table (the Dagster code location's
checks and descriptions, lineage queries) loads without LanceDB (2 s of imports)."""

from __future__ import annotations

import pyarrow as pa

DOCUMENTS = "documents"
CHUNKS = "chunks"
MEMBERS = "retrieval_set_chunks"

DOCUMENTS_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("text", pa.large_string()), ("n_chars", pa.int64()),
    ("metadata", pa.string()),
])
CHUNKS_SCHEMA = pa.schema([
    ("chunk_id", pa.int64()), ("doc_id", pa.string()), ("position", pa.int32()),
    ("content_hash", pa.string()), ("token_ids", pa.list_(pa.int32())), ("n_tokens", pa.int32()),
    ("text", pa.string()), ("char_start", pa.int64()), ("char_end", pa.int64()),
    ("next_chunk_id", pa.int64()),
])

#: The retrieval database of a retrieval-set version (keyed by its digest): each member chunk
#: with its neighbour value, chunk + continuation, as RETRO retrieves it.
MEMBERS_SCHEMA = pa.schema([
    ("set_digest", pa.string()), ("chunk_id", pa.int64()), ("doc_id", pa.string()),
    ("position", pa.int32()), ("content_hash", pa.string()), ("text", pa.string()),
    ("token_ids", pa.list_(pa.int32())), ("continuation_text", pa.string()),
    ("continuation_token_ids", pa.list_(pa.int32())),
])


#: Chunk-text scores, a feature set keyed by (scorer id@version, content hash): identical text in
#: any document is scored once, and rescoring a grown corpus touches only texts not scored yet.
SCORES = "chunk_scores"
SCORES_SCHEMA = pa.schema([
    ("score_key", pa.string()),  # "<scorer key>|<content_hash>": the row's identity
    ("content_hash", pa.string()), ("scorer", pa.string()),  # scorer key: "<id>@<version>"
    ("score", pa.float64()), ("detail", pa.string()),
])


def score_key(scorer: str, content_hash: str) -> str:
    return f"{scorer}|{content_hash}"


def embeddings_schema(dim: int) -> pa.Schema:
    return pa.schema([("content_hash", pa.string()), ("vector", pa.list_(pa.float32(), dim))])


def embeddings_table_name(space_id: str) -> str:
    return f"embeddings_{space_id}"


def table_keys(name: str) -> list[str]:
    """The columns that identify a row of a feature-store table (unique by construction)."""
    if name.startswith("embeddings_"):
        return ["content_hash"]
    keys = {DOCUMENTS: ["doc_id"], CHUNKS: ["chunk_id"], MEMBERS: ["set_digest", "chunk_id"],
            SCORES: ["score_key"]}
    if name not in keys:
        raise KeyError(f"no key columns known for feature-store table {name!r}")
    return keys[name]
