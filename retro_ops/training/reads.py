"""What a model read, chunk by chunk: its training chunks and the neighbours it was shown.

At scale these are millions of ids per model, too many for catalog rows: they go to one LanceDB
table (`model_reads`: model_id, role, chunk_id, doc_id), written once per model under the table's
writer lock, and the catalog keeps the table, the LanceDB version the write made and a digest
of the ids, so an audit can prove the rows it reads are the ones recorded.

Each read carries its chunk's document, looked up once at training time: an audit naming the
documents behind 100k read chunks then needs no join with the whole chunk -> document map
(measured: that join was the largest part of a backward audit). Rows written before doc ids were
recorded have a NULL doc_id; audits fall back to the chunks table for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.expr import col, lit

from retro_ops.features.store import FeatureStore
from retro_ops.features.schemas import CHUNKS
from retro_ops.ids import sha256_hex

MODEL_READS = "model_reads"
MODEL_READS_SCHEMA = pa.schema([("model_id", pa.int64()), ("role", pa.string()),
                                ("chunk_id", pa.int64()), ("doc_id", pa.string())])
ROLES = ("train", "neighbour")


@dataclass(frozen=True)
class ReadsRecord:
    table: str
    lance_version: int
    digest: str
    n_training_chunks: int
    n_neighbour_chunks: int


def reads_digest(training_chunk_ids: np.ndarray, neighbour_chunk_ids: np.ndarray) -> str:
    """sha256 over both sorted, de-duplicated id lists (int64 bytes), roles kept apart."""
    parts = [np.unique(np.asarray(ids, dtype=np.int64)).tobytes()
             for ids in (training_chunk_ids, neighbour_chunk_ids)]
    return sha256_hex(parts[0] + b"|" + parts[1])


def neighbour_chunk_ids(ids: np.ndarray, chunk_ids: np.ndarray, copied: np.ndarray | None = None,
                        mask: np.ndarray | None = None) -> np.ndarray:
    """The retrieved chunks among (N, k) neighbour ids: not padding (-1) or withheld (`mask`
    False), not the chunk itself, not a self-neighbour slot (`copied`; a distractor may have moved
    one to another chunk): a self-neighbour is training text, recorded as such, not retrieval."""
    real = (ids >= 0) & (ids != chunk_ids[:, None])
    if copied is not None:
        real &= ~copied
    if mask is not None:
        real &= mask
    return np.unique(ids[real])


def chunk_doc_ids(store: FeatureStore, chunk_ids: np.ndarray) -> pa.Array:
    """The document of each chunk id, from the chunks table (null for an id it lacks). One scan
    of two narrow columns: a filter of 100k ids would cost more than reading the map."""
    ids = pa.array(np.asarray(chunk_ids, dtype=np.int64), pa.int64())
    if CHUNKS not in set(store.db.list_tables().tables):
        return pa.nulls(len(ids), pa.string())
    found = (store.db.open_table(CHUNKS).search().select(["chunk_id", "doc_id"]).limit(None)
             .to_batches(65_536).read_all())
    where = pc.index_in(ids, value_set=found.column("chunk_id").combine_chunks())
    return found.column("doc_id").combine_chunks().take(where)


def record_model_reads(store: FeatureStore, model_id: int, training_chunk_ids: np.ndarray,
                       neighbour_ids: np.ndarray) -> ReadsRecord:
    """Write (replacing any earlier rows of this model id) and return the pointer to record."""
    train = np.unique(np.asarray(training_chunk_ids, dtype=np.int64))
    neighbours = np.unique(np.asarray(neighbour_ids, dtype=np.int64))
    both = np.concatenate([train, neighbours])
    rows = pa.table({
        "model_id": pa.array(np.full(len(train) + len(neighbours), model_id, dtype=np.int64)),
        "role": pa.array(["train"] * len(train) + ["neighbour"] * len(neighbours), pa.string()),
        "chunk_id": pa.array(both, pa.int64()),
        "doc_id": chunk_doc_ids(store, both),
    }, schema=MODEL_READS_SCHEMA)
    with store.lock(MODEL_READS):
        if MODEL_READS in set(store.db.list_tables().tables):
            table = store.db.open_table(MODEL_READS)
            if "doc_id" not in table.schema.names:  # written before doc ids were recorded
                table.add_columns(pa.field("doc_id", pa.string()))
        else:
            table = store.table(MODEL_READS, MODEL_READS_SCHEMA)
        table.delete((col("model_id") == lit(int(model_id))).to_sql())
        table.add(rows)
        version = table.version
    return ReadsRecord(MODEL_READS, version, reads_digest(train, neighbours), len(train), len(neighbours))


def read_model_reads(store: FeatureStore, model_id: int, lance_version: int,
                     table_name: str = MODEL_READS) -> dict[str, np.ndarray]:
    """{role: sorted chunk ids} of one model, read at the recorded LanceDB version."""
    table = store.db.open_table(table_name)
    table.checkout(lance_version)
    found = (table.search().where((col("model_id") == lit(int(model_id))).to_sql())
             .select(["role", "chunk_id"]).limit(None).to_arrow())
    roles = np.asarray(found.column("role").to_pylist(), dtype=object)
    ids = found.column("chunk_id").to_numpy()
    return {role: np.sort(ids[roles == role]) for role in ROLES}
