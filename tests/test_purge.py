"""Purge (erasure) on a small real corpus: a document with distinctive sentences is chunked,
embedded, indexed, scored, trained on (a tiny RETRO) and its lineage published to MLflow; then
`retro-ops exclude doc --purge` erases it. Afterwards no file under the home holds any of its
sentences (LanceDB data, _versions/ and _transactions/ included), retrieval never returns it,
`lineage verify` names the purge, and re-materializing the unchanged folder refuses it. Later
runs (a Dagster materialization of the folder that still holds the file, a sensor tick) write
neither its name, its path nor its text, Dagster's storage included; LanceDB is checked version
by version and file by file, a tag that pinned an old version is gone and its snapshot recorded
as no longer reproducible. Real LanceDB, FAISS, BERT, MLflow, Dagster and the real CLI; nothing
mocked."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from lancedb.index import BTree
from erasure_checks import PurgedRows, found_in_files, index_uuids, lance_holdings, lance_leftovers, sensor_tick
from helpers import tiny_spec
from typer.testing import CliRunner

from retro_ops.catalog import Catalog
from retro_ops.cli.main import app as cli
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.erasure.store import snapshot_document
from retro_ops.features import pipeline
from retro_ops.features.store import FeatureStore
from retro_ops.features.schemas import CHUNKS
from retro_ops.ids import document_id, normalise_text
from retro_ops.retrieval.index.build import IndexConfig
from retro_ops.retrieval.index.publish import current_build, index_root, read_manifest
from retro_ops.retrieval.index.route import index_retrieval_set, publish_retrieval_set
from retro_ops.settings import HOME_ENV, Settings
from retro_ops.workspace import Workspace

#: Fragments no other document holds: each must be found under the home before, nowhere after.
NEEDLES = ("Quarrington-Vasquez", "QX-4471-ZED-0093", "Lantern Cove Road", "lighthouse turnips")
SECRET = ("Zebulon Quarrington-Vasquez was admitted to ward nineteen on the fourth of Thermidor "
          "with a fractured clavicle and a borrowed umbrella. His confidential insurance number is "
          "QX-4471-ZED-0093 and his sister Marguerite lives at 17 Lantern Cove Road, behind the "
          "cannery. The night nurse recorded that he hummed the overture of an unfinished opera "
          "about lighthouse turnips until dawn, and asked for marmalade twice.")
SECRET_FILE = "patient_record_zq.txt"
CHAPTERS = ("chapter_2.txt", "chapter_5.txt", "chapter_6.txt")
OTHER_CHAPTERS = ("chapter_8.txt", "chapter_11.txt")
CHOSEN_FACTORY = "IDMap,SQ8"
REASON = "erasure request 17"
SNAPSHOT_TAG = "release-1"  # a user's tag on the chunks table, pinning the version before the purge
runner = CliRunner()


def _secret_text() -> str:
    """The secret document, nudged (a trailing note) until the seeded split trains on it."""
    from retro_ops.training.data import split_documents

    others = [document_id(normalise_text((CORPORA_DIR / "moby_dick" / c).read_text())) for c in CHAPTERS]
    for n in range(50):
        text = SECRET + (f" Note {n}." if n else "")
        train = split_documents(sorted(others + [document_id(normalise_text(text))])).train
        if document_id(normalise_text(text)) in train:
            return text
    raise AssertionError("no variant of the secret document lands in the training split")


def _found(home: Path) -> dict[str, set[str]]:
    """needle -> files under the home (relative) whose bytes contain it."""
    found: dict[str, set[str]] = {n: set() for n in NEEDLES}
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for needle in NEEDLES:
                if needle.encode() in data:
                    found[needle].add(str(path.relative_to(home)))
    return found


def _corpus(root: Path) -> Path:
    folder = root / "corpus"
    folder.mkdir()
    for name in CHAPTERS:
        shutil.copy(CORPORA_DIR / "moby_dick" / name, folder / name)
    (folder / SECRET_FILE).write_text(_secret_text())
    return folder


def _workspace(root: Path, embedder, chunker) -> Workspace:
    settings = Settings(home=root / "home")
    settings.ensure_dirs()
    ws = Workspace(settings, Catalog.open(settings.catalog_url, home=settings.home),
                   FeatureStore(settings.lancedb_uri), embedder)
    ws.catalog.add_corpus("c", str(_corpus(root)))
    pipeline.materialize_corpus(ws.catalog, ws.store, chunker, embedder, "c")
    ws.catalog.create_retrieval_set("c", ["c"])
    publish_retrieval_set(ws.catalog, ws.store, settings.indices_dir, "c", embedder.space)
    return ws


@pytest.fixture(scope="module")
def site(tmp_path_factory, pristine, embedder, chunker):
    from retro_ops.governance.policy import apply_policy, load_policy
    from retro_ops.lineage.publish import publish_lineage
    from retro_ops.training.prepare import prepare_training
    from retro_ops.training.run import train_model

    root = tmp_path_factory.mktemp("purge")
    shutil.copytree(pristine, root, dirs_exist_ok=True)  # homes are relocatable: the same start
    settings = Settings(home=root / "home")
    ws = Workspace(settings, Catalog.open(settings.catalog_url, home=settings.home),
                   FeatureStore(settings.lancedb_uri), embedder)
    # the set is served by an index of the user's choice, which the purge's rebuild must keep
    index_retrieval_set(ws.catalog, ws.store, ws.settings.indices_dir, "c", embedder.dim,
                        config=IndexConfig(factory=CHOSEN_FACTORY))
    doc_id = document_id(normalise_text((root / "corpus" / SECRET_FILE).read_text()))
    (root / "policy.toml").write_text('name = "pii"\n[[rule]]\nscorer = "pii"\nthreshold = 1.0\n')
    apply_policy(ws.catalog, ws.store, load_policy(root / "policy.toml"), "c", actor="test")  # scores
    spec = replace(tiny_spec(steps=2, retrieval_set="c"), corpus="c")
    model = train_model(ws, prepare_training(ws, spec), "retro").info
    publish_lineage(ws, model)
    # a second corpus, set and model that never saw the secret document
    other = root / "other"
    other.mkdir()
    for name in OTHER_CHAPTERS:
        shutil.copy(CORPORA_DIR / "moby_dick" / name, other / name)
    ws.catalog.add_corpus("o", str(other))
    pipeline.materialize_corpus(ws.catalog, ws.store, chunker, embedder, "o")
    ws.catalog.create_retrieval_set("o", ["o"])
    publish_retrieval_set(ws.catalog, ws.store, ws.settings.indices_dir, "o", embedder.space)
    bystander = train_model(ws, prepare_training(ws, replace(spec, corpus="o", retrieval_set="o")),
                            "retro").info
    chunks = ws.store.db.open_table(CHUNKS)
    chunks.tags.create(SNAPSHOT_TAG, chunks.version)
    chunks.create_index("doc_id", config=BTree())  # a user's index: it holds the document's id
    snap = snapshot_document(ws.catalog, ws.store, doc_id)
    rows = PurgedRows(doc_id, [c[0] for c in snap.chunks], sorted({c[2] for c in snap.chunks}))
    before = _found(ws.settings.home)
    return {"ws": ws, "root": root, "doc_id": doc_id, "model": model, "before": before,
            "bystander": bystander, "env": {HOME_ENV: str(ws.settings.home)},
            "rows": rows, "held": lance_holdings(ws.store, rows), "indices": index_uuids(ws.store),
            "tagged": ws.store.tags(CHUNKS)[SNAPSHOT_TAG],
            "name_before": found_in_files(ws.settings.home, {"name": SECRET_FILE})["name"]}


def _cli(site, *args):
    return runner.invoke(cli, list(args), env=site["env"])


@pytest.fixture(scope="module")
def purged(site):
    result = _cli(site, "exclude", "doc", SECRET_FILE, "--purge", "--reason", REASON,
                  "--actor", "dpo", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_search_finds_the_sentences_before_the_purge(site):
    """The byte search can fail: before the purge it finds every fragment in the LanceDB tables
    that hold text (documents, chunks, retrieval-set members)."""
    for needle, files in site["before"].items():
        tables = {f.split("/")[1] for f in files if f.startswith("lancedb/")}
        assert {"documents.lance", "chunks.lance", "retrieval_set_chunks.lance"} <= tables, (needle, files)
    assert site["doc_id"] in site["ws"].catalog.model_training_doc_ids(site["model"].id)


def test_no_file_under_the_home_holds_the_text_after_a_purge(site, purged):
    home = site["ws"].settings.home
    assert _found(home) == {n: set() for n in NEEDLES}
    # nor its path: the catalog and MLflow lineage keep hashes, not the file name
    leaks = [str(p.relative_to(home)) for p in home.rglob("*")
             if p.is_file() and SECRET_FILE.encode() in p.read_bytes()]
    assert leaks == []
    [p] = purged["purges"]
    assert p["doc_id"] == site["doc_id"] and p["status"] == "done"
    assert purged["rows_deleted"]["documents"] == 1 and purged["rows_deleted"]["chunks"] >= 2
    assert purged["orphan_hashes"] >= 2 and purged["index_builds_removed"]
    assert purged["rows_deleted"]["chunk_scores"] == purged["orphan_hashes"]  # scored, then erased
    assert [s["retrieval_set"] for s in purged["sets_rebuilt"]] == ["c"]  # not "o"
    # corpus c has a new version without it at once (training and set builds stop naming it)
    [version_id] = purged["corpus_versions"]
    assert site["ws"].catalog.latest_corpus_version("c").id == version_id
    assert site["doc_id"] not in site["ws"].catalog.corpus_doc_ids(version_id)
    assert purged["neighbour_caches_removed"]  # the model's cached neighbours held its tokens
    assert purged["corpus_files_left"] == [str(site["root"] / "corpus" / SECRET_FILE)]
    affected = {m["model_id"]: m["read_as"] for m in purged["models_affected"]}
    assert "text" in affected[site["model"].id] and site["bystander"].id not in affected


def test_the_rebuilt_index_keeps_the_factory_it_was_built_with(site, purged):
    """Not the size-chosen default (exact search for a set this small): the factory the set's
    published index had."""
    root = index_root(site["ws"].settings.indices_dir, "c")
    manifest = read_manifest(root, current_build(root)[0])
    assert manifest.factory == CHOSEN_FACTORY
    assert manifest.route == "incremental"  # same config, same build key: the purged ids removed
    assert manifest.retrieval_set_version_id == site["ws"].catalog.latest_retrieval_set_version("c").id
    assert any(r["retrieval_set"] == "c" and r["published"] for r in purged["sets_rebuilt"])


def test_retrieval_never_returns_the_purged_document(site, purged):
    ws = site["ws"]
    retriever = ws.retriever("c")
    version = ws.catalog.latest_retrieval_set_version("c")
    assert retriever.version.id == version.id and site["doc_id"] not in set(
        ws.store.members(version.digest, ["doc_id"]).column("doc_id").to_pylist())
    # the index was rebuilt from the new version (not merely filtered at query time)
    assert retriever.manifest.retrieval_set_digest == version.digest
    assert retriever.index.ntotal == version.n_chunks
    for hits in retriever.retrieve(SECRET.split(". "), k=10):
        assert hits and site["doc_id"] not in {h.doc_id for h in hits}


def test_lineage_verify_names_the_purge_and_does_not_crash(site, purged):
    result = _cli(site, "lineage", "verify", f"model-{site['model'].id}", "--json")
    assert result.exit_code == 1, result.output  # drift: its inputs were purged
    report = json.loads(result.stdout)
    purge_id = purged["purges"][0]["id"]
    named = [c for c in report["checks"] if f"purge {purge_id}" in c["detail"] and not c["ok"]]
    assert named and any("no longer reproducible" in c["detail"] for c in named)
    # a model none of whose inputs were purged still verifies; what the purge cleaned up (older
    # LanceDB versions it pinned) is named as such, not reported as unexplained drift
    result = _cli(site, "lineage", "verify", f"model-{site['bystander'].id}", "--json")
    assert result.exit_code == 0, result.output
    checks = json.loads(result.stdout)["checks"]
    assert any(f"removed by purge {purge_id}, which erased none" in c["detail"] for c in checks)
    assert not any(c["what"].startswith("purge ") for c in checks)


def test_rematerializing_refuses_the_purged_document_and_says_why(site, purged):
    """The read issue names the purge and the content hash: not the file (its name can name a
    person) nor the purge's reason (the catalog's purge record keeps that)."""
    ws = site["ws"]
    found = pipeline.ingest_documents(ws.catalog, ws.store, "c")
    [issue] = [i for i in found.issues if site["doc_id"] in str(i)]
    assert str(issue) == (f"skipped: purge {purged['purges'][0]['id']}: document {site['doc_id']} "
                          "(its content hash) was purged; not stored again")
    assert not any(SECRET_FILE in str(i) or REASON in str(i) for i in found.issues)
    assert site["doc_id"] not in ws.catalog.corpus_doc_ids(found.corpus_version.id)
    assert found.documents == len(CHAPTERS) and found.new_documents == 0
    pipeline.chunk_corpus(ws.catalog, ws.store, _chunker(), "c")
    assert _found(ws.settings.home) == {n: set() for n in NEEDLES}


def test_other_issues_of_a_file_only_purged_documents_came_from_lose_its_path(tmp_path):
    """A repaired byte in a purged text file, a bad line in a JSON-lines file whose one document
    was purged: their issues name `purged:<sha256 prefix>` of the file, not the file; an issue of a
    file that still gives a document keeps its path."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "secret_zq.txt").write_bytes(b"secret text\x00 of a person")
    (folder / "mixed_zq.jsonl").write_text('{"text": "a secret line"}\n{bad\n')
    (folder / "kept.jsonl").write_text('{"text": "kept text"}\n{bad\n')
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}", home=tmp_path)
    catalog.add_corpus("p", str(folder))
    for text in ("secret text of a person", "a secret line"):
        catalog.begin_purge(document_id(normalise_text(text)), reason="erasure request 6", actor="dpo",
                            source_uris=[], chunks=[], held_by={})
    found = pipeline.ingest_documents(catalog, FeatureStore(str(tmp_path / "lancedb")), "p")
    issues = sorted(str(i) for i in found.issues)
    assert not [i for i in issues if "_zq" in i or "erasure request" in i], issues
    assert sum(i.startswith("skipped: purge ") for i in issues) == 2 and found.documents == 1
    assert sum(": purged:" in i for i in issues) == 2  # the NUL byte, the bad line
    assert any(i.startswith(f"skipped: {folder / 'kept.jsonl'}:2") for i in issues)
    catalog.close()


@pytest.fixture(scope="module")
def later_runs(site, purged):
    """After the purge, the file still in the corpus folder: one Dagster materialization of corpus
    c by the CLI's launch path, on the instance under the test's home, then one tick of the
    source observer sensor as its daemon runs it."""
    from assets.launch import materialize_corpus
    from assets.instance import dagster_instance

    with pytest.MonkeyPatch.context() as env:
        env.setenv(HOME_ENV, str(site["ws"].settings.home))
        for var in ("RETRO_OPS_CATALOG_URL", "RETRO_OPS_LANCEDB_URI", "RETRO_OPS_DAGSTER_STORAGE_URL"):
            env.delenv(var, raising=False)
        instance = dagster_instance(site["ws"].settings)
        outcome = materialize_corpus(instance, "c")
        ticks = sensor_tick(instance, "source_observer")
    return outcome, ticks


def test_later_runs_write_the_purge_id_never_the_name_path_reason_or_text(site, purged, later_runs):
    outcome, ticks = later_runs
    assert outcome.success, outcome.error
    assert [t.status.value for t in ticks] in (["SUCCESS"], ["SKIPPED"])
    home, purge_id = site["ws"].settings.home, purged["purges"][0]["id"]
    path = str(site["root"] / "corpus" / SECRET_FILE)
    leaks = found_in_files(home, {"name": SECRET_FILE, "stem": Path(SECRET_FILE).stem, "path": path,
                                  **{n: n for n in NEEDLES}})
    assert leaks == {label: set() for label in leaks}
    # the purge's reason stays in the catalog's purge record only, not in what runs write
    assert found_in_files(site["ws"].settings.dagster_home, {"reason": REASON}) == {"reason": set()}
    # the search can fail: it finds the name before the purge, and it reads Dagster's storage
    # (its SQLite files), where this run wrote its read issue: the purge id and content hash
    assert any(f.startswith("catalog.db") for f in site["name_before"]), site["name_before"]
    issue = f"purge {purge_id}: document {site['doc_id']}"
    assert issue in {a.asset: a.metadata for a in outcome.assets}["documents"]["issue_list"]
    assert any(f.startswith("dagster/history/") for f in found_in_files(home, {"issue": issue})["issue"])


def test_no_lancedb_version_file_or_index_keeps_the_purged_rows_and_the_tag_is_gone(site, purged, later_runs):
    """Every remaining version of every table is read (the same reading finds the rows before
    the purge); no data file or index folder lies outside those versions, no deletion file is
    left, and the index built while the rows were there is gone (the version the compaction
    started from kept it). The user's tag is removed, its snapshot marked as no longer reproducible."""
    store, catalog = site["ws"].store, site["ws"].catalog
    held = {h.split(" ")[0] for h in site["held"]}
    assert {"documents", "chunks", "retrieval_set_chunks", "chunk_scores"} <= held, site["held"]
    assert any(t.startswith("embeddings_") for t in held) and site["indices"][CHUNKS]
    assert lance_holdings(store, site["rows"]) == []
    assert lance_leftovers(store, held, site["indices"]) == []
    assert SNAPSHOT_TAG not in store.tags(CHUNKS)
    lost = {"table": CHUNKS, "tag": SNAPSHOT_TAG, "version": site["tagged"], "reproducible": False}
    assert lost in purged["snapshots_lost"]
    assert {**lost, "purge_id": purged["purges"][0]["id"]} in catalog.lost_snapshots()


def _chunker():
    from retro_ops.features.chunking import Chunker
    from retro_ops.features.embedder import Embedder

    return Chunker(Embedder().tokenizer)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, embedder, chunker):
    """A home with the secret document indexed (no model): copied for each crash test."""
    root = tmp_path_factory.mktemp("pristine")
    ws = _workspace(root, embedder, chunker)
    ws.catalog.close()
    return root


_KILLED_PURGE = """
import sys
from retro_ops.erasure.purge import purge_documents
from retro_ops.settings import Settings
from retro_ops.workspace import Workspace
purge_documents(Workspace.open(Settings(home=sys.argv[1])), [sys.argv[2]], reason="erasure request 18",
                actor="dpo", crash_at=sys.argv[3], crash_mode="kill")
"""


@pytest.mark.parametrize("point", ["after_intent", "after_rebuild", "after_cleanup"])  # before and after the deletes
def test_a_purge_killed_midway_is_finished_by_the_next_one(pristine, tmp_path, point):
    """SIGKILL (a real one, in a child process) at each step: the document is excluded from the
    moment the intent is committed, the purge stays pending, and the next purge call finishes it
    to the same end state as an uninterrupted purge. A tag the killed run removed (after_cleanup)
    is still reported as a lost snapshot by the run that finishes it."""
    from retro_ops.erasure.purge import purge_documents

    root = tmp_path / "copy"
    shutil.copytree(pristine, root)
    home = root / "home"
    doc_id = document_id(normalise_text((root / "corpus" / SECRET_FILE).read_text()))
    chunks = FeatureStore(Settings(home=home).lancedb_uri).db.open_table(CHUNKS)
    chunks.tags.create(SNAPSHOT_TAG, chunks.version)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run([sys.executable, "-c", _KILLED_PURGE, str(home), doc_id, point],
                           env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    ws = Workspace.open(Settings(home=home))
    [pending] = ws.catalog.purges()
    assert pending.status == "pending" and pending.doc_id == doc_id
    assert doc_id in ws.catalog.active_exclusions().doc_ids  # never retrievable from the intent on
    report = purge_documents(ws, [], reason="(resumed)", actor="dpo")
    assert [(p["doc_id"], p["status"]) for p in report.purges] == [(doc_id, "done")]
    assert [(s["table"], s["tag"]) for s in report.snapshots_lost] == [(CHUNKS, SNAPSHOT_TAG)]
    assert _found(home) == {n: set() for n in NEEDLES}
    version = ws.catalog.latest_retrieval_set_version("c")
    assert doc_id not in set(ws.store.members(version.digest, ["doc_id"]).column("doc_id").to_pylist())
    assert [p.status for p in ws.catalog.purges()] == ["done"]
    assert purge_documents(ws, [doc_id], reason="again", actor="dpo").purges == [
        {"id": pending.id, "doc_id": doc_id, "status": "done"}]  # purging twice: a no-op


def test_a_purge_of_a_default_index_removes_ids_instead_of_rebuilding(pristine, tmp_path):
    """The rebuild passes the config the published build recorded (here the default), so its
    build key matches and the cheap route applies; a different config would force a full build."""
    from dataclasses import asdict

    from retro_ops.erasure.purge import purge_documents

    root = tmp_path / "copy"
    shutil.copytree(pristine, root)
    ws = Workspace.open(Settings(home=root / "home"))
    doc_id = document_id(normalise_text((root / "corpus" / SECRET_FILE).read_text()))
    purge_documents(ws, [doc_id], reason="erasure request 19", actor="dpo")
    index = index_root(ws.settings.indices_dir, "c")
    manifest = read_manifest(index, current_build(index)[0])
    assert manifest.config == asdict(IndexConfig()) and manifest.route == "incremental", manifest.notes


def test_a_purge_without_a_reason_is_refused_before_anything_is_recorded(home):
    """The library checks the reason itself (the CLI only shows its message): a blank reason
    names the documents and leaves no intent, exclusion or new corpus version behind."""
    from retro_ops.erasure.purge import purge_documents
    from retro_ops.errors import ExclusionError

    ws = Workspace.open(home)
    with pytest.raises(ExclusionError, match=r"^a purge needs a reason \(none given for 0123abcd\)$"):
        purge_documents(ws, ["0123abcd"], reason="  ", actor="dpo")
    assert ws.catalog.purges() == [] and ws.catalog.list_exclusions() == []

def _purge_records(catalog: Catalog, corpus_folder: Path) -> None:
    """The catalog half of a purge on one backend: intent, new corpus version, scrub, done."""
    from sqlalchemy import select

    from retro_ops.catalog import tables as m
    from retro_ops.corpus import Document
    from retro_ops.errors import ExclusionError

    docs = [Document(document_id(t), t, [str(corpus_folder / f"{n}.txt")]) for n, t in
            (("keep", "kept text"), ("secret_zq", "secret text"))]
    catalog.add_corpus("p", str(corpus_folder))
    first = catalog.record_corpus_version("p", docs, "d1", documents_lance_version=1)
    purge = catalog.begin_purge(docs[1].doc_id, reason="erasure request 5", actor="dpo",
                                source_uris=["secret_zq.txt"], chunks=[[7, 0, "h7"]], held_by={"s1": [7]})
    again = catalog.begin_purge(docs[1].doc_id, reason="again", actor="x", source_uris=[], chunks=[],
                                held_by={})
    assert (again.id, again.reason, again.chunks) == (purge.id, purge.reason, purge.chunks)  # a rerun
    assert docs[1].doc_id in catalog.active_exclusions().doc_ids
    [new] = catalog.drop_from_latest_corpus_versions([docs[1].doc_id], documents_lance_version=2)
    assert catalog.drop_from_latest_corpus_versions([docs[1].doc_id], documents_lance_version=2) == []
    assert catalog.corpus_doc_ids(new) == [docs[0].doc_id] and new > first.id
    assert catalog.scrub_document_sources([docs[1].doc_id]) == 2  # its document and version-1 sources
    with catalog.session() as s:
        uris = set(s.scalars(select(m.CorpusVersionSource.source_uri)).all()) | set(
            s.scalars(select(m.DocumentSource.source_uri)).all())
    assert not any("secret_zq" in u for u in uris) and "keep.txt" in uris
    assert [p.id for p in catalog.purges_by_source("secret_zq.txt")] == [purge.id]
    done = catalog.finish_purge(purge.id, {"rows_deleted": {"chunks": 1}})
    assert (done.status, done.report, done.chunk_ids, done.held_by) == ("done", {"rows_deleted": {"chunks": 1}},
                                                                       [7], {"s1": [7]})
    with pytest.raises(ExclusionError, match="belongs to a purge"):
        catalog.revoke_exclusion(done.exclusion_id, reason="undo", actor="x")
    catalog.compact_storage()


def test_purge_records_on_sqlite(tmp_path):
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}", home=tmp_path)
    _purge_records(catalog, tmp_path / "corpus")
    catalog.close()
    assert b"secret_zq" not in (tmp_path / "catalog.db").read_bytes()  # VACUUMed: no stale page
    wal = tmp_path / "catalog.db-wal"
    assert not wal.exists() or b"secret_zq" not in wal.read_bytes()


@pytest.mark.postgres
def test_purge_records_on_postgres(pg_database_url, tmp_path):
    catalog = Catalog.open(pg_database_url)
    _purge_records(catalog, tmp_path / "corpus")
    catalog.close()
