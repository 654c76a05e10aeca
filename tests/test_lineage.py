"""Lineage audits after a real small pipeline: two corpora (`a`, the training text, changed
between two versions by a rename, a removal and two additions; `b`, the retrieval set `lib`),
two tiny RETRO models (one per version of `a`), a second set `both` and real deployments.
Real LanceDB, FAISS, BERT, MLflow and the real CLI; nothing mocked."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
import time
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import tiny_spec
from typer.testing import CliRunner

from retro_ops.catalog import Catalog
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.errors import AuditLimitError, LineageError, ReadOnlyQueryError
from retro_ops.features import pipeline
from retro_ops.features.store import FeatureStore
from retro_ops.ids import document_id, normalise_text
from retro_ops.lineage.audit import backward, forward_chunk, forward_document, resolve_documents
from retro_ops.lineage.diff import diff
from retro_ops.lineage.limits import AuditLimits
from retro_ops.lineage.sql import run_sql
from retro_ops.lineage.verify import verify
from retro_ops.lineage.views import AuditDB
from retro_ops.retrieval.index.route import publish_retrieval_set
from retro_ops.settings import Settings
from retro_ops.training.data import split_documents
from retro_ops.workspace import Workspace

MOBY = CORPORA_DIR / "moby_dick"
A_V1 = ["chapter_38.txt", "chapter_23.txt", "chapter_131.txt", "chapter_111.txt"]
A_ADDED = ["chapter_69.txt", "chapter_43.txt"]
B = ["chapter_30.txt", "chapter_25.txt", "chapter_39.txt", "epilogue.txt", "chapter_97.txt"]
RENAMED = ("chapter_38.txt", "renamed_38.txt")


def _doc_ids(folder: Path) -> dict[str, str]:
    """file name -> doc id, derived from the files on disk (as the readers derive it)."""
    return {p.name: document_id(normalise_text(p.read_text())) for p in sorted(folder.glob("*.txt"))}


def _materialize(ws: Workspace, chunker, corpus: str) -> None:
    pipeline.materialize_corpus(ws.catalog, ws.store, chunker, ws.embedder, corpus)


@pytest.fixture(scope="module")
def site(tmp_path_factory, embedder, chunker):
    from retro_ops.training.prepare import prepare_training
    from retro_ops.training.run import train_model

    root = tmp_path_factory.mktemp("lineage")
    a, b = root / "a", root / "b"
    a.mkdir(), b.mkdir()
    for name in A_V1:
        shutil.copy(MOBY / name, a / name)
    for name in B:
        shutil.copy(MOBY / name, b / name)
    settings = Settings(home=root / "home")
    settings.ensure_dirs()
    ws = Workspace(settings, Catalog.open(settings.catalog_url, home=settings.home),
                   FeatureStore(settings.lancedb_uri), embedder)
    ws.catalog.add_corpus("a", str(a))
    ws.catalog.add_corpus("b", str(b))
    for corpus in ("a", "b"):
        _materialize(ws, chunker, corpus)
    ws.catalog.create_retrieval_set("lib", ["b"])
    publish_retrieval_set(ws.catalog, ws.store, settings.indices_dir, "lib", embedder.space)
    spec = tiny_spec(steps=2, retrieval_set="lib")
    spec = type(spec)(**{**spec.__dict__, "corpus": "a"})
    v1_files = _doc_ids(a)
    m1 = train_model(ws, prepare_training(ws, spec), "retro").info
    # version 2 of `a`: one file renamed, one trained-on file removed, two files added
    trained_1 = set(ws.catalog.model_training_doc_ids(m1.id))
    removed = next(n for n in A_V1 if n != RENAMED[0] and v1_files[n] in trained_1)
    (a / RENAMED[0]).rename(a / RENAMED[1])
    (a / removed).unlink()
    for name in A_ADDED:
        shutil.copy(MOBY / name, a / name)
    v2_files = _doc_ids(a)
    _materialize(ws, chunker, "a")
    m2 = train_model(ws, prepare_training(ws, spec), "retro").info
    ws.catalog.create_retrieval_set("both", ["a", "b"])
    publish_retrieval_set(ws.catalog, ws.store, settings.indices_dir, "both", embedder.space)
    return {"ws": ws, "m1": m1, "m2": m2, "v1_files": v1_files, "v2_files": v2_files,
            "removed": removed, "a": a, "b": b, "root": root}


@pytest.fixture
def db(site):
    engine = AuditDB(site["ws"].catalog, site["ws"].store)
    yield engine
    engine.close()


def _refresh(site, model):
    return site["ws"].catalog.resolve_model(f"model-{model.id}")


def test_training_records_reads_index_build_and_sources(site):
    """What was missing before 0006 is now recorded: the index build queried, the chunks read
    (as text and as neighbours, digest-pinned in LanceDB), and sources per corpus version."""
    from sqlalchemy import select

    from retro_ops.catalog import tables as m
    from retro_ops.training.reads import read_model_reads, reads_digest

    ws, m1 = site["ws"], _refresh(site, site["m1"])
    with ws.catalog.session() as s:
        build = s.get(m.IndexBuild, m1.index_build_id)
        assert build.retrieval_set_version_id == m1.retrieval_set_version_id
        by_version = {v: set(s.scalars(select(m.CorpusVersionSource.source_uri).where(
            m.CorpusVersionSource.corpus_version_id == v))) for v in (m1.corpus_version_id,
                                                                      _refresh(site, site["m2"]).corpus_version_id)}
    assert list(by_version.values()) == [set(site["v1_files"]), set(site["v2_files"])]
    reads = read_model_reads(ws.store, m1.id, m1.reads_lance_version)
    assert reads_digest(reads["train"], reads["neighbour"]) == m1.reads_digest
    assert len(reads["train"]) == m1.n_training_chunks > 0
    assert len(reads["neighbour"]) == m1.n_neighbour_chunks > 0
    lib = ws.store.members(ws.catalog.retrieval_set_version(m1.retrieval_set_version_id).digest,
                           ["chunk_id"]).column("chunk_id").to_pylist()
    assert set(reads["neighbour"].tolist()) <= set(lib)  # retrieved ones only, never self slots
    assert m1.vocabulary_digest and m1.neighbours_key and m1.code_version and m1.tokenizer_id


def test_lineage_is_published_to_the_mlflow_run(site):
    from mlflow import MlflowClient

    from retro_ops.lineage.publish import publish_lineage, summary_rows

    ws, m1 = site["ws"], _refresh(site, site["m1"])
    lineage, url = publish_lineage(ws, m1)
    assert url.endswith(f"/runs/{m1.mlflow_run_id}") and "#/experiments/" in url
    client = MlflowClient(ws.settings.mlflow_tracking_uri)
    (site["root"] / "dl").mkdir(exist_ok=True)
    logged = json.loads(Path(client.download_artifacts(
        m1.mlflow_run_id, "lineage/summary.json", str(site["root"] / "dl"))).read_text())
    assert logged["model_id"] == m1.id and logged["reads_digest"] == m1.reads_digest
    assert ("retrieval_set.retrieval_set", "lib") in summary_rows(lineage.summary)


def test_backward_lists_exactly_the_documents_of_its_corpus_version(site, db):
    """Model 1's documents are the files of version 1 on disk, with their version-1 paths
    (the renamed file under its old name), trained vs held-out as the seeded split says."""
    found = backward(db, f"model-{site['m1'].id}")
    docs = {d["doc_id"]: d for d in found.lists["documents"]}
    expected = {doc_id: name for name, doc_id in site["v1_files"].items()}
    assert set(docs) == set(expected)
    assert {d["sources"] for d in docs.values()} == set(A_V1)
    assert all(docs[d]["sources"] == expected[d] for d in docs)
    texts = {document_id(normalise_text(t)): normalise_text(t)
             for t in (MOBY / n for n in A_V1) for t in [t.read_text()]}
    assert all(d["bytes"] == len(texts[i].encode()) for i, d in docs.items())
    split = split_documents(sorted(expected))
    train, held = split.train, split.heldout
    assert sorted(d for d in docs if docs[d]["role"] == "train") == train
    assert sorted(d for d in docs if docs[d]["role"] == "held-out") == held
    assert sum(d["chunks"] for d in docs.values() if d["role"] == "train") == \
        found.summary["training_chunks"] == len(found.lists["training_chunks"])
    s = found.summary
    assert s["corpus"] == "a" and s["retrieval_set"]["retrieval_set"] == "lib"
    assert s["index_build"]["manifest_sha256"] and s["embedding_space"]["dim"] == 384
    assert s["mlflow_run_id"] and s["mlflow_model_version"] == "1"
    # its neighbours all come from corpus b (the set it trained against), never from a
    b_ids = set(_doc_ids(site["b"]).values())
    assert {n["doc_id"] for n in found.lists["neighbour_chunks"]} <= b_ids
    # version 2 shows the new name, and only it
    v2 = backward(db, f"model-{site['m2'].id}")
    assert {d["sources"] for d in v2.lists["documents"]} == set(site["v2_files"])


def test_forward_document_separates_text_and_neighbour_readers(site, db):
    m1, m2 = site["m1"], site["m2"]
    removed = site["v1_files"][site["removed"]]
    found = forward_document(db, removed)
    assert [r["id"] for r in found.lists["models_trained_on_it"]] == [m1.id]
    assert found.lists["models_read_as_neighbour"] == []
    assert [v["corpus"] for v in found.lists["corpus_versions"]] == ["a"]
    # by path: the file's name relative to its corpus folder resolves to the same document
    assert resolve_documents(db, site["removed"]) == [removed]
    assert resolve_documents(db, str(site["b"] / B[0])) == [_doc_ids(site["b"])[B[0]]]
    with pytest.raises(LineageError, match="no document 'nowhere.txt'"):
        resolve_documents(db, "nowhere.txt")
    # a document of b that model 1 read as a neighbour: a reader, never a trainee
    neighbour = backward(db, f"model-{m1.id}").lists["neighbour_chunks"][0]
    seen = forward_document(db, neighbour["doc_id"])
    assert m1.id in [r["id"] for r in seen.lists["models_read_as_neighbour"]]
    assert seen.lists["models_trained_on_it"] == []
    assert {r["retrieval_set"] for r in seen.lists["retrieval_set_versions"]} == {"lib", "both"}
    chunk = forward_chunk(db, neighbour["chunk_id"])
    assert m1.id in [r["id"] for r in chunk.lists["models_read_as_neighbour"]]
    assert chunk.summary["doc_id"] == neighbour["doc_id"]
    assert chunk.lists["exclusions"] == []
    site["ws"].catalog.add_exclusions([neighbour["chunk_id"]], reason="takedown request 7",
                                      policy="takedown", created_by="test")
    excluded = forward_chunk(db, neighbour["chunk_id"]).lists["exclusions"]
    assert [(e["chunk_id"], e["reason"]) for e in excluded] == [(neighbour["chunk_id"], "takedown request 7")]
    with pytest.raises(LineageError, match="no chunk 12345"):
        forward_chunk(db, 12345)
    assert m2.id not in [r["id"] for r in found.lists["models_trained_on_it"]]


def test_diff_between_models_and_sets_matches_the_files(site, db):
    v1, v2 = site["v1_files"], site["v2_files"]
    train1 = split_documents(sorted(v1.values())).train
    train2 = split_documents(sorted(v2.values())).train
    found = diff(db, f"model-{site['m1'].id}", f"model-{site['m2'].id}")
    assert found.documents_added == sorted(set(train2) - set(train1))
    assert found.documents_removed == sorted(set(train1) - set(train2))
    assert found.chunks_added and found.chunks_removed
    sets = diff(db, "set:lib", "set:both")
    assert sets.documents_added == sorted(v2.values()) and sets.documents_removed == []
    with pytest.raises(LineageError, match="compare two models or two retrieval-set versions"):
        diff(db, "set:lib", f"model-{site['m1'].id}")


def test_deployment_rows_close_on_swap_and_stop_and_show_forward(site, db):
    from retro_ops.serving.deployment import DeploymentHolder

    ws, m2 = site["ws"], site["m2"]
    holder = DeploymentHolder.start(ws, f"model-{m2.id}", "lib", "test://lineage")
    holder.swap("both", None)
    holder.close()
    rows = [d for d in ws.catalog.deployments() if d["endpoint"] == "test://lineage"]
    assert [r["action"] for r in rows] == ["start", "swap"]
    assert rows[0]["ended_at"] == rows[1]["created_at"] and rows[1]["ended_at"] is not None
    added = site["v2_files"][A_ADDED[0]]  # only in `both`: only the swapped-in period could retrieve it
    found = forward_document(db, added)
    assert [(d["retrieval_set"], d["ended_at"] is not None) for d in found.lists["deployments"]] \
        == [("both", True)]
    assert backward(db, f"model-{m2.id}").summary["deployments"] == 2


def test_a_stopped_server_closes_its_deployment_row(site):
    """The real uvicorn server: its lifespan ends the serving period when it stops."""
    import uvicorn

    from retro_ops.serving.app import create_app
    from retro_ops.serving.deployment import DeploymentHolder

    ws = site["ws"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    holder = DeploymentHolder.start(ws, f"model-{site['m1'].id}", "lib", endpoint)
    server = uvicorn.Server(uvicorn.Config(create_app(holder, admin_token=None), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not server.started:
        time.sleep(0.05)
    assert server.started
    [row] = [d for d in ws.catalog.deployments() if d["endpoint"] == endpoint]
    assert row["ended_at"] is None  # serving
    server.should_exit = True
    thread.join(timeout=10)
    [row] = [d for d in ws.catalog.deployments() if d["endpoint"] == endpoint]
    assert row["ended_at"] is not None and row["ended_at"] >= row["created_at"]


def _reads(store, table_name: str, version: int, model_id: int):
    from lancedb.expr import col, lit

    table = store.db.open_table(table_name)
    table.checkout(version)
    return table.search().where((col("model_id") == lit(model_id)).to_sql()).limit(None).to_arrow()


def test_reads_name_their_documents_and_reads_recorded_without_them_audit_the_same(site, db):
    """Each read carries its chunk's document (backward then needs no chunk -> document map);
    reads written before doc ids were (0006's schema, no doc_id column) give the same audit,
    their documents found in the chunks table."""
    import pyarrow as pa

    from retro_ops.features.schemas import CHUNKS

    ws, m1 = site["ws"], _refresh(site, site["m1"])
    reads = _reads(ws.store, "model_reads", m1.reads_lance_version, m1.id)
    chunk_map = ws.store.db.open_table(CHUNKS).search().select(["chunk_id", "doc_id"]).limit(None).to_arrow()
    doc_of = dict(zip(chunk_map.column("chunk_id").to_pylist(), chunk_map.column("doc_id").to_pylist()))
    assert reads.num_rows == m1.n_training_chunks + m1.n_neighbour_chunks
    assert [doc_of[c] for c in reads.column("chunk_id").to_pylist()] == reads.column("doc_id").to_pylist()
    before = backward(db, f"model-{m1.id}").lists
    old = ws.store.db.create_table("model_reads_0006", reads.drop_columns(["doc_id"]))
    assert "doc_id" not in old.schema.names
    pointer = dict(table=m1.reads_table, lance_version=m1.reads_lance_version, digest=m1.reads_digest,
                   n_training_chunks=m1.n_training_chunks, n_neighbour_chunks=m1.n_neighbour_chunks)
    ws.catalog.set_model_reads(m1.id, **{**pointer, "table": "model_reads_0006", "lance_version": old.version})
    try:
        fresh = AuditDB(ws.catalog, ws.store)
        after = backward(fresh, f"model-{m1.id}").lists
        fresh.close()
    finally:
        ws.catalog.set_model_reads(m1.id, **pointer)
    assert after == before and after["training_chunks"] and after["neighbour_chunks"]
    assert all(r["doc_id"] for r in after["training_chunks"] + after["neighbour_chunks"])
    assert isinstance(backward(db, f"model-{m1.id}").tables["documents"], pa.Table)


def test_recording_reads_into_a_table_without_doc_ids_adds_the_column(store):
    """A home whose model_reads predates doc ids: the next model's reads add the column; the
    old rows keep a NULL doc_id, the new ones name their documents (chunk ids unknown to the
    chunks table: NULL, never a wrong document)."""
    import pyarrow as pa

    from retro_ops.features.chunking import Chunk
    from retro_ops.ids import chunk_id
    from retro_ops.training.reads import MODEL_READS, read_model_reads, record_model_reads

    doc = document_id("some text")
    ids = [chunk_id(doc, j) for j in range(3)]
    store.add_chunks([Chunk(ids[j], doc, j, [j], f"t{j}", 0, 0, ids[j + 1] if j < 2 else None)
                      for j in range(3)])
    store.db.create_table(MODEL_READS, pa.table({"model_id": pa.array([1], pa.int64()), "role": ["train"],
                                                 "chunk_id": pa.array([ids[0]], pa.int64())}))
    record = record_model_reads(store, 2, [ids[1], ids[2]], [ids[0], 12345])
    rows = _reads(store, MODEL_READS, record.lance_version, 2)
    named = dict(zip(rows.column("chunk_id").to_pylist(), rows.column("doc_id").to_pylist()))
    assert named == {ids[0]: doc, ids[1]: doc, ids[2]: doc, 12345: None}
    assert _reads(store, MODEL_READS, record.lance_version, 1).column("doc_id").to_pylist() == [None]
    assert read_model_reads(store, 2, record.lance_version)["train"].tolist() == sorted(ids[1:])


def test_a_sigkilled_server_row_is_closed_by_the_next_start(site):
    """A real `retro-ops serve` killed with SIGKILL runs no shutdown code, so its row stays open
    (ended_at NULL) until the next server starts on this home: that one finds the dead server's
    lease unlocked and closes the row. A live holder's row (a lease still locked) stays open."""
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    from retro_ops.serving.deployment import DeploymentHolder, lease_dir

    ws, m1 = site["ws"], site["m1"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in (
        "RETRO_OPS_CATALOG_URL", "RETRO_OPS_LANCEDB_URI", "RETRO_OPS_MLFLOW_URI", "RETRO_OPS_ADMIN_TOKEN")}
    env["RETRO_OPS_HOME"] = str(ws.settings.home)
    server = subprocess.Popen([sys.executable, "-m", "retro_ops.cli.main", "serve", "--model", f"model-{m1.id}",
                               "--set", "lib", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"{endpoint}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        assert server.poll() is None, server.stderr.read().decode()[-2000:]
        alive = DeploymentHolder.start(ws, f"model-{m1.id}", "lib", "test://alive")  # server lives: no reap
        [row] = [d for d in ws.catalog.deployments() if d["endpoint"] == endpoint]
        assert row["ended_at"] is None
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        [row] = [d for d in ws.catalog.deployments() if d["endpoint"] == endpoint]
        assert row["ended_at"] is None  # killed: nothing closed it
        after = DeploymentHolder.start(ws, f"model-{m1.id}", "lib", "test://after-kill")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        server.stderr.close()
    rows = {d["endpoint"]: d for d in ws.catalog.deployments()}
    assert rows[endpoint]["created_at"] <= rows[endpoint]["ended_at"] <= rows["test://after-kill"]["created_at"]
    assert rows["test://alive"]["ended_at"] is None and rows["test://after-kill"]["ended_at"] is None
    assert sorted(p.name for p in lease_dir(ws).glob("*.lease")) == sorted(
        h._lease.path.name for h in (alive, after))  # the dead server's lease is gone
    alive.close()
    after.close()
    assert rows["test://alive"]["id"] not in [d["id"] for d in ws.catalog.deployments() if d["ended_at"] is None]
    assert list(lease_dir(ws).glob("*.lease")) == []


def test_audit_sql_answers_and_refuses_writes_leaving_disk_unchanged(site, db):
    home = site["ws"].settings.home
    rows = run_sql(db, "SELECT count(*) AS n FROM model_reads WHERE role = 'neighbour'").to_pylist()
    assert rows[0]["n"] > 0

    def snapshot():
        return {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(home.rglob("*")) if p.is_file() and not p.name.endswith(("-wal", "-shm"))
                and "mlflow" not in p.parts}

    before = snapshot()
    target = home / "leak.csv"
    for statement, kind in (("DELETE FROM models", "DELETE"), ("DROP TABLE models", "DROP"),
                            (f"ATTACH '{home / 'catalog.db'}' AS c", "ATTACH"),
                            (f"COPY (SELECT * FROM models) TO '{target}'", "COPY"),
                            ("SELECT 1; DELETE FROM models", "exactly one statement")):
        with pytest.raises(ReadOnlyQueryError, match=kind):
            run_sql(AuditDB(site["ws"].catalog, site["ws"].store), statement)
    from retro_ops.errors import AuditQueryError

    with pytest.raises(AuditQueryError, match="Permission|disabled"):  # a SELECT reading a file
        run_sql(AuditDB(site["ws"].catalog, site["ws"].store),
                f"SELECT * FROM read_csv('{home / 'catalog.db'}')")
    assert not target.exists() and snapshot() == before


def _cli(site, monkeypatch, *args, code=0):
    from retro_ops.cli.main import app

    monkeypatch.setenv("RETRO_OPS_HOME", str(site["ws"].settings.home))
    for var in ("RETRO_OPS_CATALOG_URL", "RETRO_OPS_LANCEDB_URI", "RETRO_OPS_MLFLOW_URI"):
        monkeypatch.delenv(var, raising=False)
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result


def test_cli_lineage_model_doc_diff_sql(site, monkeypatch, tmp_path):
    ref = f"retro-ops-retro/{site['m1'].mlflow_model_version}"
    payload = json.loads(_cli(site, monkeypatch, "lineage", "model", ref, "--json",
                              "--csv", str(tmp_path / "m1")).stdout)
    assert payload["summary"]["model"] == ref
    assert len((tmp_path / "m1" / "documents.csv").read_text().splitlines()) == len(A_V1) + 1
    assert (tmp_path / "m1" / "neighbour_chunks.csv").exists()
    doc = json.loads(_cli(site, monkeypatch, "lineage", "doc", site["removed"], "--json").stdout)
    assert [m["model"] for m in doc[0]["models_trained_on_it"]] == [ref]
    d = json.loads(_cli(site, monkeypatch, "lineage", "diff", "set:lib", "set:both", "--json").stdout)
    assert d["summary"]["documents_added"] == len(site["v2_files"])
    _cli(site, monkeypatch, "audit", "sql", "DROP TABLE models", code=2)
    rows = json.loads(_cli(site, monkeypatch, "audit", "sql", "SELECT count(*) AS n FROM models",
                           "--json").stdout)
    assert rows == [{"n": 2}]
    listed = json.loads(_cli(site, monkeypatch, "models", "list", "--json").stdout)
    assert {m["index_build_id"] for m in listed} != {None}


def test_verify_catches_tampered_checkpoint_index_and_cleaned_lancedb_version(site, db, monkeypatch):
    """Clean first; then each tampering is reported as drift (and the CLI exits 1). The LanceDB
    cleanup runs last: it cannot be undone."""
    ref = f"model-{site['m2'].id}"
    assert verify(db, ref).drift == []
    info = _refresh(site, site["m2"])
    for path in (Path(info.checkpoint_dir) / "model.safetensors",
                 Path(site["ws"].catalog.resolved_path(_index_dir(site, info))) / "index.faiss"):
        original = path.read_bytes()
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        try:
            drift = [c.what for c in verify(db, ref).drift]
            assert len(drift) == 1 and drift[0] in ("checkpoint model.safetensors", "index file index.faiss")
            _cli(site, monkeypatch, "lineage", "verify", ref, code=1)
        finally:
            path.write_bytes(original)
    assert verify(db, ref).drift == []
    members = site["ws"].store.db.open_table("retrieval_set_chunks")
    with warnings.catch_warnings():  # "removes every version except the latest": the point here
        warnings.simplefilter("ignore", UserWarning)
        members.optimize(cleanup_older_than=timedelta(0), delete_unverified=True)
    drift = [c.what for c in verify(db, ref).drift]
    assert drift == [f"LanceDB retrieval_set_chunks version "
                     f"{site['ws'].catalog.retrieval_set_version(info.retrieval_set_version_id).members_lance_version}"
                     f" (set version {info.retrieval_set_version_id})"]
    # model 1's corpus files changed since (renamed, removed): verify says so
    old = [c for c in verify(db, f"model-{site['m1'].id}").drift if c.what.startswith("corpus")]
    assert old and "missing" in old[0].detail


def _index_dir(site, info) -> str:
    from sqlalchemy import select

    from retro_ops.catalog import tables as m

    with site["ws"].catalog.session() as s:
        return s.scalar(select(m.IndexBuild.build_dir).where(m.IndexBuild.id == info.index_build_id))


def test_verify_checks_the_disk_refine_sidecars(site, db):
    """A model served from a disk-refined index (the at-scale structure forced onto a small set
    of `a` and `b`): a flipped byte in the vectors or ids mapped beside index.faiss is drift."""
    from retro_ops.retrieval.index.disk_refine import IDS_FILE, VECTORS_FILE
    from retro_ops.retrieval.index.build import IndexConfig
    from retro_ops.retrieval.index.route import index_retrieval_set
    from retro_ops.retrieval.sets import build_retrieval_set_version
    from retro_ops.training.prepare import prepare_training
    from retro_ops.training.run import train_model

    ws = site["ws"]
    ws.catalog.create_retrieval_set("lib_disk", ["a", "b"])
    build_retrieval_set_version(ws.catalog, ws.store, "lib_disk", ws.embedder.space)
    built = index_retrieval_set(ws.catalog, ws.store, ws.settings.indices_dir, "lib_disk",
                                ws.embedder.space.dim,
                                config=IndexConfig(factory="IVF2_HNSW32,PQ48x4fs,DiskRefine"))
    assert set(built.manifest.extra_files) == {VECTORS_FILE, IDS_FILE}, built.manifest.notes
    spec = tiny_spec(steps=2, retrieval_set="lib_disk")
    info = train_model(ws, prepare_training(ws, type(spec)(**{**spec.__dict__, "corpus": "a"})),
                       "retro").info
    ref = f"model-{info.id}"
    report = verify(db, ref)
    assert report.drift == []
    assert {c.what for c in report.checks} >= {f"index sidecar {VECTORS_FILE}", f"index sidecar {IDS_FILE}"}
    folder = Path(ws.catalog.resolved_path(_index_dir(site, _refresh(site, info))))
    for name in (VECTORS_FILE, IDS_FILE):
        path = folder / name
        original = path.read_bytes()
        middle = len(original) // 2
        path.write_bytes(original[:middle] + bytes([original[middle] ^ 1]) + original[middle + 1:])
        try:
            drift = verify(db, ref).drift
            assert [c.what for c in drift] == [f"index sidecar {name}"]
            assert "differs from the recorded" in drift[0].detail
        finally:
            path.write_bytes(original)
    assert verify(db, ref).drift == []


CROSS_JOIN = "SELECT count(*) AS n FROM range(1000000) a, range(1000000) b"  # 10^12 rows
STRING_AGG = "SELECT length(string_agg(repeat('abcdefgh', 1000), ',')) AS n FROM range(50000)"  # 400 MB


def test_audit_sql_stops_a_cross_join_at_the_statement_timeout(catalog, store):
    """A 10^12-row cross join is interrupted at the 0.5 s timeout (a watchdog interrupts it at 15 s
    should the timeout not, so the test cannot hang), and the connection answers next."""
    db = AuditDB(catalog, store, AuditLimits(timeout_s=0.5))
    watchdog = threading.Timer(15, db.con.interrupt)
    watchdog.start()
    started = time.perf_counter()
    try:
        with pytest.raises(AuditLimitError, match=r"^audit query stopped at the statement timeout of "
                                                  r"0\.5 s \(audit sql --timeout\)$"):
            run_sql(db, CROSS_JOIN)
    finally:
        watchdog.cancel()
    assert 0.5 <= time.perf_counter() - started < 2.5
    assert run_sql(db, "SELECT 42 AS n").to_pylist() == [{"n": 42}]
    db.close()


def test_audit_sql_memory_is_capped_and_threads_bounded(catalog, store):
    """`string_agg` of repeated text (400 MB unbounded) fails at a 64 MiB limit naming it, with no
    file spilled; by default the connection has 2 GiB, 2 threads and no temp folder."""
    db = AuditDB(catalog, store, AuditLimits(memory_limit_mib=64, threads=1))
    with pytest.raises(AuditLimitError, match=r"^audit query over the memory limit of 64 MiB \(audit sql "
                                              r"--memory-limit-mib\): failed to allocate [^\n]+$"):
        run_sql(db, STRING_AGG)
    settings = "SELECT current_setting('memory_limit') AS m, current_setting('threads') AS t, " \
               "current_setting('temp_directory') AS d"
    assert run_sql(db, settings).to_pylist() == [{"m": "64.0 MiB", "t": 1, "d": ""}]
    db.close()
    default = AuditDB(catalog, store)
    assert default.rows(settings) == [{"m": "2.0 GiB", "t": 2, "d": ""}]
    default.close()


def test_cli_audit_sql_limits_fail_with_one_line_naming_the_limit(home):
    from retro_ops.cli.main import app

    def sql(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["audit", "sql", *args])
        return result.exit_code, result.output.strip()

    started = time.perf_counter()
    assert sql("--timeout", "0.5", CROSS_JOIN) == (
        2, "error: audit query stopped at the statement timeout of 0.5 s (audit sql --timeout)")
    assert time.perf_counter() - started < 10
    code, output = sql("--memory-limit-mib", "64", STRING_AGG)
    assert code == 2 and "\n" not in output
    assert output.startswith("error: audit query over the memory limit of 64 MiB (audit sql --memory-limit-mib): ")
    code, output = sql("--threads", "1", "--json", "SELECT current_setting('threads') AS t")
    assert code == 0 and json.loads(output) == [{"t": 1}]
