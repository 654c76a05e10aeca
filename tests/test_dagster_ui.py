"""`retro-ops ui` (dagster dev -w workspace.yaml) serves the asset graph: started for real,
asked over its GraphQL API, stopped with SIGINT to its process group."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from retro_ops.settings import Settings

REPO = Path(__file__).resolve().parents[1]
QUERY = "{ assetNodes { assetKey { path } dependencyKeys { path } partitionDefinition { name } } }"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _restore_signals() -> None:  # a non-interactive parent may have left SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _graphql(port: int) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": QUERY}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_ui_serves_the_asset_graph(home: Settings):
    port = _free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "retro-ops"), "ui", "--port", str(port)],
        cwd=REPO, env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True, preexec_fn=_restore_signals)
    try:
        deadline, answer = time.monotonic() + 120, None
        while time.monotonic() < deadline and answer is None:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            try:
                answer = _graphql(port)
                if not answer.get("data", {}).get("assetNodes"):
                    answer = None  # the code location is still loading
            except OSError:
                pass
            if answer is None:
                time.sleep(1)
        assert answer is not None, "the Dagster UI did not serve the asset graph within 120 s"
        nodes = {"/".join(n["assetKey"]["path"]): n for n in answer["data"]["assetNodes"]}
        assert set(nodes) >= {"documents", "chunks", "chunk_embeddings", "retrieval_set",
                              "faiss_index", "training_neighbours", "retro_checkpoint", "evaluation"}
        assert [d["path"] for d in nodes["chunk_embeddings"]["dependencyKeys"]] == [["chunks"]]
        assert nodes["chunks"]["partitionDefinition"]["name"] == "corpus"
        assert (home.dagster_home / "dagster.yaml").exists()
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
