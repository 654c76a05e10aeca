"""Fast embedding spaces (#17): an int8 (ONNX Runtime) and a bf16 (bfloat16 weights) encoder are
each their own space beside fp32, selectable per retrieval set, and good enough that a chunk's own
text finds itself first."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retro_ops.errors import EmbedderError, RetrievalSetError
from retro_ops.features import pipeline
from retro_ops.features.embedder import Embedder
from retro_ops.features.spaces import precision_of
from retro_ops.features.schemas import embeddings_table_name
from retro_ops.retrieval.index.route import publish_retrieval_set
from retro_ops.retrieval.retriever import Retriever


SUFFIX = {"int8": "_int8ort", "bf16": "_bf16w"}


@pytest.fixture(scope="module", params=["int8", "bf16"])
def fast_set(ws, request):
    """The `small` corpus embedded again in a fast space, and a set `small_<precision>` built in it."""
    fp32_table = embeddings_table_name(ws.embedder.space.space_id)
    fp32_version = ws.store.version(fp32_table)
    fast = ws.embedder_of(request.param)
    pipeline.embed_corpus(ws.catalog, ws.store, fast, "small")
    ws.catalog.create_retrieval_set(f"small_{request.param}", ["small"])
    publish_retrieval_set(ws.catalog, ws.store, ws.settings.indices_dir, f"small_{request.param}",
                          fast.space)
    return fast, fp32_table, fp32_version


def test_fast_space_vectors_are_finite_and_normalised(ws, fast_set):
    fast, _, _ = fast_set
    precision = fast.precision
    assert fast.space.space_id.endswith(SUFFIX[precision]) and precision_of(fast.space.space_id) == precision
    assert fast.space.space_id != ws.embedder.space.space_id
    version = ws.catalog.latest_retrieval_set_version(f"small_{precision}")
    assert version.embedding_space_id == fast.space.space_id
    table = ws.store.db.open_table(embeddings_table_name(fast.space.space_id)).to_arrow()
    vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    members = ws.store.members(version.digest, ["content_hash"]).column("content_hash")
    assert len(vectors) == len(set(members.to_pylist())) > 100
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_chunk_text_retrieves_itself_first_in_the_fast_space(ws, fast_set):
    precision = fast_set[0].precision
    retriever = ws.retriever(f"small_{precision}")
    assert retriever.embedder.space.precision == precision
    rows = ws.store.members(retriever.version.digest, ["chunk_id", "text"]).to_pylist()
    picked = [rows[i] for i in np.random.default_rng(0).choice(len(rows), 8, replace=False)]
    found = retriever.retrieve([r["text"] for r in picked], k=3)
    assert [hits[0].chunk_id for hits in found] == [r["chunk_id"] for r in picked]
    assert all(hits[0].score > 0.99 for hits in found)


def test_spaces_coexist_and_each_set_names_its_own(ws, fast_set):
    fast, fp32_table, fp32_version = fast_set
    tables = set(ws.store.db.list_tables().tables)
    assert {fp32_table, embeddings_table_name(fast.space.space_id)} <= tables
    assert ws.store.version(fp32_table) == fp32_version  # the fast run never touched fp32 vectors
    assert ws.retriever("small").embedder.space.space_id == ws.embedder.space.space_id
    assert ws.retriever(f"small_{fast.precision}").embedder is fast
    fp32_index = ws.retriever("small")
    with pytest.raises(RetrievalSetError, match="was built in embedding space"):
        Retriever(fp32_index.index, fp32_index.manifest, fp32_index.version, ws.store, fast,
                  exclusions=ws.catalog.active_exclusions)


def test_bf16_space_is_another_normalised_space(embedder):
    bf16 = Embedder(precision="bf16")
    assert bf16.space.space_id.endswith("_bf16w") and bf16.space.precision == "bf16"
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    texts = ["Call me Ishmael.", "The whale swam under the boat."]
    fast, exact = bf16.embed(texts), embedder.embed(texts)
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-4)
    assert (fast * exact).sum(1).min() > 0.99


def test_unknown_precision_is_refused():
    with pytest.raises(EmbedderError, match="precision 'fp8': expected one of fp32, bf16, int8"):
        Embedder(precision="fp8")  # type: ignore[arg-type]


def test_streams_give_the_same_vectors_and_leave_the_callers_threads():
    """streams=2 runs two batches at once on one torch thread each: same vectors (up to float
    summation order), and the calling thread keeps its own torch thread count."""
    texts = [f"Chapter {i}. The whale, the boat and the sea, told again ({i})." for i in range(40)]
    threads = torch.get_num_threads()
    for precision, atol in (("fp32", 1e-5), ("bf16", 2e-3)):
        reference = Embedder(precision=precision, batch_size=8)  # type: ignore[arg-type]
        streamed = Embedder(precision=precision, batch_size=8, streams=2)  # type: ignore[arg-type]
        assert streamed.space.space_id == reference.space.space_id  # the same space
        np.testing.assert_allclose(streamed.embed(texts), reference.embed(texts), atol=atol)
        assert torch.get_num_threads() == threads
    with pytest.raises(EmbedderError, match="streams 0: expected >= 1"):
        Embedder(streams=0)


def test_a_model_trained_on_a_fast_set_records_that_set_s_space(ws, fast_set):
    """The model's lineage names the space its neighbours were retrieved in (the set's), not the
    home's default fp32 embedder's."""
    from helpers import tiny_spec

    from retro_ops.training.prepare import prepare_training
    from retro_ops.training.run import train_model

    fast = fast_set[0]
    data = prepare_training(ws, tiny_spec(steps=2, retrieval_set=f"small_{fast.precision}"))
    info = train_model(ws, data, "retro").info
    assert info.embedding_space_id == fast.space.space_id != ws.embedder.space.space_id
