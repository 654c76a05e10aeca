"""Cut documents into RETRO chunks: m consecutive WordPiece tokens of the frozen BERT's tokenizer.

Every chunk knows its document, its position and its continuation (the next chunk of the same
document), because a RETRO neighbour is chunk + continuation. Tokenization uses the tokenizer's
batch (Rust) path; long documents are cut into whitespace-aligned segments first, which is
lossless for WordPiece (it splits on whitespace anyway) and bounds memory for any length.

Where chunks fall is computed by `chunk_cut` (token ids, spans and ids as numpy arrays, no Python
work per token); this module turns them into `Chunk` objects. `workers > 1` shards batches of
documents across a pool of processes (each tokenizer on one core: the Rust path alone kept 1.5
of 2 cores busy), with a bounded number of batches in flight, and yields the chunks in the same
order as one process would. The pool is started once per process and tokenizer (its workers
import only `tokenizers` and numpy) and kept for later calls; they get the documents' text and
send back only the compact arrays.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from retro_ops.features import chunk_cut
from retro_ops.features.chunk_cut import DocCut, split_segments
from retro_ops.features.schemas import CHUNKS_SCHEMA
from retro_ops.ids import content_hash, sha256_hex

__all__ = ["Chunk", "Chunker", "ChunkerConfig", "load_tokenizer", "split_segments", "tokenizer_digest"]


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

    @cached_property
    def _serialized(self) -> str:
        return self.tokenizer.backend_tokenizer.to_str()

    @cached_property
    def _plain(self):
        """The Rust tokenizer the chunks are cut with. Its settings are fixed at creation (the
        transformers wrapper changes them per call, which is what makes it non-reentrant), so
        threads may share it."""
        return chunk_cut.plain_tokenizer(self._serialized)

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
        for batch, cuts in self._cuts(documents, workers):
            yield from self._chunks(batch, cuts)

    def chunk_tables(self, documents: Iterable[tuple[str, str]], *,
                     workers: int | None = None) -> Iterator[pa.Table]:
        """The same chunks as `chunk_documents`, as Arrow tables in the feature store's chunk
        schema, one per batch of documents: built column-wise from the cut arrays, with no Python
        object per chunk or token (the write path's cost, #17)."""
        for batch, cuts in self._cuts(documents, workers):
            yield chunk_table(batch, cuts, self.config.chunk_tokens)

    def _cuts(self, documents: Iterable[tuple[str, str]],
              workers: int | None) -> Iterator[tuple[list[tuple[str, str]], list[DocCut]]]:
        workers = (self.config.workers if workers is None else workers) or os.cpu_count() or 1
        batches = self._batches(documents)
        first = next(batches, None)
        second = next(batches, None) if workers > 1 else None
        if second is None:  # one batch (or one worker): no processes to start
            c = self.config
            for batch in chain([first] if first else [], batches):
                yield batch, chunk_cut.cut(self._plain, batch, c.chunk_tokens, c.segment_chars,
                                           c.batch_segments)
            return
        yield from self._cut_parallel(chain([first, second], batches), workers)

    def _cut_parallel(self, batches: Iterable[list[tuple[str, str]]],
                      workers: int) -> Iterator[tuple[list[tuple[str, str]], list[DocCut]]]:
        pool = _pool(self._serialized, self.config, workers)
        in_flight: deque[tuple[list[tuple[str, str]], Future]] = deque()
        task = max(1, self.config.batch_segments // (4 * workers))  # documents per task
        try:
            for batch in batches:
                for start in range(0, len(batch), task):
                    part = batch[start:start + task]
                    in_flight.append((part, pool.submit(chunk_cut.cut_in_worker, part)))
                    if len(in_flight) >= 4 * workers:  # bounded: a corpus is never read ahead
                        part, future = in_flight.popleft()
                        yield part, future.result()
            while in_flight:
                part, future = in_flight.popleft()
                yield part, future.result()
        except BrokenProcessPool:
            _drop_pool(pool)  # a worker died (killed, out of memory): the next call starts anew
            raise

    def _chunks(self, batch: list[tuple[str, str]], cuts: list[DocCut]) -> Iterator[Chunk]:
        m = self.config.chunk_tokens
        for (doc_id, text), cut in zip(batch, cuts):
            ids, ids_of_chunks = cut.token_ids.tolist(), cut.chunk_ids.tolist()
            n_chunks = len(ids_of_chunks)
            for position, (start, end) in enumerate(cut.spans.tolist()):
                yield Chunk(
                    chunk_id=ids_of_chunks[position],
                    doc_id=doc_id,
                    position=position,
                    token_ids=ids[position * m:(position + 1) * m],
                    text=text[start:end],
                    char_start=start,
                    char_end=end,
                    next_chunk_id=ids_of_chunks[position + 1] if position + 1 < n_chunks else None,
                )


def chunk_table(batch: Sequence[tuple[str, str]], cuts: Sequence[DocCut], m: int) -> pa.Table:
    """The chunks of cut documents as one Arrow table in `CHUNKS_SCHEMA` (what `Chunk` objects
    of the same documents would give `FeatureStore.add_chunks`)."""
    n_of_doc = np.fromiter((len(c.chunk_ids) for c in cuts), dtype=np.int64, count=len(cuts))
    chunk_ids = np.concatenate([c.chunk_ids for c in cuts])  # a batch holds >= 1 document
    positions = np.concatenate([np.arange(n, dtype=np.int32) for n in n_of_doc])
    spans = np.concatenate([c.spans for c in cuts])
    tokens = np.concatenate([c.token_ids for c in cuts]).astype(np.int32)
    n_tokens_of_doc = np.fromiter((len(c.token_ids) for c in cuts), dtype=np.int64, count=len(cuts))
    # each chunk's first token in the flat array: its document's first + position * m
    doc_first = np.repeat(np.cumsum(n_tokens_of_doc) - n_tokens_of_doc, n_of_doc)
    offsets = np.append(doc_first + positions.astype(np.int64) * m, len(tokens)).astype(np.int32)
    last = positions == np.repeat(n_of_doc - 1, n_of_doc)  # each document's last chunk
    following = np.zeros_like(chunk_ids)
    following[:-1] = chunk_ids[1:]  # the next row's id, masked where a document ends
    texts = [text[start:end] for (_, text), cut in zip(batch, cuts) for start, end in cut.spans.tolist()]
    return pa.table({
        "chunk_id": chunk_ids, "doc_id": np.repeat(np.array([d for d, _ in batch], dtype=object), n_of_doc),
        "position": positions, "content_hash": [content_hash(t) for t in texts],
        "token_ids": pa.ListArray.from_arrays(offsets, tokens), "n_tokens": np.diff(offsets),
        "text": texts, "char_start": spans[:, 0], "char_end": spans[:, 1],
        "next_chunk_id": pa.array(following, mask=last),
    }, schema=CHUNKS_SCHEMA)


_pools: dict[tuple[str, ChunkerConfig, int, int], ProcessPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(serialized: str, config: ChunkerConfig, workers: int) -> ProcessPoolExecutor:
    """This process's pool for a tokenizer, config and size: started on first use, then kept
    (its start-up is paid once, not per call); the interpreter shuts it down at exit."""
    # the pid: a forked child inherits this dict but not the pool's manager thread
    key = (hashlib.sha256(serialized.encode()).hexdigest(), config, workers, os.getpid())
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            context = multiprocessing.get_context("forkserver")  # no fork of a threaded parent
            context.set_forkserver_preload([chunk_cut.__name__])  # tokenizers + numpy only
            pool = _pools[key] = ProcessPoolExecutor(
                workers, mp_context=context, initializer=chunk_cut.start_worker,
                initargs=(serialized, config.chunk_tokens, config.segment_chars,
                          config.batch_segments))
        return pool


def worker_pids() -> list[int]:
    """Process ids of this process's chunking workers (for CPU accounting by benchmarks)."""
    with _pools_lock:
        return [pid for key, pool in _pools.items() if key[3] == os.getpid()
                for pid in getattr(pool, "_processes", None) or {}]


def _drop_pool(pool: ProcessPoolExecutor) -> None:
    with _pools_lock:
        for key in [k for k, p in _pools.items() if p is pool]:
            del _pools[key]
    pool.shutdown(wait=False, cancel_futures=True)
