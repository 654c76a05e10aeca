"""Chunker: m-token boundaries, continuation links, lossless token round-trip, stable ids."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from retro_ops.features.chunking import Chunker, ChunkerConfig, split_segments
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.ids import chunk_id, document_id

CHAPTER = (CORPORA_DIR / "moby_dick" / "chapter_1.txt").read_text()


def full_ids(chunker: Chunker, text: str) -> list[int]:
    return chunker.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def test_chunk_boundaries_and_continuations(chunker: Chunker):
    doc_id = document_id(CHAPTER)
    chunks = list(chunker.chunk_documents([(doc_id, CHAPTER)]))
    n_tokens = len(full_ids(chunker, CHAPTER))
    assert len(chunks) == -(-n_tokens // 64)
    assert all(len(c.token_ids) == 64 for c in chunks[:-1])
    assert 0 < len(chunks[-1].token_ids) <= 64
    assert [c.position for c in chunks] == list(range(len(chunks)))
    for current, following in zip(chunks, chunks[1:]):
        assert current.next_chunk_id == following.chunk_id
        assert current.char_end <= following.char_start
    assert chunks[-1].next_chunk_id is None
    assert all(c.chunk_id == chunk_id(doc_id, c.position) and c.chunk_id > 0 for c in chunks)


def test_tokens_round_trip(chunker: Chunker):
    """Concatenated chunk tokens are the document's tokens; each chunk's text is its source span
    and re-tokenizes to its own tokens (chunks here start on word boundaries or '##' pieces)."""
    chunks = list(chunker.chunk_documents([("d", CHAPTER)]))
    assert [t for c in chunks for t in c.token_ids] == full_ids(chunker, CHAPTER)
    for c in chunks:
        assert c.text == CHAPTER[c.char_start:c.char_end]
        first = chunker.tokenizer.convert_ids_to_tokens(c.token_ids[0])
        if not first.startswith("##"):
            assert full_ids(chunker, c.text) == c.token_ids
    decoded = chunker.tokenizer.decode(chunks[0].token_ids)
    assert decoded.startswith("chapter 1. loomings. call me ishmael.")


def test_document_shorter_than_one_chunk_gives_one_short_chunk(chunker: Chunker):
    [chunk] = chunker.chunk_documents([("d", "Call me Ishmael.")])
    assert chunk.token_ids == full_ids(chunker, "Call me Ishmael.")
    assert chunk.next_chunk_id is None and chunk.text == "Call me Ishmael."


def test_long_single_line_document_is_segmented_losslessly(chunker: Chunker):
    long_line = CHAPTER.replace("\n", " ") * 4  # ~50k chars, one line
    small_segments = Chunker(chunker.tokenizer, ChunkerConfig(segment_chars=1000))
    segmented = list(small_segments.chunk_documents([("d", long_line)]))
    whole = list(Chunker(chunker.tokenizer, ChunkerConfig(segment_chars=10**9))
                 .chunk_documents([("d", long_line)]))
    assert [c.token_ids for c in segmented] == [c.token_ids for c in whole]
    assert [c.text for c in segmented] == [c.text for c in whole]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab \n\t.é"), max_size=400), st.integers(1, 50))
def test_split_segments_cover_the_text(text: str, max_chars: int):
    segments = split_segments(text, max_chars)
    assert "".join(piece for _, piece in segments) == text
    assert all(text[offset:offset + len(piece)] == piece for offset, piece in segments)


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=st.sampled_from("Whale ship,.!\n-'ñ"), min_size=1, max_size=300))
def test_segmented_tokenization_equals_whole(chunker: Chunker, text: str):
    """Lossless whenever no whitespace-free run is longer than a segment. (In production a segment
    is 50,000 characters; a longer run is over WordPiece's 100-character word limit, so it is
    [UNK] either way, and a hard cut can only turn one [UNK] into two.)"""
    assume(all(len(run) <= 17 for run in text.split()))
    tiny = Chunker(chunker.tokenizer, ChunkerConfig(segment_chars=17, chunk_tokens=8))
    got = [t for c in tiny.chunk_documents([("d", text)]) for t in c.token_ids]
    assert got == full_ids(chunker, text)


def test_chunk_spans_are_the_wrapped_tokenizers_offsets(chunker: Chunker):
    """The chunks are cut with the Rust tokenizer directly (`chunk_cut`); their spans are the
    offsets the transformers wrapper gives, segments and non-ASCII text included; an empty or
    blank document has no chunks."""
    text = ("Ünïcödé 東京 tëst, 🙂 whale\tboat\n" * 200) + CHAPTER[:5000]
    small = Chunker(chunker.tokenizer, ChunkerConfig(segment_chars=700, batch_segments=3))
    chunks = list(small.chunk_documents([("e", ""), ("d", text), ("b", " \n\t ")]))
    encoded = chunker.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                                verbose=False)
    offsets = encoded["offset_mapping"]
    assert {c.doc_id for c in chunks} == {"d"} and len(chunks) > 20
    assert [t for c in chunks for t in c.token_ids] == encoded["input_ids"]
    for c in chunks:
        lo, hi = c.position * 64, c.position * 64 + len(c.token_ids)
        assert (c.char_start, c.char_end) == (offsets[lo][0], offsets[hi - 1][1])
        assert c.text == text[c.char_start:c.char_end]
