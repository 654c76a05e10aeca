"""A home is relocatable: copied elsewhere (with its corpus) and the original deleted, it still
retrieves, loads and serves its model, and re-reads its corpus as unchanged; no API answer and
no catalog row holds an absolute host path. Real stores, real BERT, real CLI, real uvicorn."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import requests
import uvicorn
from helpers import tiny_spec
from sqlalchemy import func, select

from retro_ops.catalog import Catalog
from retro_ops.catalog import tables as m
from retro_ops.corpus import Document
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.features import pipeline
from retro_ops.features.store import FeatureStore
from retro_ops.retrieval.index.route import publish_retrieval_set
from retro_ops.settings import Settings, resolve_stored, stored_path
from retro_ops.workspace import Workspace

CHAPTERS = ["chapter_2.txt", "chapter_5.txt", "chapter_6.txt", "chapter_8.txt", "chapter_11.txt"]
NESTED = "part_two/chapter_12.txt"  # a source below a subfolder keeps its relative path
QUERY = (CORPORA_DIR / "moby_dick" / "chapter_2.txt").read_text()[:380]


def _build_site(root: Path, embedder, chunker) -> Path:
    """root/corpus (6 real chapters) and root/home with chunks, embeddings, set `small`, its
    published index and a tiny trained RETRO: everything a home records."""
    from retro_ops.training.prepare import prepare_training
    from retro_ops.training.run import train_model

    corpus = root / "corpus"
    (corpus / "part_two").mkdir(parents=True)
    for name in CHAPTERS:
        shutil.copy(CORPORA_DIR / "moby_dick" / name, corpus / name)
    shutil.copy(CORPORA_DIR / "moby_dick" / "chapter_12.txt", corpus / NESTED)
    settings = Settings(home=root / "home")
    settings.ensure_dirs()
    ws = Workspace(settings, Catalog.open(settings.catalog_url, home=settings.home),
                   FeatureStore(settings.lancedb_uri), embedder)
    ws.catalog.add_corpus("small", str(corpus))
    pipeline.materialize_corpus(ws.catalog, ws.store, chunker, embedder, "small")
    ws.catalog.create_retrieval_set("small", ["small"])
    publish_retrieval_set(ws.catalog, ws.store, settings.indices_dir, "small", embedder.space)
    train_model(ws, prepare_training(ws, tiny_spec(steps=2)), "retro")
    ws.catalog.close()
    return settings.home


@pytest.fixture(scope="module")
def moved(tmp_path_factory, embedder, chunker):
    """(copied home, the tmp root both sites live under): built at `before/`, copied to
    `after/`, then `before/` deleted so nothing can silently read the original."""
    top = tmp_path_factory.mktemp("relocate")
    _build_site(top / "before", embedder, chunker)
    shutil.copytree(top / "before", top / "after", symlinks=True)
    shutil.rmtree(top / "before")
    return top / "after" / "home", top


def _cli(home: Path, monkeypatch: pytest.MonkeyPatch, *args: str):
    """The real `retro-ops` command, in-process (as tests/test_cli.py runs it) on the copy."""
    from typer.testing import CliRunner

    from retro_ops.cli.main import app

    monkeypatch.setenv("RETRO_OPS_HOME", str(home))
    for var in ("RETRO_OPS_CATALOG_URL", "RETRO_OPS_LANCEDB_URI", "RETRO_OPS_MLFLOW_URI"):
        monkeypatch.delenv(var, raising=False)
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _assert_no_host_path(payload, top: Path) -> None:
    leaks = [s for s in _strings(payload) if s.startswith("/") or str(top) in s]
    assert not leaks, f"absolute host paths in an API answer: {leaks[:3]}"


def test_catalog_of_a_home_holds_no_absolute_path_under_it(moved):
    """No byte the home wrote (catalog SQLite and WAL, LanceDB, indices, checkpoints, neighbour
    cache) names the site's tmp root, except MLflow's own store: checkpoints, index builds and
    the corpus are recorded relative to the home, documents relative to the corpus."""
    home, top = moved
    files = [p for p in home.rglob("*") if p.is_file() and "mlflow" not in p.relative_to(home).parts]
    assert {"catalog.db", "lancedb", "indices", "checkpoints", "neighbours"} <= \
        {p.relative_to(home).parts[0] for p in files}
    leaked = [str(p.relative_to(home)) for p in files if str(top).encode() in p.read_bytes()]
    assert not leaked, f"files naming the original location {top}: {leaked}"
    with Catalog.open(f"sqlite:///{home / 'catalog.db'}").session() as s:  # raw rows, no home
        assert s.scalar(select(m.Corpus.source_uri)) == "../corpus"
        assert s.scalar(select(m.ModelRecord.checkpoint_dir)).startswith("checkpoints/retro-")
        assert s.scalar(select(m.IndexBuild.build_dir)).startswith("indices/small/")
        assert NESTED in set(s.scalars(select(m.DocumentSource.source_uri)))


def test_cli_retrieve_and_remateralize_on_the_copy(moved, monkeypatch):
    """`retro-ops retrieve` answers from the copy with corpus-relative sources; materializing the
    corpus again (through Dagster, on the copy's own instance) finds nothing new."""
    home, top = moved
    answer = _cli(home, monkeypatch, "retrieve", QUERY, "--set", "small", "-k", "3", "--json")
    assert answer["neighbours"][0]["source"] == "chapter_2.txt"  # its own text ranks first
    assert {n["source"] for n in answer["neighbours"]} <= set(CHAPTERS) | {NESTED}
    _assert_no_host_path(answer, top)
    listed = _cli(home, monkeypatch, "corpus", "list", "--json")
    assert listed[0]["source_uri"] == str(top / "after" / "corpus")
    again = _cli(home, monkeypatch, "materialize", "--corpus", "small", "--select", "documents", "--json")
    [documents] = again[0]["assets"]
    assert (documents["metadata"]["documents"], documents["metadata"]["new_documents"]) == (6, 0)
    # dagster.yaml is regenerated from settings and names no folder: storage follows DAGSTER_HOME
    assert str(top) not in (home / "dagster" / "dagster.yaml").read_text()
    assert dg.DagsterInstance.from_config(str(home / "dagster")).get_run_by_id(again[0]["run_id"])
    with Catalog.open(f"sqlite:///{home / 'catalog.db'}").session() as s:
        versions = list(s.scalars(select(m.CorpusVersion.digest).order_by(m.CorpusVersion.id)))
        n_sources = s.scalar(select(func.count()).select_from(m.DocumentSource))
    assert len(versions) == 1 and n_sources == 6  # the same documents and sources: the version it had


@pytest.fixture(scope="module")
def server(moved, embedder):
    home, _ = moved
    from retro_ops.serving.app import create_app
    from retro_ops.serving.deployment import DeploymentHolder

    settings = Settings(home=home)
    ws = Workspace(settings, Catalog.open(settings.catalog_url, home=home),
                   FeatureStore(settings.lancedb_uri), embedder)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    holder = DeploymentHolder.start(ws, "retro", "small", f"http://127.0.0.1:{port}")
    uv = uvicorn.Server(uvicorn.Config(create_app(holder, admin_token=None), host="127.0.0.1",
                                       port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 30
    while time.monotonic() < deadline and not uv.started:
        time.sleep(0.05)
    yield base, holder
    uv.should_exit = True
    thread.join(timeout=10)


def test_copied_home_serves_its_model_with_no_absolute_paths(moved, server):
    """The model loads from the copy's checkpoints and generates; /retrieve, /generate, /health
    name sources relative to the corpus and never a host path."""
    home, top = moved
    base, holder = server
    assert Path(holder.current.model_info.checkpoint_dir).is_relative_to(home / "checkpoints")
    retrieved = requests.post(f"{base}/retrieve", json={"text": QUERY, "k": 3}, timeout=60)
    assert retrieved.status_code == 200 and retrieved.json()["neighbours"]
    _assert_no_host_path(retrieved.json(), top)
    generated = requests.post(f"{base}/generate", json={"prompt": QUERY, "max_new_tokens": 3, "seed": 1},
                              timeout=120)
    assert generated.status_code == 200, generated.text
    body = generated.json()
    assert body["new_tokens"] == 3
    sources = [n["source"] for c in body["chunks"] for n in c["neighbours"]]
    assert sources and set(sources) <= set(CHAPTERS) | {NESTED}
    _assert_no_host_path(body, top)
    _assert_no_host_path(requests.get(f"{base}/health", timeout=10).json(), top)


def test_mlflow_runs_of_the_copy_write_under_the_copy(moved, tmp_path: Path):
    """MLflow recorded the original's absolute artifact folder for its experiment; a run logged
    from the copy writes its artifacts under the copy and never re-creates the deleted original."""
    from retro_ops.catalog.mlflow_runs import EXPERIMENT, Tracking

    home, top = moved
    tracking = Tracking(Settings(home=home))
    old = tracking.client.get_experiment_by_name(EXPERIMENT)
    assert old.artifact_location.startswith((top / "before").as_uri())  # MLflow's own limit
    run_id = tracking.start_run("after-the-move", {})
    (tmp_path / "report.json").write_text("{}")
    uri = tracking.log_artifacts(run_id, tmp_path, "evaluation")
    tracking.finish(run_id)
    assert uri.startswith((home / "mlflow" / "artifacts").as_uri())
    assert not (top / "before").exists()
    moved_name = tracking.client.get_experiment(tracking.client.get_run(run_id).info.experiment_id).name
    assert moved_name.startswith(f"{EXPERIMENT}-")
    tracking.finish(tracking.start_run("again", {}))  # the copy's experiment again, not a third
    names = [e.name for e in tracking.client.search_experiments() if e.name.startswith(EXPERIMENT)]
    assert sorted(names) == [EXPERIMENT, moved_name]


def test_pyfunc_copied_with_the_home_reads_the_copy(moved, monkeypatch):
    """The MLflow pyfunc records the home it was logged from; loaded from the copy's artifact
    folder it follows RETRO_OPS_HOME to the copy, and without it refuses the deleted original
    instead of re-creating an empty home there."""
    import mlflow.pyfunc
    import pandas as pd

    home, top = moved
    [folder] = (home / "mlflow" / "artifacts").glob("retro-ops/*/artifacts/model")
    monkeypatch.delenv("RETRO_OPS_HOME", raising=False)
    with pytest.raises(FileNotFoundError, match=r"retro-ops home .*/before/home does not exist"):
        mlflow.pyfunc.load_model(str(folder))
    monkeypatch.setenv("RETRO_OPS_HOME", str(home))
    answer = mlflow.pyfunc.load_model(str(folder)).predict(
        pd.DataFrame({"prompt": [QUERY]}), params={"retrieval_set": "small", "max_new_tokens": 2})
    assert answer.iloc[0]["retrieval_set"] == "small" and json.loads(answer.iloc[0]["neighbours"])
    assert not (top / "before").exists()


def test_old_absolute_rows_still_read_and_never_leak(tmp_path: Path):
    """Rows an older retro-ops recorded absolute keep working under a home-aware catalog; a
    source outside its corpus root (a link target, a moved corpus) shows only its file name;
    re-recording the same documents adds no relative twin of an absolute source row."""
    home, corpus = tmp_path / "home", tmp_path / "corpus"
    corpus.mkdir()
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    old = Catalog.open(url)  # no home: stores what it is given, as before
    old.add_corpus("c", str(corpus))
    docs = [Document("d1", "one", [f"{corpus}/a.txt", f"{corpus}/sub/b.jsonl#L3"]),
            Document("d2", "two", ["/etc/hostname"])]
    old.record_corpus_version("c", docs, "v1", documents_lance_version=1)
    old.record_model(training_doc_ids=["d1"], kind="retro", key="k" * 64, checkpoint_dir="/old/ckpt",
                     weights_sha256="a" * 64, config={}, corpus_version_id=1, tokenizer_id="t",
                     code_version="c")
    new = Catalog.open(url, home=home)
    assert new.get_corpus("c").source_uri == str(corpus)
    assert new.add_corpus("c", str(corpus)).name == "c"  # same place, now spelled relative: no error
    assert new.resolve_model("retro").checkpoint_dir == "/old/ckpt"
    assert new.document_sources("d1") == ["a.txt", "sub/b.jsonl#L3"]
    assert new.document_sources("d2") == ["hostname"]  # never /etc/hostname
    new.record_corpus_version("c", docs, "v1", documents_lance_version=2)
    assert new.count(m.DocumentSource) == 3


def test_corpus_moved_elsewhere_is_pointed_at_its_new_place(home: Settings, tmp_path: Path, monkeypatch):
    """A corpus outside the checkout is recorded absolute (it does not move with the home); when
    it lies elsewhere after a move, materializing names the missing folder, and `retro-ops corpus
    move` points the corpus there: the same documents, nothing new, no new source rows."""
    from typer.testing import CliRunner

    from retro_ops.cli.main import app
    from retro_ops.errors import CorpusError, UnknownCorpusError

    shared = tmp_path.parent / f"{tmp_path.name}-shared"  # beside the test folder, not under it
    (shared / "corpus" / "part_two").mkdir(parents=True)
    shutil.copy(CORPORA_DIR / "moby_dick" / "chapter_2.txt", shared / "corpus" / "chapter_2.txt")
    shutil.copy(CORPORA_DIR / "moby_dick" / "chapter_12.txt", shared / "corpus" / NESTED)
    catalog = Catalog.open(home.catalog_url, home=home.home)
    store = FeatureStore(home.lancedb_uri)
    catalog.add_corpus("shared", str(shared / "corpus"))
    first = pipeline.ingest_documents(catalog, store, "shared")
    shutil.move(shared / "corpus", tmp_path / "moved_corpus")
    shutil.rmtree(shared)
    with pytest.raises(CorpusError, match=rf"{shared}/corpus: no such file or folder"):
        pipeline.ingest_documents(catalog, store, "shared")
    with pytest.raises(UnknownCorpusError, match="unknown corpus 'nope'"):
        catalog.move_corpus("nope", str(tmp_path))
    monkeypatch.setenv("RETRO_OPS_HOME", str(home.home))
    moved_to = CliRunner().invoke(app, ["corpus", "move", "shared", str(tmp_path / "moved_corpus"), "--json"])
    assert moved_to.exit_code == 0, moved_to.output
    assert json.loads(moved_to.stdout) == {"name": "shared", "files": 2,
                                           "source_uri": str(tmp_path / "moved_corpus")}
    again = pipeline.ingest_documents(catalog, store, "shared")
    assert (again.new_documents, again.corpus_version.digest) == (0, first.corpus_version.digest)
    assert catalog.count(m.DocumentSource) == 2
    assert sorted(s for d in catalog.corpus_doc_ids(again.corpus_version.id)
                  for s in catalog.document_sources(d)) == ["chapter_2.txt", NESTED]
    missing = CliRunner().invoke(app, ["corpus", "move", "shared", str(tmp_path / "gone")])
    assert missing.exit_code == 2 and "gone: no such file or folder" in missing.output


def test_stored_paths_are_home_relative_only_where_they_move_with_it(tmp_path: Path):
    home = (tmp_path / "site" / ".retro_ops").resolve()
    inside = stored_path(home / "checkpoints" / "x", home)
    assert inside == "checkpoints/x" and resolve_stored(inside, home) == str(home / "checkpoints/x")
    beside = stored_path(tmp_path / "site" / "data" / "*.txt", home, within=home.parent)
    assert beside == "../data/*.txt"
    assert resolve_stored(beside, tmp_path / "copy" / ".retro_ops") == str(tmp_path / "copy/data/*.txt")
    assert stored_path("/srv/shared/wiki", home, within=home.parent) == "/srv/shared/wiki"
    assert stored_path("/srv/x", Path("/home"), within=Path("/")) == "/srv/x"  # never relative to /
    assert resolve_stored("/already/absolute", home) == "/already/absolute"
