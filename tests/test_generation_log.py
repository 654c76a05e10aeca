"""The generation log end to end: a real server, the real tiny model, real LanceDB and MLflow.

Generations served over HTTP are logged with their provenance and traced in MLflow; excluding a
chunk some of them retrieved reports exactly those requests; retention removes old rows and
their text from every file of the table; a SIGKILLed server process loses at most the batch it
had not committed; with hashing on, the prompt is in no file of the home.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import mlflow
import pytest
import requests
from helpers import free_port, serve_in_thread, tiny_spec
from typer.testing import CliRunner

from retro_ops.cli.main import app as cli
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.errors import GenerationLogError
from retro_ops.features.store import FeatureStore
from retro_ops.generations.log import GenerationLog, open_log
from retro_ops.generations.records import (
    GENERATIONS, GenerationLogConfig, GenerationRecord, NeighbourUse, new_request_id,
)
from retro_ops.generations.retention import prune_older_than
from retro_ops.generations.search import retrieving, search, show
from retro_ops.generations.traces import EXPERIMENT
from retro_ops.ids import sha256_hex
from retro_ops.lineage.audit import generations_affected_by_exclusion
from retro_ops.lineage.views import AuditDB
from retro_ops.catalog.exclusions import NewExclusion
from retro_ops.serving.app import Limits, create_app
from retro_ops.serving.deployment import DeploymentHolder
from retro_ops.training.prepare import prepare_training
from retro_ops.training.run import train_model

runner = CliRunner()
CHAPTERS = ["chapter_2.txt", "chapter_5.txt", "chapter_6.txt", "chapter_8.txt", "chapter_11.txt",
            "chapter_12.txt"]


def prompt_of(name: str, start: int = 0) -> str:
    """~80 tokens of a real chapter: the first chunk (m = 64) completes in the prompt."""
    return (CORPORA_DIR / "moby_dick" / name).read_text()[start:start + 380]


def log_rows(store: FeatureStore) -> list[dict]:
    if GENERATIONS not in store.db.list_tables().tables:
        return []
    return store.db.open_table(GENERATIONS).search().limit(None).to_arrow().drop_columns(["vector"]).to_pylist()


def grep(folder: Path, needle: str) -> list[str]:
    """Every file under `folder` whose bytes contain `needle` (UTF-8)."""
    data = needle.encode()
    return [str(p) for p in folder.rglob("*") if p.is_file() and data in p.read_bytes()]


@pytest.fixture(scope="module")
def site(ws):
    """A tiny RETRO served over HTTP with a generation log (batches of 3) and MLflow traces."""
    info = train_model(ws, prepare_training(ws, tiny_spec(steps=4)), "retro").info
    log = open_log(ws.store, ws.embedder, GenerationLogConfig(flush_every=3, flush_seconds=0.3),
                   ws.settings)
    port = free_port()
    holder = DeploymentHolder.start(ws, info.ref, "small", f"http://127.0.0.1:{port}")
    app = create_app(holder, admin_token=None, generation_log=log,
                     limits=Limits(max_prompt_tokens=200, max_new_tokens=16))
    served: list[dict] = []  # every /generate response of the module

    def generate(prompt: str, seed: int = 0) -> dict:
        response = requests.post(f"{base}/generate", json={"prompt": prompt, "max_new_tokens": 6,
                                                           "seed": seed}, timeout=120)
        assert response.status_code == 200, response.text
        served.append({**response.json(), "prompt": prompt})
        return served[-1]

    with serve_in_thread(app, port) as base:
        yield {"ws": ws, "info": info, "log": log, "holder": holder, "base": base,
               "generate": generate, "served": served}


def chunk_ids_of(response: dict) -> set[int]:
    return {n["chunk_id"] for c in response["chunks"] for n in c["neighbours"]}


def test_served_generations_are_logged_with_provenance_and_traced(site):
    ws, info, log, holder = site["ws"], site["info"], site["log"], site["holder"]
    answers = [site["generate"](prompt_of(name), seed=i) for i, name in enumerate(CHAPTERS[:4])]
    log.flush()
    rows = {r["request_id"]: r for r in log_rows(ws.store)}
    assert {a["request_id"] for a in answers} <= rows.keys()
    for answer in answers:
        row = rows[answer["request_id"]]
        assert (row["model"], row["model_id"], row["source"]) == (info.ref, info.id, "http")
        assert (row["retrieval_set"], row["retrieval_set_version"]) == ("small", answer["retrieval_set_version"])
        assert row["deployment_id"] == holder.deployment_id and row["deployment_id"] is not None
        assert (row["prompt"], row["output"]) == (answer["prompt"], answer["text"])
        assert row["prompt_sha256"] == sha256_hex(row["prompt"]) and not row["text_hashed"]
        assert [(u["chunk"], u["chunk_ids"]) for u in row["neighbours"]] == \
            [(c["chunk"], [n["chunk_id"] for n in c["neighbours"]]) for c in answer["chunks"]]
        assert [round(s, 4) for u in row["neighbours"] for s in u["scores"]] == \
            [round(n["score"], 4) for c in answer["chunks"] for n in c["neighbours"]]
        assert row["neighbour_chunk_ids"] == sorted(chunk_ids_of(answer))
    health = requests.get(f"{site['base']}/health", timeout=10).json()["generation_log"]
    assert health["written"] >= 4 and health["dropped"] == health["failed"] == 0

    # show: the neighbours with their current text and sources; search: an output finds itself
    shown = show(ws.store, ws.catalog, answers[0]["request_id"])
    first = shown["neighbours"][0]["neighbours"][0]
    assert first["text"] and first["sources"][0].endswith(".txt")
    found = search(ws.store, ws.embedder, answers[1]["text"], k=10)
    best = [r["request_id"] for r in found if r["score"] >= found[0]["score"] - 1e-6]
    assert found[0]["score"] > 0.999 and answers[1]["request_id"] in best

    # MLflow: one trace per request, linked to the model, a RETRIEVER span per completed chunk
    log.flush(traces=True)
    client = mlflow.MlflowClient(ws.settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    traces = {t.info.tags["retro_ops.request_id"]: t for t in client.search_traces(locations=[experiment])}
    for answer in answers:
        trace = traces[answer["request_id"]]
        model = client.get_logged_model(trace.info.trace_metadata["mlflow.modelId"])
        assert model.tags["retro_ops.model"] == info.ref
        assert trace.info.trace_metadata["mlflow.sourceRun"] == info.mlflow_run_id
        retrievers = [s for s in trace.data.spans if s.span_type == "RETRIEVER"]
        assert [[int(c) for c in s.attributes["chunk_ids"]] for s in retrievers] == \
            [[n["chunk_id"] for n in c["neighbours"]] for c in answer["chunks"]]


def test_exclusion_report_lists_exactly_the_generations_that_retrieved_it(site, monkeypatch):
    ws = site["ws"]
    for i, name in enumerate(CHAPTERS):
        site["generate"](prompt_of(name, start=400), seed=10 + i)
    site["log"].flush()
    served = site["served"]
    counts: dict[int, int] = {}
    for answer in served:
        for chunk in chunk_ids_of(answer):
            counts[chunk] = counts.get(chunk, 0) + 1
    # a chunk that some generations read and others did not
    chunk = min((c for c, n in counts.items() if n < len(served)), key=lambda c: (-counts[c], c))
    expected = {a["request_id"] for a in served if chunk in chunk_ids_of(a)}
    assert 0 < len(expected) < len(served)
    [exclusion] = ws.catalog.record_exclusions([NewExclusion("chunk", str(chunk), "test")], actor="test")
    try:
        report = generations_affected_by_exclusion(AuditDB(ws.catalog, ws.store), exclusion)
        assert {r["request_id"] for r in report} == expected
        assert all(r["chunk_ids_read"] == [chunk] for r in report)
        monkeypatch.setenv("RETRO_OPS_HOME", str(ws.settings.home))
        cli_report = runner.invoke(cli, ["generations", "affected", "--exclusion", str(exclusion), "--json"])
        assert cli_report.exit_code == 0, cli_report.output
        assert {r["request_id"] for r in json.loads(cli_report.stdout)} == expected
        lineage = runner.invoke(cli, ["lineage", "chunk", str(chunk), "--json"])
        assert lineage.exit_code == 0, lineage.output
        listed = json.loads(lineage.stdout)
        assert {g["request_id"] for g in listed["generations"]} == expected
        assert listed["summary"]["generations"] == len(expected)
        # later generations cannot retrieve it any more, and so never join the report
        after = site["generate"](prompt_of(CHAPTERS[0], start=400), seed=10)
        assert chunk not in chunk_ids_of(after)
        site["log"].flush()
        assert {r["request_id"] for r in retrieving(ws.store, [chunk])} == expected
    finally:
        ws.catalog.revoke_exclusion(exclusion, reason="test over", actor="test")


def test_cli_generations_show_search_and_bad_inputs(site, monkeypatch):
    ws = site["ws"]
    monkeypatch.setenv("RETRO_OPS_HOME", str(ws.settings.home))
    answer = site["generate"](prompt_of(CHAPTERS[2]), seed=5)  # its own: runs alone or in any order
    site["log"].flush()
    shown = runner.invoke(cli, ["generations", "show", answer["request_id"], "--json"])
    assert shown.exit_code == 0, shown.output
    body = json.loads(shown.stdout)
    assert body["output"] == answer["text"] and body["neighbours"][0]["neighbours"][0]["sources"]
    found = runner.invoke(cli, ["generations", "search", answer["text"], "-k", "3", "--json"])
    assert found.exit_code == 0 and json.loads(found.stdout)[0]["score"] > 0.999
    for args, message in ((["show", "nope"], "no generation with request id 'nope'"),
                          (["search", " "], "empty search text"),
                          (["prune", "--older-than", "0d"], "--older-than '0d'"),
                          (["prune", "--older-than", "soon"], "--older-than 'soon'"),
                          (["affected"], "give exactly one of --exclusion ID or --chunk ID"),
                          (["affected", "--exclusion", "999999"], "no exclusion 999999")):
        result = runner.invoke(cli, ["generations", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    with pytest.raises(GenerationLogError, match=r"\$RETRO_OPS_GENERATION_LOG='maybe': use on or off"):
        GenerationLogConfig.from_env({"RETRO_OPS_GENERATION_LOG": "maybe"})
    with pytest.raises(GenerationLogError, match="FLUSH_EVERY='many' is not a int"):
        GenerationLogConfig.from_env({"RETRO_OPS_GENERATION_LOG_FLUSH_EVERY": "many"})


def test_hashing_keeps_the_prompt_out_of_every_file_and_opt_out_logs_nothing(site, monkeypatch):
    """`retro-ops generate` with hashing on: the row holds sha256s, and no file of the home
    (LanceDB, catalog, MLflow store and traces) holds the prompt; with the log off, no row."""
    ws, info = site["ws"], site["info"]
    secret = "Quillfeather zanzibarine ledger of the marmoset consortium, entry 7781"
    prompt = (secret + ". ") * 4  # > 64 tokens: a chunk completes and retrieves
    monkeypatch.setenv("RETRO_OPS_HOME", str(ws.settings.home))
    monkeypatch.setenv("RETRO_OPS_GENERATION_LOG_HASH", "on")
    result = runner.invoke(cli, ["generate", prompt, "--model", info.ref, "--set", "small",
                                 "--max-new-tokens", "8", "--json"])
    assert result.exit_code == 0, result.output
    generated = json.loads(result.stdout)
    [row] = [r for r in log_rows(ws.store) if r["request_id"] == generated["request_id"]]
    assert row["text_hashed"] and row["prompt"] == row["output"] == "" and row["source"] == "cli"
    assert row["prompt_sha256"] == sha256_hex(prompt) and row["neighbour_chunk_ids"]
    mlflow.flush_trace_async_logging()
    for needle in (secret, secret.lower(), "zanzibarine"):
        assert grep(ws.settings.home, needle) == []
    output = generated["text"].strip()  # corpus words: look where only the log could put them
    assert len(output) > 10
    for folder in (ws.settings.home / "lancedb" / f"{GENERATIONS}.lance", ws.settings.mlflow_dir):
        assert grep(folder, output) == []
    assert grep(ws.settings.home, sha256_hex(prompt))  # the hash is what is kept

    before = len(log_rows(ws.store))
    monkeypatch.setenv("RETRO_OPS_GENERATION_LOG", "off")
    result = runner.invoke(cli, ["generate", "Call me Ishmael. " * 12, "--model", info.ref,
                                 "--set", "small", "--max-new-tokens", "2", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["request_id"] is None
    assert len(log_rows(ws.store)) == before
    monkeypatch.setenv("RETRO_OPS_GENERATION_LOG", "maybe")
    bad = runner.invoke(cli, ["generate", "whale", "--model", info.ref])
    assert bad.exit_code == 2 and "$RETRO_OPS_GENERATION_LOG='maybe': use on or off" in bad.output


def test_pyfunc_predictions_are_logged_under_their_model(site):
    """The MLflow pyfunc logs each predicted row (source `pyfunc`) under the catalog's model
    whose weights it loaded, committed by the end of `predict`."""
    import mlflow.pyfunc
    import pandas as pd

    ws, info = site["ws"], site["info"]
    previous = mlflow.get_registry_uri()
    mlflow.set_registry_uri(ws.settings.mlflow_tracking_uri)  # process-global: restored below
    try:
        model = mlflow.pyfunc.load_model(f"models:/{info.mlflow_model_name}/{info.mlflow_model_version}")
    finally:
        mlflow.set_registry_uri(previous)
    frame = pd.DataFrame({"prompt": [prompt_of(CHAPTERS[4]), prompt_of(CHAPTERS[5])]})
    predicted = model.predict(frame, params={"retrieval_set": "small", "max_new_tokens": 3})
    rows = {r["request_id"]: r for r in log_rows(ws.store)}
    for _, out in predicted.iterrows():
        row = rows[out["request_id"]]
        assert (row["source"], row["model"], row["output"]) == ("pyfunc", info.ref, out["text"])
        assert row["retrieval_set_version"] == out["retrieval_set_version"]
        assert row["neighbour_chunk_ids"] == sorted({c for chunk in json.loads(out["neighbours"])
                                                     for c in chunk["chunk_ids"]})


def test_clean_shutdown_commits_the_last_partial_batch(ws, site):
    """Batches of 100 that never fill and never age: stopping the server commits them."""
    info = site["info"]
    log = open_log(ws.store, ws.embedder, GenerationLogConfig(flush_every=100, flush_seconds=600,
                                                              traces=False), ws.settings)
    port = free_port()
    holder = DeploymentHolder.start(ws, info.ref, "small", f"http://127.0.0.1:{port}")
    ids = []
    with serve_in_thread(create_app(holder, admin_token=None, generation_log=log), port) as base:
        for i in range(2):
            answer = requests.post(f"{base}/generate", json={"prompt": prompt_of(CHAPTERS[i]),
                                                             "max_new_tokens": 2}, timeout=120)
            ids.append(answer.json()["request_id"])
        assert not {r["request_id"] for r in log_rows(ws.store)} & set(ids)  # not committed yet
    assert set(ids) <= {r["request_id"] for r in log_rows(ws.store)}


def test_sigkill_of_the_server_loses_at_most_the_unflushed_batch(site):
    """A real `retro-ops serve` process with batches of 4 (no time flush): after 10 generations
    two batches (8 rows) are committed; SIGKILL loses the other 2 (< 4) and leaves a readable
    table that the next writer appends to."""
    ws, info = site["ws"], site["info"]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRO_OPS_")}
    env.update(RETRO_OPS_HOME=str(ws.settings.home), RETRO_OPS_GENERATION_LOG_FLUSH_EVERY="4",
               RETRO_OPS_GENERATION_LOG_FLUSH_SECONDS="600", RETRO_OPS_GENERATION_LOG_TRACES="off",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]))
    server = subprocess.Popen([sys.executable, "-m", "retro_ops.cli.main", "serve", "--model", info.ref,
                               "--set", "small", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base, ids = f"http://127.0.0.1:{port}", []
    try:
        deadline = time.monotonic() + 120
        while server.poll() is None and time.monotonic() < deadline:
            try:
                requests.get(f"{base}/health", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        assert server.poll() is None, server.stderr.read().decode()[-2000:]
        for i in range(10):
            answer = requests.post(f"{base}/generate", json={"prompt": prompt_of(CHAPTERS[i % 6], 100 * i),
                                                             "max_new_tokens": 2}, timeout=120)
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["request_id"])
        deadline = time.monotonic() + 60
        while len(set(ids) & {r["request_id"] for r in log_rows(ws.store)}) < 8:
            assert time.monotonic() < deadline, "the server did not commit two batches of 4"
            time.sleep(0.2)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        server.stderr.close()
    kept = set(ids) & {r["request_id"] for r in log_rows(FeatureStore(ws.settings.lancedb_uri))}
    assert kept == set(ids[:8])  # the committed batches, whole; the last 2 (< flush_every) lost
    later = GenerationLog(ws.store, ws.embedder, GenerationLogConfig(flush_every=1))
    later.record(_record("after the kill", datetime.now(timezone.utc)))
    later.close()
    assert later.stats.written == 1


def _record(text: str, when: datetime) -> GenerationRecord:
    return GenerationRecord(
        request_id=new_request_id(), created_at=when, source="cli", prompt=f"prompt: {text}",
        output=f"output: {text}", params={"max_new_tokens": 8}, model="model-1", model_id=1,
        retrieval_set="small", retrieval_set_version=1, deployment_id=None, prompt_tokens=3,
        new_tokens=8, retrieval_ms=1.0, model_ms=2.0,
        neighbours=[NeighbourUse(0, [11, 12], ["d1", "d2"], [0.9, 0.8])])


def test_generations_purge_is_a_hidden_deprecated_alias_of_prune(home, monkeypatch):
    """The old name still runs `prune` (same output, same errors) after a one-line notice on
    stderr; `--help` lists only `prune` ("purge" is a document's erasure)."""
    monkeypatch.delenv("RETRO_OPS_GENERATION_RETENTION_DAYS", raising=False)
    pruned = runner.invoke(cli, ["generations", "prune", "--older-than", "30d", "--json"])
    alias = runner.invoke(cli, ["generations", "purge", "--older-than", "30d", "--json"])
    assert pruned.exit_code == alias.exit_code == 0, alias.output
    assert "deprecated; use `retro-ops generations prune`" in alias.stderr
    assert "deprecated" not in pruned.stderr
    assert json.loads(alias.stdout)["deleted"] == json.loads(pruned.stdout)["deleted"] == 0
    bad = runner.invoke(cli, ["generations", "purge", "--older-than", "soon"])
    assert bad.exit_code == 2 and "--older-than 'soon'" in bad.stderr
    listed = runner.invoke(cli, ["generations", "--help"]).stdout
    assert " prune " in listed and " purge " not in listed

def test_retention_removes_old_rows_and_their_text_from_every_file(tmp_path, embedder):
    """One old row among 40 new ones in one fragment (below LanceDB's 10% rewrite threshold) and
    a batch of only old rows: after pruning no file under the table's folder holds old text."""
    store = FeatureStore(str(tmp_path / "lancedb"))
    now = datetime.now(timezone.utc)
    log = GenerationLog(store, embedder, GenerationLogConfig(flush_every=1000, flush_seconds=600))
    old = [_record(f"ancient-secret-{i}", now - timedelta(days=40 + i)) for i in range(4)]
    fresh = [_record(f"recent-text-{i}", now - timedelta(minutes=i)) for i in range(40)]
    for record in [old[0], *fresh]:
        log.record(record)
    log.flush()  # one fragment: 1 old + 40 new
    for record in old[1:]:
        log.record(record)
    log.close()
    folder = tmp_path / "lancedb" / f"{GENERATIONS}.lance"
    assert grep(folder, "ancient-secret-0") and grep(folder, "ancient-secret-3")

    report = prune_older_than(store, now - timedelta(days=30))
    assert (report.deleted, report.kept) == (4, 40)
    assert {r["request_id"] for r in log_rows(store)} == {r.request_id for r in fresh}
    for record in old:
        assert grep(folder, record.prompt) == [] and grep(folder, record.output) == []
        assert grep(folder, record.request_id) == []
    assert grep(folder, "recent-text-7")  # the grep does see text that is there
    assert prune_older_than(store, now - timedelta(days=30)).deleted == 0  # nothing left to prune


def test_generation_log_is_an_observed_source_asset(site, monkeypatch):
    """The `observe_generation_log` job of the code location reports the log's rows and version."""
    from assets.definitions import defs

    ws = site["ws"]
    site["generate"](prompt_of(CHAPTERS[3]))
    site["log"].flush()
    monkeypatch.setenv("RETRO_OPS_HOME", str(ws.settings.home))
    result = defs.resolve_job_def("observe_generation_log").execute_in_process()
    [event] = result.get_asset_observation_events()
    observation = event.asset_observation_data.asset_observation
    table = ws.store.db.open_table(GENERATIONS)
    assert observation.metadata["rows"].value == table.count_rows() > 0
    assert observation.metadata["lancedb_version"].value == table.version
    assert observation.data_version == str(table.version)


def test_the_cli_records_the_log_observation_before_it_materializes(site):
    """What `assets.launch` reports before every materialization: the same rows and version as the
    observe job, recorded on the instance, so the graph never shows the log as never observed."""
    import dagster as dg

    from assets.generations import GENERATION_LOG, generation_log_observation

    ws = site["ws"]
    site["generate"](prompt_of(CHAPTERS[4]))
    site["log"].flush()
    table = ws.store.db.open_table(GENERATIONS)
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(generation_log_observation(ws.store))
    [record] = instance.fetch_observations(GENERATION_LOG.key, limit=1).records
    observation = record.asset_observation
    assert observation.metadata["rows"].value == table.count_rows() > 0
    assert observation.tags["dagster/data_version"] == str(table.version)
