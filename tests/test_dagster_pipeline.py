"""A real in-process Dagster materialization of documents -> chunks -> chunk_embeddings:
real files, real LanceDB, the real BERT, the instance under the test's home."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest

from assets.definitions import defs
from assets.instance import dagster_instance, dagster_yaml
from assets.launch import (
    materialize_corpus,
    materialize_models,
    materialize_retrieval_set,
)
from assets.resources import TrainingResource
from retro_ops.catalog import Catalog
from retro_ops.features.chunking import Chunker
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.features.store import FeatureStore
from retro_ops.settings import DAGSTER_STORAGE_ENV, Settings

REPO = Path(__file__).resolve().parents[1]

SHARDED = ("chunk_shard", "embedding_shard", "index_training", "index_shard", "sharded_faiss_index")


def by_asset(outcome) -> dict:
    return {a.asset: a for a in outcome.assets}


def test_asset_graph_snapshot():
    """A change to the graph shows up here as a visible diff."""
    graph = defs.resolve_asset_graph()
    deps = {key.to_user_string(): sorted(p.to_user_string() for p in graph.get(key).parent_keys)
            for key in graph.get_all_asset_keys()}
    assert deps == {"corpus_files": [], "exclusions": [],
                    "documents": ["corpus_files"], "chunks": ["documents"], "chunk_embeddings": ["chunks"],
                    "chunk_scores": ["chunks"],
                    "retrieval_set": ["chunk_embeddings", "exclusions"], "faiss_index": ["retrieval_set"],
                    "training_neighbours": ["chunk_embeddings", "faiss_index"],
                    "baseline_checkpoint": ["training_neighbours"],
                    "retro_checkpoint": ["training_neighbours"],
                    "retrofit_checkpoint": ["baseline_checkpoint", "training_neighbours"],
                    "evaluation": ["baseline_checkpoint", "retro_checkpoint", "retrofit_checkpoint"],
                    "swap_evaluation": ["faiss_index", "retro_checkpoint"],
                    "generation_log": ["retrieval_set"], "near_duplicates": ["documents"],
                    # scale-out (assets/sharded.py): corpus x shard, retrieval set x shard
                    "chunk_shard": ["documents"], "embedding_shard": ["chunk_shard"],
                    "index_training": ["retrieval_set"], "index_shard": ["index_training"],
                    "sharded_faiss_index": ["index_shard"]}
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups == {"corpus_files": "corpora", "documents": "corpora", "chunks": "features",
                      "chunk_embeddings": "features", "chunk_scores": "governance", "exclusions": "governance",
                      "retrieval_set": "retrieval", "faiss_index": "retrieval",
                      "training_neighbours": "models", "baseline_checkpoint": "models",
                      "retro_checkpoint": "models", "retrofit_checkpoint": "models",
                      "evaluation": "evaluation", "swap_evaluation": "evaluation",
                      "near_duplicates": "governance", "generation_log": "serving",
                      **{name: "scale_out" for name in SHARDED}}
    partitions = {key.to_user_string(): getattr(graph.get(key).partitions_def, "name", "multi")
                  for key in graph.get_all_asset_keys() if graph.get(key).partitions_def}
    assert set(partitions) == set(deps) - {"exclusions", "near_duplicates", "generation_log"}
    assert {partitions[k] for k in ("training_neighbours", "retro_checkpoint", "evaluation")} == {"training_spec"}
    # every materializable asset says what it is, who owns it and what it runs on
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and node.owners, key
        assert node.is_observable or node.kinds, key
    automated = sorted(k.to_user_string() for k in graph.get_all_asset_keys()
                       if graph.get(k).automation_condition is not None)
    assert automated == ["chunk_embeddings", "chunk_scores", "chunks", "documents", "faiss_index",
                         "retrieval_set"]
    checks = sorted(k.name for k in graph.asset_check_keys)
    assert checks == ["chunk_embeddings_complete", "chunk_embeddings_finite", "chunks_complete",
                      "chunks_not_empty", "chunks_unique_keys", "documents_unique_keys",
                      "embeddings_unique_keys", "evaluation_leaky_share", "faiss_index_ntotal", "faiss_index_recall",
                      "retrieval_set_chunks_unique_keys"]


def test_materialize_then_add_one_document(home: Settings, small_corpus: Path, chunker: Chunker):
    catalog = Catalog.open(home.catalog_url)
    catalog.add_corpus("small", str(small_corpus))
    instance = dagster_instance(home)

    first = materialize_corpus(instance, "small")
    assert first.success, first.error
    assets = by_asset(first)
    n_chunks = assets["chunks"].metadata["chunks"]
    assert assets["documents"].metadata["documents"] == 6
    assert n_chunks > 50 and assets["chunks"].metadata["new_chunks"] == n_chunks
    assert assets["chunk_embeddings"].metadata["newly_embedded"] == \
        assets["chunk_embeddings"].metadata["distinct_chunk_texts"]
    assert all(all(a.checks.values()) for a in first.assets)
    assert len([c for a in first.assets for c in a.checks]) == 7
    # the run and its materializations live on the instance the UI reads
    assert instance.get_run_by_id(first.run_id) is not None
    event = instance.get_latest_materialization_event(dg.AssetKey("chunk_embeddings"))
    assert event.asset_materialization.partition == "small"

    # add one document: only its chunks are chunked and embedded
    new_doc = CORPORA_DIR / "moby_dick" / "chapter_9.txt"
    shutil.copy(new_doc, small_corpus / new_doc.name)
    expected = len(list(chunker.chunk_documents([("x", new_doc.read_text())])))
    second = by_asset(materialize_corpus(instance, "small"))
    assert second["documents"].metadata["new_documents"] == 1
    assert second["chunks"].metadata["new_chunks"] == expected
    assert second["chunks"].metadata["chunks"] == n_chunks + expected
    assert second["chunk_embeddings"].metadata["newly_embedded"] == expected
    assert second["chunk_embeddings"].metadata["lancedb_version"] > \
        assets["chunk_embeddings"].metadata["lancedb_version"]

    # unchanged corpus: nothing is re-chunked or re-embedded, the LanceDB version stays
    third = by_asset(materialize_corpus(instance, "small"))
    assert third["chunks"].metadata["new_chunks"] == 0
    assert third["chunk_embeddings"].metadata["newly_embedded"] == 0
    assert third["chunk_embeddings"].metadata["lancedb_version"] == \
        second["chunk_embeddings"].metadata["lancedb_version"]
    recorded = [(f["asset"], f["lance_version"]) for f in catalog.feature_versions("chunk_embeddings")]
    assert [v for _, v in recorded] == [assets["chunk_embeddings"].metadata["lancedb_version"],
                                        second["chunk_embeddings"].metadata["lancedb_version"],
                                        second["chunk_embeddings"].metadata["lancedb_version"]]


def test_bad_inputs_do_not_stop_the_corpus(home: Settings, tmp_path: Path):
    folder = tmp_path / "messy"
    folder.mkdir()
    (folder / "good.txt").write_text((CORPORA_DIR / "moby_dick" / "chapter_2.txt").read_text())
    (folder / "short.txt").write_text("Call me Ishmael.")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "blob.txt").write_bytes(bytes(range(256)) * 16)
    (folder / "bad.jsonl").write_text('{"text": "kept line"}\nnot json\n{"no": "text"}\n')
    catalog = Catalog.open(home.catalog_url)
    catalog.add_corpus("messy", str(folder))
    outcome = materialize_corpus(dagster_instance(home), "messy")
    assert outcome.success, outcome.error
    assets = by_asset(outcome)
    assert assets["documents"].metadata["documents"] == 3  # good, short, kept line
    assert assets["documents"].metadata["issues"] == 4
    assert "bad.jsonl:2: not valid JSON" in assets["documents"].metadata["issue_list"]
    assert assets["chunks"].metadata["documents_shorter_than_one_chunk"] == 2
    assert all(all(a.checks.values()) for a in outcome.assets)
    store = FeatureStore(home.lancedb_uri)
    ids = catalog.corpus_doc_ids(catalog.latest_corpus_version("messy").id)
    assert store.chunks_of_documents(ids, ["chunk_id"]).num_rows == assets["chunks"].metadata["chunks"]


def test_selection_and_unknown_asset(home: Settings, small_corpus: Path):
    Catalog.open(home.catalog_url).add_corpus("small", str(small_corpus))
    instance = dagster_instance(home)
    outcome = materialize_corpus(instance, "small", selection=["documents"])
    assert [a.asset for a in outcome.assets] == ["documents"]
    try:
        materialize_corpus(instance, "small", selection=["embeddings"])
    except ValueError as exc:
        assert str(exc) == ("unknown asset(s) embeddings; choose from documents, chunks, "
                            "chunk_embeddings, chunk_scores")
    else:
        raise AssertionError("an unknown asset must be refused")


def test_definitions_validate_from_workspace():
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr


def test_retrieval_set_and_index_through_dagster(home: Settings, small_corpus: Path):
    from retro_ops.retrieval.index.publish import current_build, index_root

    catalog = Catalog.open(home.catalog_url)
    catalog.add_corpus("small", str(small_corpus))
    instance = dagster_instance(home)
    assert materialize_corpus(instance, "small").success
    catalog.create_retrieval_set("small_set", ["small"])
    outcome = materialize_retrieval_set(instance, "small_set")
    assert outcome.success, outcome.error
    assets = by_asset(outcome)
    n_chunks = assets["retrieval_set"].metadata["chunks"]
    index_md = assets["faiss_index"].metadata
    assert index_md["ntotal"] == n_chunks and index_md["published"] is True
    assert index_md["recall_at_10"] == 1.0 and index_md["p50_ms"] > 0
    assert assets["faiss_index"].checks == {"faiss_index_recall": True, "faiss_index_ntotal": True}
    served = current_build(index_root(home.indices_dir, "small_set"))

    # a deliberately bad configuration: the blocking recall check fails, nothing is published
    bad = materialize_retrieval_set(instance, "small_set", selection=["faiss_index"],
                                    asset_config={"faiss_index": {"factory": "IVF3,Flat", "nprobe": 1,
                                                                  "recall_threshold": 0.95}})
    assert not bad.success
    assert by_asset(bad)["faiss_index"].checks["faiss_index_recall"] is False
    assert current_build(index_root(home.indices_dir, "small_set")) == served

    # the model assets on top, through Dagster: neighbours -> checkpoints -> evaluation
    training = TrainingResource(corpus="small", retrieval_set="small_set", steps=3, batch_size=2)
    models = materialize_models(instance, training, asset_config={
        "swap_evaluation": {"on": "small", "sets": ["small_set"]}})
    assert models.success, models.error
    trained = by_asset(models)
    assert trained["training_neighbours"].metadata["retrieval_set_version_id"] == \
        assets["retrieval_set"].metadata["retrieval_set_version_id"]
    # a failed blocking recall check never lets a model train on that index: the one trained on
    # is the index still published, not the rejected build
    assert trained["training_neighbours"].metadata["index_sha256"] == served[1]
    assert trained["retro_checkpoint"].metadata["mlflow_run_id"]
    retro = trained["retro_checkpoint"].metadata  # lineage where users look (#12)
    assert retro["mlflow_run"].endswith(f"/runs/{retro['mlflow_run_id']}")
    assert retro["mlflow_model_version"].startswith("http://127.0.0.1:5000/#/models/")
    assert retro["loss_curve"].startswith("![retro training loss](data:image/png;base64,iVBOR")
    assert trained["evaluation"].metadata["mlflow_run"].endswith(trained["evaluation"].metadata["mlflow_run_id"])
    assert "| factory | recall@10 |" in index_md["quality"] and index_md["dagster/row_count"] == n_chunks
    lineage = {r["field"]: r["value"] for r in retro["lineage"]}  # tables come back as plain rows
    assert lineage["model"] == retro["model"] and lineage["retrieval_set.retrieval_set"] == "small_set"
    assert trained["retrofit_checkpoint"].metadata["trainable_parameters"] < \
        trained["retrofit_checkpoint"].metadata["total_parameters"]
    rows = trained["evaluation"].metadata["rows"]
    assert [(r["kind"], r["setting"]) for r in rows] == [
        ("baseline", "no retrieval"), ("retro", "no retrieval"), ("retro", "set small_set"),
        ("retro", "control: small_set shuffled"), ("retro", "control: oracle"),
        ("retrofit", "no retrieval"), ("retrofit", "set small_set"),
        ("retrofit", "control: small_set shuffled"), ("retrofit", "control: oracle")]
    assert rows[0]["bits_per_byte"] == rows[5]["bits_per_byte"]  # RETROfit without retrieval = baseline
    swapped = trained["swap_evaluation"].metadata["rows"]
    assert [(r["kind"], r["setting"]) for r in swapped] == [
        ("retro", "no retrieval"), ("retro", "set small_set"), ("baseline", "no retrieval")]
    assert swapped[1]["bits_per_byte"] == rows[2]["bits_per_byte"]  # same model, text and set
    again = materialize_models(instance, training, selection=["retro_checkpoint"])
    assert by_asset(again)["retro_checkpoint"].metadata["reused"] is True
    assert again.partition == models.partition  # the same spec: the same partition

    # another spec is another partition: both models stand side by side on the instance
    other = materialize_models(instance, TrainingResource(corpus="small", retrieval_set="small_set", steps=2,
                                                          batch_size=2, seed=1),
                               selection=["training_neighbours", "retro_checkpoint"])
    assert other.success, other.error
    assert other.partition != models.partition
    assert sorted(instance.get_dynamic_partitions("training_spec")) == sorted([models.partition, other.partition])
    for spec in (models.partition, other.partition):
        records = instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("retro_checkpoint"), asset_partitions=[spec]), limit=1).records
        assert [r.partition_key for r in records] == [spec]


@pytest.mark.postgres
def test_dagster_storage_on_postgres(home: Settings, small_corpus: Path, pg_database_url: str,
                                    monkeypatch: pytest.MonkeyPatch):
    """RETRO_OPS_DAGSTER_STORAGE_URL puts runs, events and partitions in Postgres: a real
    materialization is recorded there and a second instance (as `dagster dev` opens) sees it.
    The URL's password stays out of dagster.yaml, which names the environment variable."""
    import sqlalchemy as sa

    url = sa.make_url(pg_database_url).set(password="pw-Not-In-Yaml").render_as_string(
        hide_password=False)
    settings = replace(home, dagster_storage_url=url)
    monkeypatch.delenv(DAGSTER_STORAGE_ENV, raising=False)  # the settings alone are enough here
    Catalog.open(home.catalog_url).add_corpus("small", str(small_corpus))
    instance = dagster_instance(settings)
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    outcome = materialize_corpus(instance, "small", selection=["documents"])
    assert outcome.success, outcome.error
    monkeypatch.setenv(DAGSTER_STORAGE_ENV, url)  # as `retro-ops ui` passes it to `dagster dev`
    reopened = dg.DagsterInstance.from_config(str(settings.dagster_home))
    [run] = reopened.get_runs()
    assert run.run_id == outcome.run_id and run.is_success
    event = reopened.get_latest_materialization_event(dg.AssetKey("documents"))
    assert event is not None and event.asset_materialization.partition == "small"
    assert reopened.get_dynamic_partitions("corpus") == ["small"]
    written = (settings.dagster_home / "dagster.yaml").read_text()
    assert "pw-Not-In-Yaml" not in written and f"env: {DAGSTER_STORAGE_ENV}" in written
    # back to SQLite: the file written by retro-ops follows the settings
    assert "postgres" not in dagster_yaml(home)
    assert type(dagster_instance(home).run_storage).__name__ != "PostgresRunStorage"


def test_training_specs_are_named_by_their_content(home: Settings):
    """A spec's partition name is derived from its settings, recorded once, never rewritten."""
    from assets.specs import load_spec, register_spec, save_spec, spec_name

    instance = dagster_instance(home)
    first = TrainingResource(corpus="small", retrieval_set="small_set", steps=3)
    name = register_spec(instance, first)
    assert name == spec_name(first) and name.startswith("small-") and len(name) == len("small-") + 8
    assert register_spec(instance, TrainingResource(corpus="small", retrieval_set="small_set", steps=3)) == name
    assert spec_name(TrainingResource(corpus="small", retrieval_set="small_set", steps=4)) != name
    assert load_spec(home, name) == first
    assert instance.get_dynamic_partitions("training_spec") == [name]
    with pytest.raises(ValueError, match=f"training spec '{name}' already exists with other settings"):
        save_spec(home, TrainingResource(corpus="small", steps=4), name)
    with pytest.raises(dg.Failure, match="no training spec 'nope'"):
        load_spec(home, "nope")
