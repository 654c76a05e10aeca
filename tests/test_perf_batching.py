"""Micro-batched retrieval (#17): concurrent queries share encoder calls and each gets exactly
the neighbours it would have got alone, through the library and through the real server."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from helpers import free_port, serve_in_thread, tiny_spec

from retro_ops.errors import ServerOverloadedError
from retro_ops.serving.admission import AdmissionConfig, ComputeGate
from retro_ops.serving.app import create_app
from retro_ops.serving.batching import BatchConfig, RetrieveBatcher
from retro_ops.serving.deployment import DeploymentHolder
from retro_ops.training.prepare import prepare_training
from retro_ops.training.run import train_model


@pytest.fixture(scope="module")
def ws(trained_ws):
    """The module's home: a copy of `small` whose tiny RETRO (tiny_spec(steps=2)) is trained
    already, so training that spec here reuses it (tests/sites.py)."""
    return trained_ws


def _queries(ws, n: int) -> list[str]:
    rows = ws.store.members(ws.retriever("small").version.digest, ["text"]).to_pylist()
    return [r["text"][:120] for r in rows[:n]] + ["the whale", "harpoon and boat", "Ishmael"]


def _ids(neighbours) -> list[int]:
    return [n.chunk_id for n in neighbours]


def test_concurrent_queries_are_batched_and_get_their_own_neighbours(ws):
    retriever = ws.retriever("small")
    texts = _queries(ws, 21)
    alone = {t: _ids(retriever.retrieve([t], k=4)[0]) for t in texts}
    batcher = RetrieveBatcher(ComputeGate(AdmissionConfig(max_queue=64)), BatchConfig(max_wait_s=0.05))
    start = threading.Barrier(len(texts))

    def ask(text: str) -> list[int]:
        start.wait()
        return _ids(batcher.retrieve(retriever, text, 4))

    with ThreadPoolExecutor(len(texts)) as pool:
        together = dict(zip(texts, pool.map(ask, texts)))
    assert together == alone
    assert batcher.queries == len(texts) and batcher.batches < len(texts) / 2


def test_a_batch_waits_for_the_clients_it_expects_back_but_at_most_max_gather(ws):
    """After a batch of 8, the next leader waits for 8 queries (the clients just answered come
    back together over HTTP) but no longer than max_gather_s; after a lone query, it waits only
    max_wait_s of quiet."""
    retriever = ws.retriever("small")
    texts = _queries(ws, 5)
    batcher = RetrieveBatcher(ComputeGate(AdmissionConfig(max_queue=64)),
                              BatchConfig(max_wait_s=0.2, max_gather_s=1.0))
    start = threading.Barrier(len(texts))

    def ask(text: str) -> list[int]:
        start.wait()
        return _ids(batcher.retrieve(retriever, text, 2))

    with ThreadPoolExecutor(len(texts)) as pool:
        list(pool.map(ask, texts))
    assert batcher.batches == 1 and batcher.queries == len(texts)
    waited = []
    for text in ("the whale", "the sea"):
        began = time.monotonic()
        batcher.retrieve(retriever, text, 2)
        waited.append(time.monotonic() - began)
    assert waited[0] >= 1.0  # waited for the 8 clients until the cap
    assert 0.2 <= waited[1] < waited[0]  # then expected only itself: max_wait_s of quiet


def test_mixed_k_in_one_batch_are_answered_separately(ws):
    retriever = ws.retriever("small")
    batcher = RetrieveBatcher(ComputeGate(AdmissionConfig()), BatchConfig(max_wait_s=0.05))
    with ThreadPoolExecutor(2) as pool:
        one, three = pool.map(lambda k: batcher.retrieve(retriever, "the whale", k), (1, 3))
    assert len(one) == 1 and len(three) == 3 and one[0].chunk_id == three[0].chunk_id


def test_a_full_queue_is_refused_at_once(ws):
    batcher = RetrieveBatcher(ComputeGate(AdmissionConfig()), BatchConfig(max_pending=1))
    batcher._pending.append(object())  # one query already waiting: the queue is full
    with pytest.raises(ServerOverloadedError, match="1 retrieve queries queued"):
        batcher.retrieve(ws.retriever("small"), "the whale", 1)


def test_bad_batch_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch >= 1"):
        BatchConfig(max_batch=0)


def test_batched_server_answers_like_one_at_a_time(ws):
    info = train_model(ws, prepare_training(ws, tiny_spec(steps=2)), "retro").info
    port = free_port()
    holder = DeploymentHolder.start(ws, info.ref, "small", f"http://127.0.0.1:{port}", None,
                                    AdmissionConfig(max_queue=32))
    texts = _queries(ws, 13)
    alone = {t: _ids(holder.current.retriever.retrieve([t], k=3)[0]) for t in texts}
    app = create_app(holder, admin_token=None, batching=BatchConfig(max_wait_s=0.02))
    with serve_in_thread(app, port) as base, ThreadPoolExecutor(len(texts)) as pool:
        answers = list(pool.map(lambda t: requests.post(f"{base}/retrieve", json={"text": t, "k": 3},
                                                        timeout=60), texts))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    served = {t: [n["chunk_id"] for n in a.json()["neighbours"]] for t, a in zip(texts, answers)}
    assert served == alone
    assert all(a.json()["retrieval_set"] == "small" for a in answers)


def _chunks(generation) -> list[list[int]]:
    return [[n.chunk_id for n in r.neighbours] for r in generation.retrievals]


def test_batched_generations_answer_like_one_at_a_time(ws):
    """Concurrent /generate requests step out of their turn at each completed chunk and meet in
    the batcher: fewer encoder calls than chunk queries, and every generation's text and
    neighbours equal the same generation run alone (fixed seeds, temperature > 0)."""
    info = train_model(ws, prepare_training(ws, tiny_spec(steps=2)), "retro").info
    port = free_port()
    holder = DeploymentHolder.start(ws, info.ref, "small", f"http://127.0.0.1:{port}", None,
                                    AdmissionConfig(max_queue=32, max_wait_services=None))
    prompts = [(text, seed) for seed, text in enumerate(_queries(ws, 6))]
    alone = {}
    for text, seed in prompts:
        result = holder.current.generator().generate(text, max_new_tokens=70, temperature=0.8, seed=seed)
        alone[text] = (result.text, _chunks(result))
        assert result.retrievals  # every prompt completes at least one chunk
    app = create_app(holder, admin_token=None, batching=BatchConfig(max_wait_s=0.02))
    start = threading.Barrier(len(prompts))

    def ask(prompt: tuple[str, int]) -> requests.Response:
        start.wait()
        return requests.post(f"{base}/generate", json={"prompt": prompt[0], "seed": prompt[1],
                                                      "max_new_tokens": 70, "temperature": 0.8},
                             timeout=120)

    with serve_in_thread(app, port) as base, ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(ask, prompts))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    served = {text: (a.json()["text"], [[n["chunk_id"] for n in c["neighbours"]] for c in a.json()["chunks"]])
              for (text, _), a in zip(prompts, answers)}
    assert served == alone
    batcher = app.state.batcher
    assert batcher.queries == sum(len(chunks) for _, chunks in alone.values())
    assert batcher.batches < batcher.queries  # some generations' queries shared an encoder call
    assert holder.gate.admitted == 0


def test_generations_and_retrieves_mixed_in_batches_answer_like_alone(ws):
    """/retrieve queries (unadmitted, batched as one unit) and generations' chunk queries (of
    admitted requests) in the same batches: each request still gets exactly its own answer."""
    info = train_model(ws, prepare_training(ws, tiny_spec(steps=2)), "retro").info
    port = free_port()
    holder = DeploymentHolder.start(ws, info.ref, "small", f"http://127.0.0.1:{port}", None,
                                    AdmissionConfig(max_queue=32, max_wait_services=None))
    prompts = [(text, seed) for seed, text in enumerate(_queries(ws, 3))]
    lookups = [text[:60] for text, _ in prompts]
    alone = {text: holder.current.generator().generate(text, max_new_tokens=70, temperature=0.8,
                                                       seed=seed) for text, seed in prompts}
    looked_up = {t: _ids(holder.current.retriever.retrieve([t], k=3)[0]) for t in lookups}
    app = create_app(holder, admin_token=None, batching=BatchConfig(max_wait_s=0.02))
    start = threading.Barrier(len(prompts) + len(lookups))

    def ask(request: tuple[str, int] | str) -> requests.Response:
        start.wait()
        if isinstance(request, str):
            return requests.post(f"{base}/retrieve", json={"text": request, "k": 3}, timeout=120)
        return requests.post(f"{base}/generate", json={"prompt": request[0], "seed": request[1],
                                                      "max_new_tokens": 70, "temperature": 0.8},
                             timeout=120)

    with serve_in_thread(app, port) as base, ThreadPoolExecutor(len(prompts) + len(lookups)) as pool:
        answers = list(pool.map(ask, [r for pair in zip(prompts, lookups) for r in pair]))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    assert {t: a.json()["text"] for (t, _), a in zip(prompts, answers[0::2])} == {
        t: g.text for t, g in alone.items()}
    assert {t: [n["chunk_id"] for n in a.json()["neighbours"]]
            for t, a in zip(lookups, answers[1::2])} == looked_up
    assert app.state.batcher.queries == len(lookups) + sum(len(g.retrievals) for g in alone.values())
    assert holder.gate.admitted == 0
