"""Where the chunks of documents fall, as compact arrays: the work a chunking process does.

Imports only `tokenizers` and numpy (no transformers), so a worker process starts in a fraction
of a second. `cut` tokenizes a batch of texts with the Rust tokenizer's batch call and returns,
per document, its token ids, each chunk's character span and each chunk's id; the caller turns
them into `Chunk` objects. Offsets are read only at chunk boundaries (`token_to_chars`), so
neither Python work nor a Python object is spent per token beyond the ids list.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from retro_ops.ids import chunk_id


@dataclass(frozen=True)
class DocCut:
    """One document's chunks: token ids (n_tokens,), char spans (n_chunks, 2), ids (n_chunks,)."""

    token_ids: np.ndarray
    spans: np.ndarray
    chunk_ids: np.ndarray


def split_segments(text: str, max_chars: int) -> list[tuple[int, str]]:
    """(offset, piece) pairs covering `text`, cut after whitespace so tokens never straddle a cut."""
    segments, start = [], 0
    while len(text) - start > max_chars:
        cut_at = max(text.rfind(space, start, start + max_chars) for space in " \n\t")
        end = cut_at + 1 if cut_at > start else start + max_chars  # no whitespace: hard cut
        segments.append((start, text[start:end]))
        start = end
    segments.append((start, text[start:]))
    return segments


def plain_tokenizer(serialized: str) -> Tokenizer:
    """The Rust tokenizer as the transformers wrapper runs it for the chunker: no truncation,
    no padding (the wrapper resets both on every call; the chunker adds no special tokens)."""
    tokenizer = Tokenizer.from_str(serialized)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def cut(tokenizer: Tokenizer, documents: Sequence[tuple[str, str]], m: int, segment_chars: int,
        batch_segments: int) -> list[DocCut]:
    """The chunks of each (doc_id, text): m tokens each, the last one possibly shorter."""
    segmented = [split_segments(text, segment_chars) for _, text in documents]
    flat = [piece for segments in segmented for _, piece in segments]
    encodings = []
    for start in range(0, len(flat), batch_segments):
        encodings.extend(tokenizer.encode_batch(flat[start:start + batch_segments],
                                                add_special_tokens=False))
    cuts, k = [], 0
    for (doc_id, _), segments in zip(documents, segmented):
        cuts.append(_cut_document(doc_id, segments, encodings[k:k + len(segments)], m))
        k += len(segments)
    return cuts


def _cut_document(doc_id: str, segments: list[tuple[int, str]], parts: list, m: int) -> DocCut:
    ids = [part.ids for part in parts]
    first_token = np.cumsum([0] + [len(i) for i in ids]).tolist()  # of each segment, then the total
    total = first_token[-1]
    n_chunks = (total + m - 1) // m
    spans = np.empty((n_chunks, 2), dtype=np.int64)

    def char_at(token: int, side: int) -> int:  # side 0: the token's start, 1: its end
        s = bisect_right(first_token, token) - 1
        return segments[s][0] + parts[s].token_to_chars(token - first_token[s])[side]

    for position in range(n_chunks):
        lo, hi = position * m, min(total, (position + 1) * m)
        spans[position] = (char_at(lo, 0), char_at(hi - 1, 1))
    token_ids = np.concatenate([np.asarray(i, dtype=np.int64) for i in ids])
    chunk_ids = np.fromiter((chunk_id(doc_id, p) for p in range(n_chunks)), dtype=np.int64,
                            count=n_chunks)
    return DocCut(token_ids, spans, chunk_ids)


_worker: tuple[Tokenizer, int, int, int] | None = None  # one per worker process (its initializer)


def start_worker(serialized: str, m: int, segment_chars: int, batch_segments: int) -> None:
    """Pool initializer: this process's tokenizer, on one core (the processes are the parallelism)."""
    global _worker
    os.environ["RAYON_NUM_THREADS"] = "1"  # read when the Rust pool first starts, i.e. later
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker = (plain_tokenizer(serialized), m, segment_chars, batch_segments)


def cut_in_worker(documents: list[tuple[str, str]]) -> list[DocCut]:
    assert _worker is not None, "initializer did not run"
    return cut(_worker[0], documents, *_worker[1:])
