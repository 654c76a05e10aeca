"""Re-materializing after one added document reuses the unchanged documents' work (issue #28):
a real in-process Dagster run of the whole corpus chain and the retrieval set over it, on a few
tiny real documents (KJV verses), the real BERT, LanceDB, FAISS and the catalog."""

from __future__ import annotations

from pathlib import Path

from assets.launch import materialize_corpus, materialize_retrieval_set
from assets.instance import dagster_instance
from assets.resources import _EMBEDDER, EmbedderResource
from retro_ops.catalog import Catalog
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.features.chunking import Chunker
from retro_ops.settings import Settings

KJV = CORPORA_DIR / "kjv_nt"
CHAPTERS = ["40_Matthew_05.txt", "41_Mark_04.txt", "42_Luke_15.txt", "43_John_01.txt"]


def _tiny(chapter: str) -> str:
    """The first three verses of a chapter: one or two chunks."""
    return "\n".join((KJV / chapter).read_text().splitlines()[:3]) + "\n"


def _metadata(*outcomes) -> dict[str, dict]:
    found = {}
    for outcome in outcomes:
        assert outcome.success, outcome.error
        found.update({a.asset: a.metadata for a in outcome.assets})
    return found


def test_one_added_document_is_the_only_work(home: Settings, tmp_path: Path, chunker: Chunker):
    folder = tmp_path / "tiny"
    folder.mkdir()
    for chapter in CHAPTERS[:-1]:
        (folder / chapter).write_text(_tiny(chapter))
    catalog = Catalog.open(home.catalog_url, home=home.home)
    catalog.add_corpus("tiny", str(folder))
    catalog.create_retrieval_set("tiny", ["tiny"])
    instance = dagster_instance(home)

    def materialize() -> dict[str, dict]:
        return _metadata(materialize_corpus(instance, "tiny"), materialize_retrieval_set(instance, "tiny"))

    first = materialize()
    n_chunks = first["chunks"]["chunks"]
    assert first["chunk_embeddings"]["newly_embedded"] == first["chunk_embeddings"]["distinct_chunk_texts"] > 0

    # one more document: only its chunks are chunked, embedded and scored; the set and its index
    # then hold every chunk, old and new
    added = CHAPTERS[-1]
    (folder / added).write_text(_tiny(added))
    expected = len(list(chunker.chunk_documents([("added", _tiny(added))])))
    second = materialize()
    assert second["documents"]["new_documents"] == 1 and second["documents"]["documents"] == len(CHAPTERS)
    assert second["chunks"]["new_chunks"] == expected and second["chunks"]["chunks"] == n_chunks + expected
    assert second["chunk_embeddings"]["newly_embedded"] == expected
    assert second["chunk_scores"]["newly_scored"] == expected * 2  # two scorers: toxicity and pii
    assert second["retrieval_set"]["new_version"] is True
    assert second["retrieval_set"]["chunks"] == second["faiss_index"]["ntotal"] == n_chunks + expected
    assert second["faiss_index"]["recall_at_10"] == 1.0

    # nothing changed: nothing is recomputed, and this process never loads the embedder's
    # weights (only its space is read)
    _EMBEDDER.clear()
    third = materialize()
    assert third["documents"]["new_documents"] == 0 and third["chunks"]["new_chunks"] == 0
    assert third["chunk_embeddings"]["newly_embedded"] == 0 and third["chunk_scores"]["newly_scored"] == 0
    assert third["retrieval_set"]["new_version"] is False and third["faiss_index"]["reused"] is True
    assert EmbedderResource().load().model_loaded is False
