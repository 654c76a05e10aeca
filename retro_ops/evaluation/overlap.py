"""The paper's overlap alpha of every evaluated chunk, and bpb bucketed by it.

alpha(chunk u+1) = the longest token span it shares with the neighbours it can use, chunk u's
(chunk + continuation), over its length. RETRO's CCA lets chunk u+1's tokens read only chunk
u's neighbours, so that is where copying can come from; comparing chunk u with its own
neighbours (as the old 8-gram column did) measures the wrong pair. The first chunk of a
sequence reads no neighbours: alpha 0 by construction, so it is reported apart ("first chunks"),
never mixed into a low-alpha bucket (issue #24: 106 of 377 held-out chunks were, and made that
bucket look like the place where retrieval does nothing). Buckets follow the paper's leakage
analysis, over the chunks that read neighbours, and deciles of alpha give its curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retro_ops.training.data import ChunkTable, Sequences
from retro_ops.training.neighbours import Neighbours

#: alpha > this: a chunk mostly copied from its neighbours (the paper's leakage threshold)
LEAKY = 0.5
FIRST, READS = "first chunks", "reads"
#: buckets of reading chunks by alpha: (label, lower bound exclusive or None, upper bound inclusive)
READ_BUCKETS: tuple[tuple[str, float | None, float], ...] = (
    ("reads, alpha<=12.5%", None, 0.125), ("reads, alpha 12.5-50%", 0.125, 0.5), ("reads, alpha>50%", 0.5, 1.0))
DECILES = 10


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


def reads_neighbours(sequences: Sequences, neighbours: Neighbours, n_chunks: int) -> np.ndarray:
    """(N,) True where a chunk reads neighbours: it is not first in its sequence and the chunk
    before it has at least one."""
    reads = np.zeros(n_chunks, dtype=bool)
    index = sequences.chunk_index
    s, u = np.nonzero(index[:, 1:] >= 0)
    reads[index[s, u + 1]] = neighbours.mask[index[s, u]].any(axis=1)
    return reads


@dataclass(frozen=True)
class Buckets:
    """Which scored chunks fall in each bucket: all, first chunks, reads, reads by alpha, and
    the alpha deciles of the reading chunks (`decile_rows`)."""

    rows: dict[str, np.ndarray]
    leaky_share: float  # share of scored chunks with alpha > LEAKY
    decile_rows: tuple[np.ndarray, ...] = ()

    @classmethod
    def of(cls, alpha: np.ndarray, scored: np.ndarray, reads: np.ndarray | None = None) -> "Buckets":
        reads = alpha > 0 if reads is None else reads
        rows = {"all": np.flatnonzero(scored), FIRST: np.flatnonzero(scored & ~reads),
                READS: np.flatnonzero(scored & reads)}
        for label, low, high in READ_BUCKETS:
            rows[label] = np.flatnonzero(scored & reads & (alpha <= high) & (alpha > (-1 if low is None else low)))
        decile = np.minimum((alpha * DECILES).astype(np.int64), DECILES - 1)  # alpha 1.0 -> last
        deciles = tuple(np.flatnonzero(scored & reads & (decile == d)) for d in range(DECILES))
        n = int(scored.sum())
        return cls(rows, float((scored & (alpha > LEAKY)).sum() / n) if n else 0.0, deciles)

    @staticmethod
    def decile_labels() -> list[str]:
        return [f"{d * 10}-{(d + 1) * 10}%" for d in range(DECILES)]
