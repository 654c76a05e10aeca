"""The HTTP API on a real uvicorn server: hot swap under load, auth, limits, deployments."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
import requests
from helpers import free_port, serve_in_thread, tiny_spec

from retro_ops.features import pipeline
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.retrieval.index.route import publish_retrieval_set
from retro_ops.serving.app import Limits, create_app
from retro_ops.serving.deployment import DeploymentHolder
from retro_ops.training.prepare import prepare_training
from retro_ops.training.run import train_model

TOKEN = "s3cret-admin-token-for-tests"


@pytest.fixture(scope="module")
def served(ws, chunker, tmp_path_factory):
    """A trained tiny RETRO served with set `small`; a second set `other` (other chapters) ready."""
    other = tmp_path_factory.mktemp("other")
    for name in ("chapter_9.txt", "chapter_10.txt"):
        shutil.copy(CORPORA_DIR / "moby_dick" / name, other / name)
    ws.catalog.add_corpus("other", str(other))
    pipeline.materialize_corpus(ws.catalog, ws.store, chunker, ws.embedder, "other")
    ws.catalog.create_retrieval_set("other", ["other"])
    publish_retrieval_set(ws.catalog, ws.store, ws.settings.indices_dir, "other", ws.embedder.space)
    info = train_model(ws, prepare_training(ws, tiny_spec(steps=4)), "retro").info
    port = free_port()
    holder = DeploymentHolder.start(ws, info.ref, "small", f"http://127.0.0.1:{port}", TOKEN)
    app = create_app(holder, admin_token=TOKEN, limits=Limits(max_prompt_tokens=100, max_new_tokens=16))
    with serve_in_thread(app, port) as base:
        yield base, holder, info


def swap(base: str, name: str, token: str | None = TOKEN) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.put(f"{base}/deployment/retrieval-set", json={"retrieval_set": name},
                        headers=headers, timeout=60)


def test_health_deployment_and_openapi(served):
    base, holder, info = served
    health = requests.get(f"{base}/health", timeout=10).json()
    assert health["status"] == "ok" and health["model"] == info.ref
    assert health["retrieval_set"] == "small"
    assert requests.get(f"{base}/deployment", timeout=10).json()["index_sha256"] == \
        holder.current.retriever.manifest.sha256
    paths = requests.get(f"{base}/openapi.json", timeout=10).json()["paths"]
    assert {"/generate", "/retrieve", "/health", "/deployment", "/deployment/retrieval-set"} <= set(paths)


def test_generate_names_its_neighbours_and_versions(served):
    base, holder, info = served
    prompt = (CORPORA_DIR / "moby_dick" / "chapter_2.txt").read_text()[:380]  # ~80 tokens: 1 chunk
    body = requests.post(f"{base}/generate", json={"prompt": prompt, "max_new_tokens": 8, "seed": 1},
                         timeout=60).json()
    assert body["model"] == info.ref and body["retrieval_set_version"] == holder.current.set_version
    assert body["new_tokens"] == 8 and body["chunks"]
    first = body["chunks"][0]["neighbours"][0]
    assert first["chunk_id"] > 0 and first["source"].endswith(".txt")


def test_limits_and_auth(served):
    base, holder, _ = served
    huge = requests.post(f"{base}/generate", json={"prompt": "whale " * 300, "max_new_tokens": 4}, timeout=30)
    assert huge.status_code == 413 and "limit is 100" in huge.json()["detail"]
    too_many = requests.post(f"{base}/generate", json={"prompt": "whale", "max_new_tokens": 17}, timeout=30)
    assert too_many.status_code == 422 and "exceeds the limit of 16" in too_many.json()["detail"]
    body = requests.post(f"{base}/retrieve", data=b"x" * 70_000,
                         headers={"Content-Type": "application/json"}, timeout=30)
    assert body.status_code == 413
    assert requests.post(f"{base}/retrieve", json={"text": ""}, timeout=30).status_code == 422
    assert swap(base, "other", token=None).status_code == 401
    assert swap(base, "other", token="wrong-token-wrong-token").status_code == 401
    before = holder.current.set_version
    unknown = swap(base, "nope")
    assert unknown.status_code == 404 and "unknown retrieval set 'nope'" in unknown.json()["detail"]
    assert requests.post(f"{base}/retrieve", json={"text": "whale"}, timeout=30).json()[
        "retrieval_set_version"] == before


def test_swap_under_load_loses_nothing(served):
    """A client thread keeps calling /retrieve and /generate while the set is swapped twice;
    every response names one of the two set versions, switching exactly at the swaps."""
    base, holder, _ = served
    small = holder.current.set_version
    log, errors, stop = [], [], threading.Event()

    def client():
        i = 0
        while not stop.is_set() and i < 400:
            started = time.monotonic()
            if i % 5 == 4:
                r = requests.post(f"{base}/generate", json={"prompt": "the whale and the ship",
                                                            "max_new_tokens": 2}, timeout=60)
            else:
                r = requests.post(f"{base}/retrieve", json={"text": f"whale {i}", "k": 2}, timeout=60)
            if r.status_code != 200:
                errors.append((r.status_code, r.text))
            else:
                log.append((started, time.monotonic(), r.json()["retrieval_set_version"]))
            i += 1

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(1.5)
    swaps = []
    for name in ("other", "small"):
        t0 = time.monotonic()
        response = swap(base, name)
        assert response.status_code == 200, response.text
        swaps.append((t0, time.monotonic(), response.json()["current"]["retrieval_set_version"]))
        time.sleep(1.5)
    stop.set()
    thread.join(timeout=120)
    other = swaps[0][2]
    assert errors == []
    assert len(log) >= 60
    assert {v for _, _, v in log} == {small, other}
    for started, ended, version in log:
        if ended < swaps[0][0]:
            assert version == small  # finished before the first swap began
        elif swaps[0][1] < started and ended < swaps[1][0]:
            assert version == other  # wholly between the swaps
        elif started > swaps[1][1]:
            assert version == small  # after the second swap
    versions = [v for _, _, v in sorted(log)]
    changes = sum(a != b for a, b in zip(versions, versions[1:]))
    assert changes == 2
    recorded = [(d["action"], d["retrieval_set_version_id"]) for d in holder.ws.catalog.deployments()]
    assert recorded[-2:] == [("swap", other), ("swap", small)]
    assert recorded[0] == ("start", small)


def test_mlflow_pyfunc_swaps_the_retrieval_set_at_predict_time(served):
    import mlflow.pyfunc
    import pandas as pd

    _, holder, info = served
    uri = f"models:/{info.mlflow_model_name}/{info.mlflow_model_version}"
    previous = mlflow.get_registry_uri()
    mlflow.set_registry_uri(holder.ws.settings.mlflow_tracking_uri)  # process-global: restored below
    try:
        model = mlflow.pyfunc.load_model(uri)
    finally:
        mlflow.set_registry_uri(previous)
    prompt = (CORPORA_DIR / "moby_dick" / "chapter_2.txt").read_text()[:380]
    frame = pd.DataFrame({"prompt": [prompt]})
    small = model.predict(frame, params={"retrieval_set": "small", "max_new_tokens": 2})
    other = model.predict(frame, params={"retrieval_set": "other", "max_new_tokens": 2})
    members = {name: set(holder.ws.store.members(holder.ws.catalog.latest_retrieval_set_version(name).digest,
                                                 ["chunk_id"]).column("chunk_id").to_pylist())
               for name in ("small", "other")}
    for frame_out, name in ((small, "small"), (other, "other")):
        row = frame_out.iloc[0]
        assert row["retrieval_set"] == name
        used = {c for chunk in json.loads(row["neighbours"]) for c in chunk["chunk_ids"]}
        assert used and used <= members[name]
    with pytest.raises(Exception, match="unknown retrieval set 'nope'"):
        model.predict(frame, params={"retrieval_set": "nope"})
    with pytest.raises(Exception, match="max_new_tokens must be between 1 and 1024"):
        model.predict(frame, params={"retrieval_set": "small", "max_new_tokens": 0})


def test_models_switch_without_rebuilding_anything(served, ws):
    """A second model trained against another retrieval set, and a second embedding space, live
    beside the first: serving one model after the other rebuilds no index and writes no feature."""
    from retro_ops.catalog import tables as m
    from retro_ops.features.embedder import Embedder
    from retro_ops.features.schemas import embeddings_table_name

    _, holder, first = served
    second = train_model(ws, prepare_training(ws, tiny_spec(steps=2, retrieval_set="other")), "retro").info
    assert second.retrieval_set_version_id != first.retrieval_set_version_id

    def state():
        tables = ws.store.db.list_tables().tables
        return ws.catalog.count(m.IndexBuild), {t: ws.store.version(t) for t in tables}

    before = state()
    for info, name in ((first, "small"), (second, "other"), (first, "small")):
        started = DeploymentHolder.start(ws, info.ref, name, "test://switch")
        assert started.current.retriever.retrieve(["whale"], k=1)[0]
    assert state() == before

    other_space = Embedder(max_tokens=32)  # another embedding space: its own feature set
    pipeline.embed_corpus(ws.catalog, ws.store, other_space, "small")
    tables = set(ws.store.db.list_tables().tables)
    assert {embeddings_table_name(ws.embedder.space.space_id),
            embeddings_table_name(other_space.space.space_id)} <= tables
    main_table = embeddings_table_name(ws.embedder.space.space_id)
    assert ws.store.version(main_table) == before[1][main_table]
