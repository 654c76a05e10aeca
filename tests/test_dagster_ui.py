"""`retro-ops ui` (webserver + daemon via `dagster dev`) serves the asset graph of the home's
instance, and stops with every process it started on SIGTERM (and on Ctrl-C): started for
real, asked over its HTTP API, signalled, its process tree checked in /proc."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import requests
from helpers import free_port, graphql, start_ui, wait_for_asset_graph

from retro_ops.settings import Settings


SENSORS = """{ workspaceOrError { ... on Workspace { locationEntries { locationOrLoadError {
  ... on RepositoryLocation { repositories { sensors { name sensorState { status } } } } } } } } }"""


def _sensors(port: int) -> dict[str, str]:
    entries = graphql(port, SENSORS)["data"]["workspaceOrError"]["locationEntries"]
    return {s["name"]: s["sensorState"]["status"] for e in entries
            for r in e["locationOrLoadError"]["repositories"] for s in r["sensors"]}


def _process_tree(root: int) -> set[int]:
    """Every live descendant of `root` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            after_name = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(after_name[1]), []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ui_serves_the_graph_and_stops_every_process_on_sigterm(home: Settings, tmp_path: Path):
    """With --automation: the source observer and the automation sensor run from the start; without
    --scale-out the sharded route is left out of the graph (the demo does not take it)."""
    port, log, tree = free_port(), tmp_path / "ui.log", set()
    process = start_ui(port, log, "--automation")
    try:
        nodes = wait_for_asset_graph(process, port, log)
        info = requests.get(f"http://127.0.0.1:{port}/server_info", timeout=10).json()
        assert "dagster_webserver_version" in info
        assert set(nodes) >= {"corpus_files", "documents", "chunks", "chunk_embeddings", "chunk_scores",
                              "exclusions", "retrieval_set", "faiss_index", "training_neighbours",
                              "retro_checkpoint", "evaluation"}
        assert [d["path"] for d in nodes["chunk_embeddings"]["dependencyKeys"]] == [["chunks"]]
        assert nodes["chunks"]["partitionDefinition"]["name"] == "corpus"
        assert nodes["retro_checkpoint"]["partitionDefinition"]["name"] == "training_spec"
        assert nodes["faiss_index"]["groupName"] == "retrieval"
        assert not {"chunk_shard", "sharded_faiss_index"} & set(nodes), "the sharded route shows only with --scale-out"
        assert _sensors(port) == {"source_observer": "RUNNING", "retro_ops_automation": "RUNNING"}
        assert "telemetry:\n  enabled: false" in (home.dagster_home / "dagster.yaml").read_text()
        tree = _process_tree(process.pid)
        assert len(tree) >= 2, "dagster dev should run a webserver and a daemon"
    finally:
        process.send_signal(signal.SIGTERM)  # to retro-ops alone, as a service manager would
        code = process.wait(timeout=60)
    printed = log.read_text(errors="replace")
    assert f"Dagster UI on http://127.0.0.1:{port} (automation on" in printed
    assert code == 0, printed[-2000:]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in tree if _alive(p)], "processes outlived retro-ops ui"
