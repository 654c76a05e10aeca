"""Cut documents into RETRO chunks: m consecutive WordPiece tokens of the frozen BERT's tokenizer.

Every chunk knows its document, its position and its continuation (the next chunk of the same
document), because a RETRO neighbour is chunk + continuation. Tokenization uses the tokenizer's
batch (Rust) path; long documents are cut into whitespace-aligned segments first, which is
lossless for WordPiece (it splits on whitespace anyway) and bounds memory for any length.

`workers > 1` shards batches of documents across processes (each tokenizer on one core: the
Rust path alone kept 1.5 of 2 cores busy, and the Python chunk building one), with a bounded
number of batches in flight, and yields the chunks in the same order as one process would.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from retro_ops.ids import chunk_id, content_hash, sha256_hex


@dataclass(frozen=True)
class ChunkerConfig:
    """chunk_tokens: m in the RETRO paper (64).
    segment_chars: documents longer than this are tokenized in whitespace-aligned pieces.
    batch_segments: how many segments go to the Rust tokenizer in one call.
    workers: processes that chunk batches of documents in parallel (0 = one per core); used only
        when there is more than one batch, so a small corpus never pays for starting them.
    """

    chunk_tokens: int = 64
    segment_chars: int = 50_000
    batch_segments: int = 512
    workers: int = 0


@dataclass(frozen=True)
class Chunk:
    chunk_id: int
    doc_id: str
    position: int
    token_ids: list[int]
    text: str  # the exact source span from the first token's start to the last token's end
    char_start: int
    char_end: int
    next_chunk_id: int | None  # continuation: the next m tokens of the same document

    @property
    def content_hash(self) -> str:
        return content_hash(self.text)


def tokenizer_digest(model_dir: str | Path) -> str:
    """Identity of a tokenizer: hash of its files, so lineage can say which one cut the chunks."""
    folder = Path(model_dir)
    parts = [folder.joinpath(name).read_bytes() for name in
             ("tokenizer.json", "vocab.txt", "tokenizer_config.json") if folder.joinpath(name).exists()]
    return sha256_hex(b"\0".join(parts))[:16]


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerFast:
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if not tokenizer.is_fast:
        raise TypeError(f"{model_dir}: the chunker needs a fast (Rust) tokenizer")
    return tokenizer


def split_segments(text: str, max_chars: int) -> list[tuple[int, str]]:
    """(offset, piece) pairs covering `text`, cut after whitespace so tokens never straddle a cut."""
    segments, start = [], 0
    while len(text) - start > max_chars:
        cut = max(text.rfind(space, start, start + max_chars) for space in " \n\t")
        end = cut + 1 if cut > start else start + max_chars  # no whitespace: hard cut
        segments.append((start, text[start:end]))
        start = end
    segments.append((start, text[start:]))
    return segments


class Chunker:
    """Tokenizes documents in batches and yields their chunks in document order."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, config: ChunkerConfig = ChunkerConfig()):
        self.tokenizer = tokenizer
        self.config = config
        self.tokenizer_id = tokenizer_digest(tokenizer.name_or_path)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, config: ChunkerConfig = ChunkerConfig()) -> Chunker:
        return cls(load_tokenizer(model_dir), config)

    @property
    def identity(self) -> str:
        """What determines the chunks of a text: the tokenizer and m."""
        return f"{self.tokenizer_id}:m={self.config.chunk_tokens}"

    def tokenize(self, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """Token ids and character offsets of each text, through the batch path."""
        segmented = [split_segments(text, self.config.segment_chars) for text in texts]
        flat = [piece for segments in segmented for _, piece in segments]
        ids_all: list[list[int]] = []
        offsets_all: list[list[tuple[int, int]]] = []
        for start in range(0, len(flat), self.config.batch_segments):
            encoded = self.tokenizer(
                flat[start:start + self.config.batch_segments], add_special_tokens=False,
                return_offsets_mapping=True, return_attention_mask=False,
                return_token_type_ids=False, verbose=False,
            )
            ids_all.extend(encoded["input_ids"])
            offsets_all.extend(encoded["offset_mapping"])
        results, k = [], 0
        for segments in segmented:
            ids: list[int] = []
            offsets: list[tuple[int, int]] = []
            for base, _ in segments:
                ids.extend(ids_all[k])
                offsets.extend((base + a, base + b) for a, b in offsets_all[k])
                k += 1
            results.append((ids, offsets))
        return results

    def _batches(self, documents: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
        batch: list[tuple[str, str]] = []
        for doc in documents:
            batch.append(doc)
            if len(batch) >= self.config.batch_segments:
                yield batch
                batch = []
        if batch:
            yield batch

    def chunk_documents(self, documents: Iterable[tuple[str, str]], *,
                        workers: int | None = None) -> Iterator[Chunk]:
        """Chunks of (doc_id, text) pairs; a document shorter than m tokens gives one short chunk.
        workers: processes to shard batches over (None: the config's; 0: every core); the
        chunks and their order are the same for any number."""
        workers = (self.config.workers if workers is None else workers) or os.cpu_count() or 1
        batches = self._batches(documents)
        first = next(batches, None)
        second = next(batches, None) if workers > 1 else None
        if second is None:  # one batch (or one worker): no processes to start
            for batch in ([first] if first else []):
                yield from self._chunk_batch(batch)
            for batch in batches:
                yield from self._chunk_batch(batch)
            return
        yield from self._chunk_parallel(chain([first, second], batches), workers)

    def _chunk_parallel(self, batches: Iterable[list[tuple[str, str]]], workers: int) -> Iterator[Chunk]:
        context = multiprocessing.get_context("forkserver")  # no fork of a threaded parent
        context.set_forkserver_preload([__name__])  # workers start with transformers imported
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                 initargs=(self.tokenizer.name_or_path, self.config)) as pool:
            in_flight: deque[Future] = deque()
            task = max(1, self.config.batch_segments // (4 * workers))  # documents per task
            for batch in batches:
                for start in range(0, len(batch), task):
                    in_flight.append(pool.submit(_chunk_in_worker, batch[start:start + task]))
                    if len(in_flight) >= 4 * workers:  # bounded: a corpus is never read ahead
                        yield from in_flight.popleft().result()
            while in_flight:
                yield from in_flight.popleft().result()

    def _chunk_batch(self, batch: list[tuple[str, str]]) -> Iterator[Chunk]:
        m = self.config.chunk_tokens
        for (doc_id, text), (ids, offsets) in zip(batch, self.tokenize([t for _, t in batch])):
            n_chunks = (len(ids) + m - 1) // m
            for position in range(n_chunks):
                lo, hi = position * m, min(len(ids), (position + 1) * m)
                start, end = offsets[lo][0], offsets[hi - 1][1]
                yield Chunk(
                    chunk_id=chunk_id(doc_id, position),
                    doc_id=doc_id,
                    position=position,
                    token_ids=list(ids[lo:hi]),
                    text=text[start:end],
                    char_start=start,
                    char_end=end,
                    next_chunk_id=chunk_id(doc_id, position + 1) if position + 1 < n_chunks else None,
                )


_worker_chunker: Chunker | None = None  # one per worker process (set by its initializer)


def _start_worker(model_dir: str, config: ChunkerConfig) -> None:
    global _worker_chunker
    os.environ["RAYON_NUM_THREADS"] = "1"  # one core per process: the processes are the parallelism
    _worker_chunker = Chunker.from_model_dir(model_dir, config)


def _chunk_in_worker(batch: list[tuple[str, str]]) -> list[Chunk]:
    assert _worker_chunker is not None, "initializer did not run"
    return list(_worker_chunker._chunk_batch(batch))
