"""Exclusions end to end on a small real corpus with planted toxic and private text.

Planted: a toxic paragraph in two documents (the second has it as its second chunk: the same
chunk text, another document), an email + phone, a card number, an IP address, and a document
marked for takedown. After `exclude apply`, querying with each planted chunk's own text returns
none of them, their duplicates or any chunk of the taken-down document through the library, the
CLI, `/retrieve`, `/generate` and the MLflow pyfunc, with no rebuild in between.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import requests
import sqlalchemy as sa
from helpers import free_port, serve_in_thread, tiny_spec
from typer.testing import CliRunner

from retro_ops.catalog import Catalog
from retro_ops.catalog import tables as m
from retro_ops.cli.main import app as cli
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.errors import ExclusionError, ExclusionListError
from retro_ops.features import pipeline
from retro_ops.features.store import FeatureStore
from retro_ops.retrieval.index.route import publish_retrieval_set
from retro_ops.serving.app import Limits, create_app
from retro_ops.serving.deployment import DeploymentHolder
from retro_ops.settings import HOME_ENV, Settings
from retro_ops.training.prepare import prepare_training
from retro_ops.training.run import train_model
from retro_ops.workspace import Workspace

TOXIC = ("You are a worthless fucking idiot, shut the hell up you stupid bitch. Nobody wants your "
         "crap here, you pathetic moron, go to hell and take your damn garbage with you, asshole.")
PLANTED = {
    "toxic_a.txt": TOXIC,
    "toxic_b.txt": " ".join(["sea"] * 64) + "\n" + TOXIC,  # chunk 1 of this doc == chunk 0 of toxic_a
    "contact.txt": "For the charter write to captain.ahab@pequod-whaling.com or call 555-867-5309.",
    "card.txt": "Pay the harpooneer with card 4111 1111 1111 1111, expiry 12/29, and tell no one.",
    "logbook.txt": "The logbook server of the Pequod answers at 192.168.44.17 on the night watch.",
}
POLICY = """
name = "safety-v1"
[[rule]]
scorer = "toxicity"
threshold = 0.9
scope = "content_hash"
reason = "toxic language"
[[rule]]
scorer = "pii"
threshold = 1.0
scope = "content_hash"
reason = "personal data"
[[rule]]
scorer = "blocklist"
patterns = ["TAKEDOWN-REQUEST-\\\\d+"]
threshold = 1.0
scope = "document"
reason = "takedown request"
"""
TOKEN = "exclusion-test-admin-token"
runner = CliRunner()


@pytest.fixture(scope="module")
def site(tmp_path_factory, embedder, chunker):
    """The planted corpus chunked, embedded, indexed; a tiny RETRO trained on it and served."""
    root = tmp_path_factory.mktemp("planted")
    corpus = root / "corpus"
    corpus.mkdir()
    for name in ("chapter_2.txt", "chapter_5.txt"):
        shutil.copy(CORPORA_DIR / "moby_dick" / name, corpus / name)
    for name, text in PLANTED.items():
        (corpus / name).write_text(text)
    leak = (CORPORA_DIR / "moby_dick" / "chapter_9.txt").read_text()[:2500]
    (corpus / "leak.txt").write_text("TAKEDOWN-REQUEST-0042\n" + leak)  # marker in its first chunk
    (root / "policy.toml").write_text(POLICY)
    settings = Settings(home=root / "home")
    settings.ensure_dirs()
    catalog = Catalog.open(settings.catalog_url, home=settings.home)
    store = FeatureStore(settings.lancedb_uri)
    catalog.add_corpus("planted", str(corpus))
    pipeline.materialize_corpus(catalog, store, chunker, embedder, "planted")
    catalog.create_retrieval_set("planted", ["planted"])
    publish_retrieval_set(catalog, store, settings.indices_dir, "planted", embedder.space)
    ws = Workspace(settings, catalog, store, embedder)
    spec = replace(tiny_spec(steps=2, retrieval_set="planted"), corpus="planted")
    info = train_model(ws, prepare_training(ws, spec), "retro").info
    port = free_port()
    holder = DeploymentHolder.start(ws, info.ref, "planted", f"http://127.0.0.1:{port}", TOKEN)
    with serve_in_thread(create_app(holder, admin_token=TOKEN, limits=Limits()), port) as base:
        env = {HOME_ENV: str(settings.home)}
        yield {"ws": ws, "base": base, "info": info, "env": env, "root": root, "holder": holder}


def _members(ws) -> list[dict]:
    version = ws.catalog.latest_retrieval_set_version("planted")
    return ws.store.members(version.digest, ["chunk_id", "doc_id", "position", "content_hash",
                                             "text"]).to_pylist()


def _cli(site, *args) -> dict | list:
    result = runner.invoke(cli, [*args, "--json"], env=site["env"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _state(ws) -> tuple:
    """Everything a dry run must leave alone: catalog rows and every LanceDB table's version."""
    with ws.catalog.session() as s:
        rows = {t: s.scalar(sa.select(sa.func.count()).select_from(t)) for t in m.Base.metadata.sorted_tables}
    names = sorted(ws.store.db.list_tables().tables)
    return {t.name: n for t, n in rows.items()}, {n: ws.store.version(n) for n in names}


def _pyfunc(site):
    import mlflow.pyfunc

    info, ws = site["info"], site["ws"]
    previous = mlflow.get_registry_uri()
    mlflow.set_registry_uri(ws.settings.mlflow_tracking_uri)  # process-global: restored below
    try:
        return mlflow.pyfunc.load_model(f"models:/{info.mlflow_model_name}/{info.mlflow_model_version}")
    finally:
        mlflow.set_registry_uri(previous)


def test_dry_run_prints_counts_and_a_sample_and_changes_nothing(site):
    ws = site["ws"]
    before = _state(ws)
    report = _cli(site, "exclude", "apply", "--policy", str(site["root"] / "policy.toml"),
                  "--set", "planted", "--dry-run")
    assert report["dry_run"] and report["new_exclusions"] == 5 and report["sample"]
    assert report["matches"]["toxicity@alt-profanity-check-1.9.1"] >= 2  # both copies
    assert _state(ws) == before
    assert ws.catalog.active_exclusions().content_hashes == frozenset()


def test_policy_excludes_planted_text_everywhere_before_any_rebuild(site):
    ws, base = site["ws"], site["base"]
    version_before = ws.catalog.latest_retrieval_set_version("planted").id
    served_before = requests.get(f"{base}/deployment", timeout=10).json()
    report = _cli(site, "exclude", "apply", "--policy", str(site["root"] / "policy.toml"), "--set", "planted")
    assert not report["dry_run"] and report["new_exclusions"] == 5
    again = _cli(site, "exclude", "apply", "--policy", str(site["root"] / "policy.toml"), "--set", "planted")
    assert again["new_exclusions"] == 0 and sum(again["newly_scored"].values()) == 0  # scored once
    excluded = ws.catalog.active_exclusions()
    members = _members(ws)
    planted = [r for r in members if excluded.drops(r["chunk_id"], r["content_hash"], r["doc_id"])]
    by_hash = {}
    for r in planted:
        by_hash.setdefault(r["content_hash"], set()).add(r["doc_id"])
    assert any(len(docs) == 2 for docs in by_hash.values())  # the toxic chunk in two documents
    assert len({r["doc_id"] for r in planted}) >= 6  # 2 toxic, contact, card, logbook, leak
    assert {"email", "phone", "card", "ip"} <= {k for e in ws.catalog.list_exclusions()
                                                for k in e.reason.split("(")[-1].rstrip(")").split(",")}
    bad_ids = {r["chunk_id"] for r in planted}
    retriever = ws.retriever("planted")
    model = _pyfunc(site)
    for row in planted:
        hits = retriever.retrieve([row["text"]], k=5)[0]
        assert len(hits) == 5 and not bad_ids & {h.chunk_id for h in hits}  # over-fetched to k
        cli_hits = _cli(site, "retrieve", row["text"], "--set", "planted", "-k", "5")["neighbours"]
        assert len(cli_hits) == 5 and not bad_ids & {h["chunk_id"] for h in cli_hits}
        served = requests.post(f"{base}/retrieve", json={"text": row["text"], "k": 5}, timeout=60).json()
        assert len(served["neighbours"]) == 5 and not bad_ids & {h["chunk_id"] for h in served["neighbours"]}
    # generation retrieves per completed 64-token chunk: prompt with a full chunk of the taken-down doc
    [leak_doc] = excluded.doc_ids
    prompt = next(r["text"] for r in members if r["doc_id"] == leak_doc and r["position"] == 1)
    generated = requests.post(f"{base}/generate", json={"prompt": prompt, "max_new_tokens": 2},
                              timeout=120).json()
    used = {n["chunk_id"] for c in generated["chunks"] for n in c["neighbours"]}
    assert used and not bad_ids & used
    import pandas as pd
    frame = model.predict(pd.DataFrame({"prompt": [prompt]}),
                          params={"retrieval_set": "planted", "max_new_tokens": 2})
    used = {c for chunk in json.loads(frame.iloc[0]["neighbours"]) for c in chunk["chunk_ids"]}
    assert used and not bad_ids & used
    # evaluation's neighbours (cached by a key that now includes the exclusion list) drop them too
    from retro_ops.training.data import load_chunk_table
    from retro_ops.training.neighbours import NeighbourConfig
    from retro_ops.training.prepare import neighbours_for

    queries = load_chunk_table(ws.store, sorted({r["doc_id"] for r in planted}), 64)
    found = neighbours_for(ws, queries, retriever, NeighbourConfig(k=3), 64)
    assert found.computed_now and found.neighbours.mask.any()
    assert not bad_ids & {int(i) for i in found.neighbours.ids[found.neighbours.mask]}
    # the lineage audit shows each scope on the chunks it covers
    from retro_ops.lineage.audit import forward_chunk, forward_document
    from retro_ops.lineage.views import AuditDB

    db = AuditDB(ws.catalog, ws.store)
    toxic_hash = next(h for h, docs in by_hash.items() if len(docs) == 2)
    for row in (r for r in planted if r["content_hash"] == toxic_hash):
        shown = forward_chunk(db, row["chunk_id"]).lists["exclusions"]
        assert [(e["scope"], e["target"]) for e in shown] == [("content_hash", toxic_hash)]
    shown = forward_document(db, leak_doc).lists["exclusions"]
    assert [(e["scope"], e["reason"]) for e in shown] == [("document", "takedown request (TAKEDOWN-REQUEST-\\d+)")]
    # no rebuild happened: same set version, same served deployment
    assert ws.catalog.latest_retrieval_set_version("planted").id == version_before
    assert requests.get(f"{base}/deployment", timeout=10).json() == served_before


def test_exclusion_survives_a_restart_and_comes_back_only_after_an_audited_revoke(site):
    ws = site["ws"]
    members = _members(ws)
    excluded = ws.catalog.active_exclusions()
    victim = next(r for r in members if not excluded.drops(r["chunk_id"], r["content_hash"], r["doc_id"])
                  and r["doc_id"] not in {x["doc_id"] for x in members if x["content_hash"] in excluded.content_hashes})
    [exclusion_id] = _cli(site, "exclude", "chunk", str(victim["chunk_id"]), "--reason", "request 7")["exclusion_ids"]
    # a fresh process (a restart): the exclusion is read from the catalog, not from memory
    command = [sys.executable, "-m", "retro_ops.cli.main", "retrieve", victim["text"], "--set", "planted",
               "-k", "3", "--json"]
    fresh = subprocess.run(command, env={**os.environ, **site["env"]}, capture_output=True, text=True,
                           timeout=120, check=True)
    assert victim["chunk_id"] not in {n["chunk_id"] for n in json.loads(fresh.stdout)["neighbours"]}
    result = runner.invoke(cli, ["exclude", "revoke", str(exclusion_id), "--reason", " "], env=site["env"])
    assert result.exit_code == 2 and "needs a reason" in result.output
    assert victim["chunk_id"] not in {h.chunk_id for h in ws.retriever("planted").retrieve([victim["text"]], 3)[0]}
    revoked = _cli(site, "exclude", "revoke", str(exclusion_id), "--reason", "request withdrawn")
    assert revoked["revoked_by"] and revoked["revoke_reason"] == "request withdrawn"
    assert ws.retriever("planted").retrieve([victim["text"]], 3)[0][0].chunk_id == victim["chunk_id"]
    listed = {e["id"]: e for e in _cli(site, "exclude", "list")}
    assert listed[exclusion_id]["revoked_at"] and listed[exclusion_id]["created_by"]  # row kept, audited
    with pytest.raises(ExclusionError, match=f"exclusion {exclusion_id} was already revoked"):
        ws.catalog.revoke_exclusion(exclusion_id, reason="again", actor="pytest")


def test_text_and_doc_commands_and_bad_inputs(site):
    ws = site["ws"]
    [hash_id] = _cli(site, "exclude", "text", TOXIC[:40], "--reason", "partial text")["exclusion_ids"]
    assert ws.catalog.list_exclusions()[-1].scope == "content_hash"
    ws.catalog.revoke_exclusion(hash_id, reason="cleanup", actor="pytest")
    docs = _cli(site, "exclude", "doc", "card.txt", "--reason", "takedown 9")
    assert docs["scope"] == "document" and len(docs["targets"]) == 1
    for args, message in ((["exclude", "chunk", "123", "--reason", "x"], "no chunk 123"),
                          (["exclude", "doc", "nope.txt", "--reason", "x"], "no document 'nope.txt'"),
                          (["exclude", "revoke", "99999", "--reason", "x"], "no exclusion 99999")):
        result = runner.invoke(cli, args, env=site["env"])
        assert result.exit_code == 2 and message in result.output


def test_an_unreadable_exclusion_list_fails_closed(site):
    ws, base = site["ws"], site["base"]
    text = _members(ws)[0]["text"]
    engine = sa.create_engine(ws.settings.catalog_url)
    with engine.begin() as c:
        c.execute(sa.text("ALTER TABLE exclusions RENAME TO exclusions_hidden"))
    try:
        response = requests.post(f"{base}/retrieve", json={"text": text, "k": 3}, timeout=60)
        assert response.status_code == 503 and "cannot read the exclusion list" in response.json()["detail"]
        generated = requests.post(f"{base}/generate", json={"prompt": text, "max_new_tokens": 1}, timeout=60)
        assert generated.status_code == 503
        result = runner.invoke(cli, ["retrieve", text, "--set", "planted"], env=site["env"])
        assert result.exit_code == 2 and "refusing to retrieve" in result.output
        with pytest.raises(ExclusionListError, match="refusing to retrieve"):
            site["holder"].current.retriever.retrieve([text], k=3)
    finally:
        with engine.begin() as c:
            c.execute(sa.text("ALTER TABLE exclusions_hidden RENAME TO exclusions"))
        engine.dispose()
    assert requests.post(f"{base}/retrieve", json={"text": text, "k": 3}, timeout=60).status_code == 200


def test_the_library_checks_what_a_person_asks_to_exclude(catalog, store):
    """The checks the CLI shows live in the library: a chunk that is not in the store and an
    empty text are refused, naming the input, and nothing is recorded."""
    from retro_ops.governance.exclude import exclude_chunk, exclude_text

    with pytest.raises(ExclusionError, match="^no chunk 123 in the feature store$"):
        exclude_chunk(catalog, store, 123, reason="request 7", actor="pytest")
    with pytest.raises(ExclusionError, match="^empty text: give the exact text of the chunk to exclude$"):
        exclude_text(catalog, " \n", reason="request 7", actor="pytest")
    assert catalog.list_exclusions() == []
    digest, exclusion_id = exclude_text(catalog, TOXIC, reason="toxic language", actor="pytest")
    assert [(e.id, e.scope, e.target) for e in catalog.list_exclusions()] == [
        (exclusion_id, "content_hash", digest)]
