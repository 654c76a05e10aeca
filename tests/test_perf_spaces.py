"""Fast embedding spaces (#17): an int8 encoder is its own space beside fp32, selectable per
retrieval set, and good enough that a chunk's own text finds itself first."""

from __future__ import annotations

import numpy as np
import pytest

from retro_ops.errors import EmbedderError, RetrievalSetError
from retro_ops.features import pipeline
from retro_ops.features.embedder import Embedder, precision_of
from retro_ops.features.store import embeddings_table_name
from retro_ops.retrieval.indexing import publish_retrieval_set
from retro_ops.retrieval.retriever import Retriever


@pytest.fixture(scope="module")
def int8_set(ws):
    """The `small` corpus embedded again in the int8 space, and a set `small_int8` built in it."""
    fp32_table = embeddings_table_name(ws.embedder.space.space_id)
    fp32_version = ws.store.version(fp32_table)
    int8 = ws.embedder_of("int8")
    pipeline.embed_corpus(ws.catalog, ws.store, int8, "small")
    ws.catalog.create_retrieval_set("small_int8", ["small"])
    publish_retrieval_set(ws.catalog, ws.store, ws.settings.indices_dir, "small_int8", int8.space)
    return int8, fp32_table, fp32_version


def test_int8_space_vectors_are_finite_and_normalised(ws, int8_set):
    int8, _, _ = int8_set
    assert int8.space.space_id.endswith("_int8ort") and precision_of(int8.space.space_id) == "int8"
    assert int8.space.space_id != ws.embedder.space.space_id
    version = ws.catalog.latest_retrieval_set_version("small_int8")
    assert version.embedding_space_id == int8.space.space_id
    table = ws.store.db.open_table(embeddings_table_name(int8.space.space_id)).to_arrow()
    vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    members = ws.store.members(version.digest, ["content_hash"]).column("content_hash")
    assert len(vectors) == len(set(members.to_pylist())) > 100
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_chunk_text_retrieves_itself_first_in_the_int8_space(ws, int8_set):
    retriever = ws.retriever("small_int8")
    assert retriever.embedder.space.precision == "int8"
    rows = ws.store.members(retriever.version.digest, ["chunk_id", "text"]).to_pylist()
    picked = [rows[i] for i in np.random.default_rng(0).choice(len(rows), 8, replace=False)]
    found = retriever.retrieve([r["text"] for r in picked], k=3)
    assert [hits[0].chunk_id for hits in found] == [r["chunk_id"] for r in picked]
    assert all(hits[0].score > 0.99 for hits in found)


def test_spaces_coexist_and_each_set_names_its_own(ws, int8_set):
    int8, fp32_table, fp32_version = int8_set
    tables = set(ws.store.db.list_tables().tables)
    assert {fp32_table, embeddings_table_name(int8.space.space_id)} <= tables
    assert ws.store.version(fp32_table) == fp32_version  # the int8 run never touched fp32 vectors
    assert ws.retriever("small").embedder.space.space_id == ws.embedder.space.space_id
    assert ws.retriever("small_int8").embedder is int8
    fp32_index = ws.retriever("small")
    with pytest.raises(RetrievalSetError, match="was built in embedding space"):
        Retriever(fp32_index.index, fp32_index.manifest, fp32_index.version, ws.store, int8,
                  exclusions=ws.catalog.active_exclusions)


def test_bf16_space_is_another_normalised_space(embedder):
    bf16 = Embedder(precision="bf16")
    assert bf16.space.space_id.endswith("_bf16amp") and bf16.space.precision == "bf16"
    texts = ["Call me Ishmael.", "The whale swam under the boat."]
    fast, exact = bf16.embed(texts), embedder.embed(texts)
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-4)
    assert (fast * exact).sum(1).min() > 0.99


def test_unknown_precision_is_refused():
    with pytest.raises(EmbedderError, match="precision 'fp8': expected one of fp32, bf16, int8"):
        Embedder(precision="fp8")  # type: ignore[arg-type]
