"""Exact bytes behind every token of some chunks, from the tokenizer's character offsets.

A scored target covers the text from the end of the token before it to its own end, so the
whitespace between chunks (and between tokens) is counted once, with the token it precedes, and
a token that is never a target (the first of a sequence) contributes nothing. Summing a chunk's
`n_bytes` from its text span instead misses the inter-chunk whitespace and counts the unscored
first token (issue #14). The documents are re-tokenized with the chunker's own path, and the ids
must equal the stored chunks' ids: offsets of other tokens would be a silent miscount.
"""

from __future__ import annotations

import numpy as np

from retro_ops.errors import RetroOpsError
from retro_ops.features.chunking import Chunker
from retro_ops.features.store import FeatureStore
from retro_ops.training.data import ChunkTable


class TokenizationMismatchError(RetroOpsError, ValueError):
    """The chunks' stored tokens are not what the tokenizer gives for their document today."""


def gap_bytes(text: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """UTF-8 bytes from the end of token i-1 (the text's start for i = 0) to the end of token i."""
    ends = np.array([0] + [end for _, end in offsets], dtype=np.int64)
    prefix = np.zeros(len(text) + 1, dtype=np.int64)  # byte offset of every character boundary
    if text:
        prefix[1:] = np.cumsum([len(c.encode("utf-8")) for c in text])
    return np.diff(prefix[ends])


def token_bytes(store: FeatureStore, chunker: Chunker, table: ChunkTable) -> np.ndarray:
    """(N, m) int64: bytes each token of each chunk of `table` stands for (0 on padding)."""
    n, m = table.tokens.shape
    out = np.zeros((n, m), dtype=np.int64)
    doc_ids = list(dict.fromkeys(table.doc_ids.tolist()))
    texts = store.document_texts(doc_ids)
    missing = [d for d in doc_ids if d not in texts]
    if missing:
        raise TokenizationMismatchError(f"document {missing[0]} has chunks but no stored text")
    encoded = chunker.tokenize([texts[d] for d in doc_ids])
    per_doc = {d: (np.asarray(ids, dtype=np.int64), gap_bytes(texts[d], offsets))
               for d, (ids, offsets) in zip(doc_ids, encoded)}
    for row in range(n):
        ids, sizes = per_doc[table.doc_ids[row]]
        length, lo = int(table.n_tokens[row]), int(table.positions[row]) * m
        if not np.array_equal(ids[lo:lo + length], table.tokens[row, :length]):
            raise TokenizationMismatchError(
                f"chunk {table.chunk_ids[row]} of document {table.doc_ids[row]} does not match "
                "its document's tokens: re-chunk it with this tokenizer")
        out[row, :length] = sizes[lo:lo + length]
    return out
