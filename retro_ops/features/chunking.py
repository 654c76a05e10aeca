"""Cut documents into RETRO chunks: m consecutive WordPiece tokens of the frozen BERT's tokenizer.

Every chunk knows its document, its position and its continuation (the next chunk of the same
document), because a RETRO neighbour is chunk + continuation. Tokenization uses the tokenizer's
batch (Rust) path; long documents are cut into whitespace-aligned segments first, which is
lossless for WordPiece (it splits on whitespace anyway) and bounds memory for any length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from retro_ops.ids import chunk_id, content_hash, sha256_hex


@dataclass(frozen=True)
class ChunkerConfig:
    """chunk_tokens: m in the RETRO paper (64).
    segment_chars: documents longer than this are tokenized in whitespace-aligned pieces.
    batch_segments: how many segments go to the Rust tokenizer in one call.
    """

    chunk_tokens: int = 64
    segment_chars: int = 50_000
    batch_segments: int = 512


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

    def chunk_documents(self, documents: Iterable[tuple[str, str]]) -> Iterator[Chunk]:
        """Chunks of (doc_id, text) pairs; a document shorter than m tokens gives one short chunk."""
        batch: list[tuple[str, str]] = []
        for doc in documents:
            batch.append(doc)
            if len(batch) >= self.config.batch_segments:
                yield from self._chunk_batch(batch)
                batch = []
        if batch:
            yield from self._chunk_batch(batch)

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
