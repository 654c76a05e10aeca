"""The paper's overlap alpha of every evaluated chunk, and bpb bucketed by it.

alpha(chunk u+1) = the longest token span it shares with the neighbours it can use, chunk u's
(chunk + continuation), over its length. RETRO's CCA lets chunk u+1's tokens read only chunk
u's neighbours, so that is where copying can come from; comparing chunk u with its own
neighbours (as the old 8-gram column did) measures the wrong pair. The first chunk of a
sequence reads no neighbours: alpha 0. Buckets follow the paper's leakage analysis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retro_ops.training.data import ChunkTable, Sequences
from retro_ops.training.neighbours import Neighbours

#: (label, upper bound of alpha): "all" takes every chunk
BUCKETS: tuple[tuple[str, float], ...] = (("alpha<=12.5%", 0.125), ("alpha<=50%", 0.5), ("all", 1.0))
LEAKY = 0.5  # a chunk with alpha above this is mostly copied from its neighbours


def longest_shared_span(chunks: np.ndarray, values: np.ndarray) -> np.ndarray:
    """chunks (N, m) and values (N, k, r) token ids, with distinct negative fillers where absent
    -> (N,) longest run of consecutive tokens of each chunk found verbatim in one of its values."""
    n, m = chunks.shape
    _, k, r = values.shape
    best = np.zeros(n, dtype=np.int64)
    run = np.zeros((n, k, r + 1), dtype=np.int64)  # run[.., j+1]: run ending at value token j
    for i in range(m):
        equal = chunks[:, i, None, None] == values  # (N, k, r)
        run = np.concatenate([np.zeros((n, k, 1), np.int64), (run[:, :, :-1] + 1) * equal], axis=2)
        best = np.maximum(best, run.max(axis=(1, 2)))
    return best


def overlap_alpha(table: ChunkTable, sequences: Sequences, neighbours: Neighbours,
                  batch: int = 512) -> np.ndarray:
    """(N,) alpha of every chunk of `table` under `neighbours` (source-tokenizer ids)."""
    alpha = np.zeros(len(table))
    index = sequences.chunk_index
    s, u = np.nonzero(index[:, 1:] >= 0)
    rows, previous = index[s, u + 1], index[s, u]
    m = table.tokens.shape[1]
    valid = np.arange(m)[None, :] < table.n_tokens[:, None]
    chunks = np.where(valid, table.tokens, -1)
    values = np.where(neighbours.mask[..., None] & (neighbours.tokens != 0), neighbours.tokens, -2)
    for lo in range(0, len(rows), batch):
        r, p = rows[lo:lo + batch], previous[lo:lo + batch]
        alpha[r] = longest_shared_span(chunks[r], values[p]) / np.maximum(table.n_tokens[r], 1)
    return alpha


@dataclass(frozen=True)
class Buckets:
    """Which chunks fall in each alpha bucket (only chunks that were scored)."""

    rows: dict[str, np.ndarray]
    leaky_share: float  # share of scored chunks with alpha > LEAKY

    @classmethod
    def of(cls, alpha: np.ndarray, scored: np.ndarray) -> "Buckets":
        rows = {label: np.flatnonzero(scored & (alpha <= bound)) for label, bound in BUCKETS}
        n = int(scored.sum())
        return cls(rows, float((scored & (alpha > LEAKY)).sum() / n) if n else 0.0)
