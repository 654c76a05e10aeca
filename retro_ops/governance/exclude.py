"""Exclusions a person asks for, checked against what they name before they are recorded.

The catalog records any well-formed exclusion (a policy's or dedup's targets come from the store,
so they exist). A person's input may name a chunk that never existed or an empty text, and the
exclusion recorded would match nothing while looking like a takedown done. These checks live
here, not in the CLI, so a library caller gets them too; the catalog cannot make them itself
(chunks live in the feature store, above it).
"""

from __future__ import annotations

from retro_ops.catalog import Catalog
from retro_ops.catalog.exclusions import NewExclusion
from retro_ops.errors import ExclusionError
from retro_ops.features.store import FeatureStore
from retro_ops.ids import content_hash


def exclude_chunk(catalog: Catalog, store: FeatureStore, chunk_id: int, *, reason: str,
                  actor: str) -> int:
    """Exclude one chunk of the feature store; returns the exclusion's id."""
    if not store.chunks_by_id([chunk_id], ["chunk_id"]):
        raise ExclusionError(f"no chunk {chunk_id} in the feature store")
    [exclusion_id] = catalog.record_exclusions([NewExclusion("chunk", str(chunk_id), reason)], actor=actor)
    return exclusion_id


def exclude_text(catalog: Catalog, text: str, *, reason: str, actor: str) -> tuple[str, int]:
    """Exclude a chunk text by its content hash, everywhere, now and later; returns (hash, id)."""
    if not text.strip():
        raise ExclusionError("empty text: give the exact text of the chunk to exclude")
    digest = content_hash(text)
    [exclusion_id] = catalog.record_exclusions([NewExclusion("content_hash", digest, reason)], actor=actor)
    return digest, exclusion_id
