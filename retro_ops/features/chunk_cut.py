"""Where the chunks of documents fall, as compact arrays: the work a chunking process does.

Imports only `tokenizers` and numpy (no transformers), so a worker process starts in a fraction
of a second. `cut` tokenizes a batch of texts with the Rust tokenizer's batch call and returns,
per document, its token ids, each chunk's character span and each chunk's id; the caller turns
them into `Chunk` objects or Arrow tables. Offsets are read only at chunk boundaries
(`token_to_chars`), so neither Python work nor a Python object is spent per token beyond the ids
list. The tokenizer call is ~96% of the work, so text BERT's normalizer would only lower-case
goes through a lower-case-only copy of it (`SegmentTokenizer`).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from tokenizers import Tokenizer, normalizers

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


def _plain(serialized: str) -> Tokenizer:
    tokenizer = Tokenizer.from_str(serialized)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


_BAD_ASCII = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # controls BERT's cleaning drops
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


@lru_cache(maxsize=4096)
def _unchanged_by_bert(c: str) -> bool:
    """True if BERT's normalizer does nothing to this character but lower-case it, in place:
    no accent to strip (NFD-stable, not a combining mark), not a control or format character it
    drops, not a CJK ideograph it pads with spaces, and one character once lower-cased."""
    if unicodedata.normalize("NFD", c) != c or unicodedata.category(c) in ("Mn", "Cc", "Cf", "Cn", "Co", "Cs"):
        return False
    o = ord(c)
    if 0x3400 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2FA1F or c == "\ufffd":
        return False
    lower = c.lower()
    return len(lower) == 1 and unicodedata.normalize("NFD", lower) == lower


def lowercase_is_enough(text: str) -> bool:
    """Whether lower-casing alone normalises `text` as BERT's normalizer would (same tokens, same
    offsets): true of ASCII text and of most English text (curly quotes, dashes, ligatures)."""
    if _BAD_ASCII.search(text):
        return False
    return text.isascii() or all(_unchanged_by_bert(c) for c in set(_NON_ASCII.findall(text)))


@dataclass(frozen=True)
class SegmentTokenizer:
    """The Rust tokenizer as the transformers wrapper runs it for the chunker (no truncation, no
    padding, no special tokens), plus a fast lane: BERT's normalizer (clean text, CJK padding,
    NFD accent stripping, lower case) costs ~19% of tokenizing with offsets, and for text where
    lower-casing is all it does (`lowercase_is_enough`) a lower-case-only copy of the tokenizer
    gives the very ids and offsets (tested on every shipped corpus and by property test). Its
    settings are fixed at creation, so threads may share it."""

    full: Tokenizer
    lane: Tokenizer | None  # None: the normalizer is not BERT's lower-casing one

    def encode(self, pieces: list[str]) -> list:
        if self.lane is None:
            return self.full.encode_batch(pieces, add_special_tokens=False)
        fast = [lowercase_is_enough(p) for p in pieces]
        by_lane = {True: iter(self.lane.encode_batch([p for p, f in zip(pieces, fast) if f],
                                                     add_special_tokens=False)),
                   False: iter(self.full.encode_batch([p for p, f in zip(pieces, fast) if not f],
                                                      add_special_tokens=False))}
        return [next(by_lane[f]) for f in fast]


def plain_tokenizer(serialized: str) -> SegmentTokenizer:
    full, normalizer = _plain(serialized), json.loads(serialized).get("normalizer") or {}
    lane = None
    if (normalizer.get("type") == "BertNormalizer" and normalizer.get("lowercase")
            and normalizer.get("strip_accents") in (None, True)):
        lane = _plain(serialized)
        lane.normalizer = normalizers.Lowercase()
    return SegmentTokenizer(full, lane)


def cut(tokenizer: SegmentTokenizer, documents: Sequence[tuple[str, str]], m: int, segment_chars: int,
        batch_segments: int) -> list[DocCut]:
    """The chunks of each (doc_id, text): m tokens each, the last one possibly shorter."""
    segmented = [split_segments(text, segment_chars) for _, text in documents]
    flat = [piece for segments in segmented for _, piece in segments]
    encodings = []
    for start in range(0, len(flat), batch_segments):
        encodings.extend(tokenizer.encode(flat[start:start + batch_segments]))
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


_worker: tuple[SegmentTokenizer, int, int, int] | None = None  # one per worker process (its initializer)


def start_worker(serialized: str, m: int, segment_chars: int, batch_segments: int) -> None:
    """Pool initializer: this process's tokenizer, on one core (the processes are the parallelism)."""
    global _worker
    os.environ["RAYON_NUM_THREADS"] = "1"  # read when the Rust pool first starts, i.e. later
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker = (plain_tokenizer(serialized), m, segment_chars, batch_segments)


def cut_in_worker(documents: list[tuple[str, str]]) -> list[DocCut]:
    assert _worker is not None, "initializer did not run"
    return cut(_worker[0], documents, *_worker[1:])
