"""What a model read, chunk by chunk: its training chunks and the neighbours it was shown.

At scale these are millions of ids per model, too many for catalog rows: they go to one LanceDB
table (`model_reads`: model_id, role, chunk_id), written once per model under the table's
writer lock, and the catalog keeps the table, the LanceDB version the write made and a digest
of the ids, so an audit can prove the rows it reads are the ones recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from lancedb.expr import col, lit

from retro_ops.features.store import FeatureStore
from retro_ops.ids import sha256_hex

MODEL_READS = "model_reads"
MODEL_READS_SCHEMA = pa.schema([("model_id", pa.int64()), ("role", pa.string()),
                                ("chunk_id", pa.int64())])
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


def neighbour_chunk_ids(ids: np.ndarray, chunk_ids: np.ndarray) -> np.ndarray:
    """The retrieved chunks among (N, k) neighbour ids: not padding (-1), not the chunk itself
    (a self-neighbour slot carries the chunk's own id: that is training text, not retrieval)."""
    real = (ids >= 0) & (ids != chunk_ids[:, None])
    return np.unique(ids[real])


def record_model_reads(store: FeatureStore, model_id: int, training_chunk_ids: np.ndarray,
                       neighbour_ids: np.ndarray) -> ReadsRecord:
    """Write (replacing any earlier rows of this model id) and return the pointer to record."""
    train = np.unique(np.asarray(training_chunk_ids, dtype=np.int64))
    neighbours = np.unique(np.asarray(neighbour_ids, dtype=np.int64))
    rows = pa.table({
        "model_id": pa.array(np.full(len(train) + len(neighbours), model_id, dtype=np.int64)),
        "role": pa.array(["train"] * len(train) + ["neighbour"] * len(neighbours), pa.string()),
        "chunk_id": pa.array(np.concatenate([train, neighbours]), pa.int64()),
    }, schema=MODEL_READS_SCHEMA)
    with store.lock(MODEL_READS):
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
