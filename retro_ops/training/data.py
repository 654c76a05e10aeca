"""Training and evaluation data for RETRO: documents -> chunk-aligned token sequences.

A sequence is n = chunks_per_seq * m tokens made of consecutive chunks of ONE document, so
sequence chunk u is exactly a database chunk (whose precomputed neighbours it uses). A short
final chunk is padded to m ([PAD], target -100) so chunk boundaries stay aligned. The train /
held-out split is by document, deterministic from a seed, so evaluation text is never trained on.
Excluded chunks (by chunk id, content hash or document) are dropped from training text
(`without_excluded`); a sequence never bridges the gap one leaves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Literal

import numpy as np
import pyarrow.compute as pc

from retro_ops.catalog.exclusions import ActiveExclusions
from retro_ops.features.store import FeatureStore
from retro_ops.ids import set_digest, sha256_hex
from retro_ops.training.config import GroupBy, SplitConfig

IGNORE = -100


Part = Literal["heldout", "validation", "test"]


def group_key(doc_id: str, sources: list[str], group_by: GroupBy) -> str:
    """The group of a document: itself, or the stem of its first source file (`40_Matthew_05`
    of `asv_nt/40_Matthew_05.txt`; a line of a JSONL file is its own document)."""
    if group_by == "document" or not sources:
        return doc_id
    source = sources[0]
    if "#" in source:  # `file.jsonl#L3`: many documents share the file
        return doc_id
    return PurePosixPath(source.replace("\\", "/")).stem


@dataclass(frozen=True)
class DocumentSplit:
    """Doc ids of each part, sorted; `heldout` is validation and test together."""

    train: list[str]
    validation: list[str]
    test: list[str]

    @property
    def heldout(self) -> list[str]:
        return sorted(self.validation + self.test)

    def part(self, name: Part) -> list[str]:
        return {"heldout": self.heldout, "validation": self.validation, "test": self.test}[name]


def split_documents(doc_ids: list[str], config: SplitConfig = SplitConfig(),
                    groups: dict[str, str] | None = None) -> DocumentSplit:
    """Groups (default: one per document) ordered by a seeded hash of their first document, the
    last fraction held out; the held-out groups ordered by a second hash, the first
    validation_share to validation."""
    if len(doc_ids) < 2:
        raise ValueError(f"need at least 2 documents to hold one out, got {len(doc_ids)}")
    groups = groups or {}
    members: dict[str, list[str]] = {}
    for d in doc_ids:
        members.setdefault(groups.get(d, d), []).append(d)
    if len(members) < 2:
        raise ValueError(f"need at least 2 document groups to hold one out, got {len(members)}")
    # a group is ranked by its first document, so a group of one ranks as that document would
    # ungrouped: grouping changes a split only where documents share a group
    first = {g: min(ds) for g, ds in members.items()}
    ranked = sorted(members, key=lambda g: sha256_hex(f"{config.seed}:{first[g]}"))
    n_held = min(len(ranked) - 1, max(config.min_heldout, round(config.heldout_fraction * len(ranked))))
    held = sorted(ranked[-n_held:], key=lambda g: sha256_hex(f"{config.seed}:validation:{first[g]}"))
    n_val = min(n_held - 1, round(config.validation_share * n_held)) if config.validation_share else 0

    def docs(keys) -> list[str]:
        return sorted(d for g in keys for d in members[g])

    return DocumentSplit(docs(ranked[:-n_held]), docs(held[:n_val]), docs(held[n_val:]))


@dataclass(frozen=True)
class ChunkTable:
    """All chunks of some documents in (document, position) order, tokens padded to m."""

    chunk_ids: np.ndarray  # (N,) int64
    doc_ids: np.ndarray  # (N,) object (str)
    positions: np.ndarray  # (N,) int32
    tokens: np.ndarray  # (N, m) int64, pad_id after n_tokens
    n_tokens: np.ndarray  # (N,) int32
    n_bytes: np.ndarray  # (N,) int64: UTF-8 bytes of the chunk's text span
    content_hashes: np.ndarray  # (N,) object (str)
    dropped: str = ""  # digest of the chunk ids dropped as excluded ("" = none): keys models

    def __len__(self) -> int:
        return len(self.chunk_ids)


def load_chunk_table(store: FeatureStore, doc_ids: list[str], m: int, pad_id: int = 0) -> ChunkTable:
    rows = store.chunks_of_documents(
        doc_ids, ["chunk_id", "doc_id", "position", "token_ids", "n_tokens", "text", "content_hash"])
    rows = rows.sort_by([("doc_id", "ascending"), ("position", "ascending")])
    tokens = np.full((rows.num_rows, m), pad_id, dtype=np.int64)
    for i, ids in enumerate(rows.column("token_ids").to_pylist()):
        tokens[i, :len(ids)] = ids
    return ChunkTable(
        chunk_ids=rows.column("chunk_id").to_numpy(),
        doc_ids=np.asarray(rows.column("doc_id").to_pylist(), dtype=object),
        positions=rows.column("position").to_numpy(),
        tokens=tokens,
        n_tokens=rows.column("n_tokens").to_numpy(),
        n_bytes=pc.binary_length(pc.cast(rows.column("text"), "binary")).to_numpy().astype(np.int64),
        content_hashes=np.asarray(rows.column("content_hash").to_pylist(), dtype=object),
    )


def without_excluded(table: ChunkTable, excluded: ActiveExclusions) -> ChunkTable:
    """The table minus every chunk an exclusion names, so no model is trained on that text;
    `dropped` records which, so a checkpoint trained before the exclusion is never reused."""
    drop = np.array([excluded.drops(int(c), h, d) for c, h, d in
                     zip(table.chunk_ids, table.content_hashes, table.doc_ids)], dtype=bool)
    if not drop.any():
        return table
    keep = ~drop
    return replace(table, chunk_ids=table.chunk_ids[keep], doc_ids=table.doc_ids[keep],
                   positions=table.positions[keep], tokens=table.tokens[keep],
                   n_tokens=table.n_tokens[keep], n_bytes=table.n_bytes[keep],
                   content_hashes=table.content_hashes[keep],
                   dropped=set_digest(str(c) for c in table.chunk_ids[drop]))


@dataclass(frozen=True)
class Sequences:
    """Model inputs: `chunk_index[s, u]` is the ChunkTable row of sequence s's chunk u (-1: pad)."""

    input_ids: np.ndarray  # (S, n) int64
    targets: np.ndarray  # (S, n) int64, IGNORE where nothing is predicted
    chunk_index: np.ndarray  # (S, n // m) int64
    n_bytes: np.ndarray  # (S,) int64: bytes of text the sequence's targets cover

    def __len__(self) -> int:
        return len(self.input_ids)


def make_sequences(table: ChunkTable, chunks_per_seq: int, pad_id: int = 0) -> Sequences:
    """Cut each run of consecutive chunks of a document (a whole document, unless an excluded
    chunk left a gap) into sequences of `chunks_per_seq` chunks (tail padded)."""
    m = table.tokens.shape[1]
    breaks = (table.doc_ids[1:] != table.doc_ids[:-1]) | (table.positions[1:] != table.positions[:-1] + 1)
    starts = np.flatnonzero(np.r_[True, breaks]) if len(table) else []
    groups = []
    for begin, end in zip(starts, list(starts[1:]) + [len(table)]):
        for s in range(begin, end, chunks_per_seq):
            groups.append(np.arange(s, min(s + chunks_per_seq, end)))
    n = chunks_per_seq * m
    input_ids = np.full((len(groups), n), pad_id, dtype=np.int64)
    valid = np.zeros((len(groups), n), dtype=bool)
    chunk_index = np.full((len(groups), chunks_per_seq), -1, dtype=np.int64)
    n_bytes = np.zeros(len(groups), dtype=np.int64)
    for s, rows in enumerate(groups):
        chunk_index[s, :len(rows)] = rows
        input_ids[s, :len(rows) * m] = table.tokens[rows].reshape(-1)
        valid[s, :len(rows) * m] = (np.arange(m)[None, :] < table.n_tokens[rows][:, None]).reshape(-1)
        n_bytes[s] = table.n_bytes[rows].sum()
    targets = np.full_like(input_ids, IGNORE)
    # predict token t+1 from position t, only where both are real tokens
    targets[:, :-1] = np.where(valid[:, 1:] & valid[:, :-1], input_ids[:, 1:], IGNORE)
    _check_padding_at_end(valid)
    return Sequences(input_ids, targets, chunk_index, n_bytes)


def _check_padding_at_end(valid: np.ndarray) -> None:
    """Only a document's last chunk may be short, so padding may only end a sequence; a gap
    would make a target skip text. Checked, not assumed."""
    lengths = valid.sum(axis=1)
    if not (valid == (np.arange(valid.shape[1])[None, :] < lengths[:, None])).all():
        raise ValueError("a sequence has padding before its last real token")
