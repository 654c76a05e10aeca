"""Exclusion audits on a small real corpus: a tiny RETRO trained and deployed, then exclusions of
every scope. `lineage chunk|doc` shows each exclusion covering the chunk (by id, by its text, by
its document); `exclude report ID` shows, for everything one exclusion covers, the set versions,
index builds and deployments that held it and the models that read it as text or as a neighbour
(which may need retraining); after a purge the same audits still answer from the purge record.
Real LanceDB, FAISS, BERT, MLflow and the real CLI; nothing mocked."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
from helpers import tiny_spec
from typer.testing import CliRunner

from retro_ops.catalog import Catalog
from retro_ops.catalog.exclusions import NewExclusion
from retro_ops.cli.main import app as cli
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.features import pipeline
from retro_ops.features.store import FeatureStore
from retro_ops.ids import content_hash, document_id, normalise_text
from retro_ops.lineage.audit import backward
from retro_ops.lineage.views import AuditDB
from retro_ops.retrieval.index.route import publish_retrieval_set
from retro_ops.settings import HOME_ENV, Settings
from retro_ops.workspace import Workspace

SHARED = ("The harbour master keeps a second ledger under the floorboards, and in it every ship "
          "that paid him twice is written in green ink.")
PLANTED = {"ledger_a.txt": SHARED, "ledger_b.txt": " ".join(["sea"] * 64) + "\n" + SHARED}
CHAPTERS = ("chapter_2.txt", "chapter_5.txt", "chapter_6.txt")
runner = CliRunner()


@pytest.fixture(scope="module")
def site(tmp_path_factory, embedder, chunker):
    from retro_ops.serving.deployment import DeploymentHolder
    from retro_ops.training.prepare import prepare_training
    from retro_ops.training.run import train_model

    root = tmp_path_factory.mktemp("report")
    corpus = root / "corpus"
    corpus.mkdir()
    for name in CHAPTERS:
        shutil.copy(CORPORA_DIR / "moby_dick" / name, corpus / name)
    for name, text in PLANTED.items():
        (corpus / name).write_text(text)
    settings = Settings(home=root / "home")
    settings.ensure_dirs()
    ws = Workspace(settings, Catalog.open(settings.catalog_url, home=settings.home),
                   FeatureStore(settings.lancedb_uri), embedder)
    ws.catalog.add_corpus("c", str(corpus))
    pipeline.materialize_corpus(ws.catalog, ws.store, chunker, embedder, "c")
    ws.catalog.create_retrieval_set("c", ["c"])
    publish_retrieval_set(ws.catalog, ws.store, settings.indices_dir, "c", embedder.space)
    model = train_model(ws, prepare_training(ws, replace(tiny_spec(steps=2, retrieval_set="c"),
                                                         corpus="c")), "retro").info
    holder = DeploymentHolder.start(ws, f"model-{model.id}", "c", "test://report")
    holder.close()
    db = AuditDB(ws.catalog, ws.store)
    lineage = backward(db, f"model-{model.id}")
    db.close()
    return {"ws": ws, "model": model, "lineage": lineage, "env": {HOME_ENV: str(settings.home)},
            "corpus": corpus}


def _cli(site, *args):
    result = runner.invoke(cli, [*args], env=site["env"])
    return result


def _json(site, *args):
    result = _cli(site, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _exclude(site, scope: str, target: str, reason: str) -> int:
    [found] = site["ws"].catalog.record_exclusions([NewExclusion(scope, target, reason)], actor="auditor")
    return found


def test_lineage_chunk_shows_every_scope_that_covers_it(site):
    """One chunk of ledger_b: excluded by its text (content hash) and by its document; the chunk
    audit lists both, and the chunk of ledger_a with the same text shows the hash one too."""
    ws = site["ws"]
    docs = {n: document_id(normalise_text(t)) for n, t in PLANTED.items()}
    chunks = ws.store.chunks_of_documents(sorted(docs.values()), ["chunk_id", "doc_id", "content_hash"]).to_pylist()
    shared = [c for c in chunks if c["content_hash"] == content_hash(SHARED)]
    assert {c["doc_id"] for c in shared} == set(docs.values())  # the same text in two documents
    by_hash = _exclude(site, "content_hash", content_hash(SHARED), "bribery ledger")
    by_doc = _exclude(site, "document", docs["ledger_b.txt"], "takedown 3")
    seen = {c["doc_id"]: {e["id"] for e in _json(site, "lineage", "chunk", str(c["chunk_id"]))["exclusions"]}
            for c in shared}
    assert seen == {docs["ledger_a.txt"]: {by_hash}, docs["ledger_b.txt"]: {by_hash, by_doc}}
    report = _json(site, "exclude", "report", str(by_hash))
    assert report["summary"]["chunks_covered"] == 2  # every chunk with that text, in both documents
    assert sorted(c["chunk_id"] for c in report["chunks"]) == sorted(c["chunk_id"] for c in shared)
    assert [e["id"] for e in report["exclusions"]] == [by_hash]
    version = ws.catalog.latest_retrieval_set_version("c")
    assert [v["version_id"] for v in report["retrieval_set_versions"]] == [version.id]


def test_report_of_a_neighbour_chunk_names_the_model_and_its_deployment(site):
    """A chunk the model read as a neighbour: the report lists the set version and the index build
    that held it, the deployment that served it, and the model, which may need retraining."""
    model = site["model"]
    chunk = site["lineage"].lists["neighbour_chunks"][0]
    exclusion = _exclude(site, "chunk", str(chunk["chunk_id"]), "private")
    report = _json(site, "exclude", "report", str(exclusion))
    assert [m["id"] for m in report["models_read_as_neighbour"]] == [model.id]
    assert [d["endpoint"] for d in report["deployments"]] == ["test://report"]
    assert report["index_builds"] and report["retrieval_set_versions"]
    assert report["summary"]["may_need_retraining"] == [model.ref]
    shown = _cli(site, "exclude", "report", str(exclusion))
    assert shown.exit_code == 0 and "may need retraining" in shown.output and model.ref in shown.output


def test_report_of_a_document_names_the_models_trained_on_it(site):
    ws, model = site["ws"], site["model"]
    trained = sorted(ws.catalog.model_training_doc_ids(model.id))
    exclusion = _exclude(site, "document", trained[0], "takedown 4")
    report = _json(site, "exclude", "report", str(exclusion))
    assert [m["id"] for m in report["models_trained_on_it"]] == [model.id]
    assert report["summary"]["chunks_covered"] == len(report["chunks"]) > 0
    assert model.ref in report["summary"]["may_need_retraining"]


def test_unknown_exclusion_is_a_one_line_error(site):
    result = _cli(site, "exclude", "report", "999")
    assert result.exit_code == 2 and "no exclusion 999" in result.output


def test_after_a_purge_the_audits_answer_from_the_purge_record(site):
    """The document's chunks and memberships are gone from LanceDB; `lineage doc` (by its path,
    now kept as a hash) and `exclude report` still name its chunks, the set version that held it,
    the model that read it and the purge."""
    ws, model = site["ws"], site["model"]
    trained = sorted(ws.catalog.model_training_doc_ids(model.id))
    before = _json(site, "lineage", "doc", trained[-1])[0]
    source = before["summary"]["sources"][0]
    purged = _json(site, "exclude", "doc", source, "--purge", "--reason", "erasure request 9")
    assert [p["doc_id"] for p in purged["purges"]] == [trained[-1]]
    [after] = _json(site, "lineage", "doc", source)
    assert after["summary"]["doc_id"] == trained[-1]
    assert after["chunks"] == before["chunks"]
    held = {v["version_id"] for v in before["retrieval_set_versions"]}
    assert held <= {v["version_id"] for v in after["retrieval_set_versions"]}
    assert [p["id"] for p in after["purges"]] == [purged["purges"][0]["id"]]
    assert model.ref in after["summary"]["may_need_retraining"]
    [exclusion] = [e for e in after["exclusions"] if e["policy"] == "purge"]
    report = _json(site, "exclude", "report", str(exclusion["id"]))
    assert [m["id"] for m in report["models_trained_on_it"]] == [model.id]
    assert report["summary"]["chunks_covered"] == len(before["chunks"])
    revoked = _cli(site, "exclude", "revoke", str(exclusion["id"]), "--reason", "changed my mind")
    assert revoked.exit_code == 2 and "belongs to a purge" in revoked.output  # erased for good
