"""Serving under overload and hostile input, on real uvicorn servers on loopback: bounded queue
with fast 503s, /health in milliseconds, generation and retrieval time limits, priority swaps,
chunked bodies, bounded fields, admin-token rules, loopback binding, weights checked against the
catalog, and slow clients on real sockets cut at the read deadlines and the connection bound."""

from __future__ import annotations

import gc
import hashlib
import select
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import requests
import uvicorn
from helpers import tiny_spec
from typer.testing import CliRunner

from retro_ops.cli.main import app as cli
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.errors import AdminTokenError, ModelIntegrityError
from retro_ops.serving.admission import AdmissionConfig
from retro_ops.serving.app import Limits, create_app
from retro_ops.serving.batching import BatchConfig
from retro_ops.serving.connections import ConnectionLimits, guarded_protocol
from retro_ops.serving.deployment import DeploymentHolder
from retro_ops.serving.security import check_bind
from retro_ops.training.checkpoint import MODEL_FILE
from retro_ops.training.prepare import prepare_training
from retro_ops.training.run import train_model
from retro_ops.training.verified import load_verified

TOKEN = "s3cret-admin-token-for-limits"
HEALTH_BOUND_S = 0.2  # /health while the server is flooded, on a shared 2-core machine
LONG = 256  # new tokens of a "slow" generation
PROMPT = (CORPORA_DIR / "moby_dick" / "chapter_2.txt").read_text()[:380]  # ~80 tokens


@pytest.fixture(scope="module")
def ws(trained_ws):
    """The module's home: a copy of `small` whose tiny RETRO (tiny_spec(steps=2)) is trained
    already, so training that spec here reuses it (tests/sites.py)."""
    return trained_ws


@pytest.fixture(scope="module")
def base(ws):
    """A trained tiny RETRO loaded once, and how long a LONG-token generation takes when served
    (measured through a server: torch in a worker thread runs unlike torch in the main one)."""
    info = train_model(ws, prepare_training(ws, tiny_spec(steps=2)), "retro").info
    holder = DeploymentHolder.start(ws, info.ref, "small", "test://limits", TOKEN)
    gc.collect()
    gc.freeze()  # as `retro-ops serve` does: a full collection of this heap stalled /health 0.7 s
    try:
        with serving((holder, info, 0.0), AdmissionConfig()) as (url, _):
            took = [post(url, "/generate", prompt=PROMPT, max_new_tokens=n, seed=n)[1] for n in (8, LONG, LONG)]
        yield holder, info, min(took[1:])
    finally:
        gc.unfreeze()


@contextmanager
def serving(base, admission: AdmissionConfig, limits: Limits = Limits(max_new_tokens=LONG),
            connections: ConnectionLimits = ConnectionLimits(), batching: BatchConfig | None = None):
    """A real uvicorn server on loopback, run as `retro-ops serve` runs it (its guarded protocol)."""
    holder, _, _ = base
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    served = DeploymentHolder(holder.ws, holder.current, f"http://127.0.0.1:{port}", admission)
    app = create_app(served, admin_token=TOKEN, limits=limits, batching=batching)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                          http=guarded_protocol(connections)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield url, served
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def post(url: str, path: str, **body) -> tuple[requests.Response, float]:
    started = time.perf_counter()
    response = requests.post(f"{url}{path}", json=body, timeout=120)
    return response, time.perf_counter() - started


def in_threads(fn, n: int) -> list:
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


def test_flood_beyond_the_queue_gets_fast_503_while_health_answers(base):
    _, _, long_s = base
    with serving(base, AdmissionConfig(max_queue=2, retry_after_s=3)) as (url, served):
        health, stop = [], threading.Event()

        def poll():
            while not stop.is_set():
                started = time.perf_counter()
                assert requests.get(f"{url}/health", timeout=10).status_code == 200
                health.append(time.perf_counter() - started)
                time.sleep(0.02)

        poller = threading.Thread(target=poll)
        poller.start()
        results = in_threads(lambda i: post(url, "/generate", prompt=PROMPT, max_new_tokens=LONG,
                                            seed=i), 16)
        stop.set()
        poller.join()
    ok = [(r, s) for r, s in results if r.status_code == 200]
    shed = [(r, s) for r, s in results if r.status_code == 503]
    assert len(ok) + len(shed) == 16, [r.status_code for r, _ in results]
    assert len(ok) >= 3 and len(shed) >= 8  # 1 running + 2 queued at any moment
    assert all(r.headers["Retry-After"] == "3" and "server busy" in r.json()["detail"] for r, _ in shed)
    assert max(s for _, s in shed) < max(0.5, long_s / 2)  # refused at once, not after a wait
    assert all(r.json()["new_tokens"] == LONG for r, _ in ok)
    assert len(health) >= 10 and max(health) < HEALTH_BOUND_S, sorted(health)[-3:]
    assert served.gate.admitted == 0


def test_generation_past_its_time_limit_gets_504_and_frees_its_slot(base):
    _, _, long_s = base
    with serving(base, AdmissionConfig(max_queue=0, generate_timeout_s=long_s / 3)) as (url, served):
        slow, took = post(url, "/generate", prompt=PROMPT, max_new_tokens=LONG)
        assert slow.status_code == 504 and "past its time limit" in slow.json()["detail"]
        assert served.gate.admitted == 0
        quick, _ = post(url, "/generate", prompt="the whale", max_new_tokens=1)  # needs the one slot
        assert quick.status_code == 200 and quick.json()["new_tokens"] == 1


def test_swap_jumps_a_full_queue(base):
    """With one generation running and four queued, a swap waits for the running one only."""
    _, _, long_s = base
    with serving(base, AdmissionConfig(max_queue=4)) as (url, served):
        ends: list = []
        statuses: list = []

        def generate(i):
            response, _ = post(url, "/generate", prompt=PROMPT, max_new_tokens=LONG, seed=i)
            ends.append(time.perf_counter())
            return response.status_code

        clients = threading.Thread(target=lambda: statuses.extend(in_threads(generate, 5)))
        clients.start()
        deadline = time.monotonic() + 30
        while served.gate.admitted < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert served.gate.admitted == 5
        assert post(url, "/retrieve", text="whale")[0].status_code == 503  # the queue is full
        started = time.perf_counter()
        swapped = requests.put(f"{url}/deployment/retrieval-set", json={"retrieval_set": "small"},
                               headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
        swap_end = time.perf_counter()
        clients.join(timeout=300)
    assert swapped.status_code == 200 and statuses == [200] * 5
    # had it waited behind the queue, no generation would end after it; it waits for one
    assert sum(end > swap_end for end in ends) >= 3, (swap_end - started, long_s)


def test_chunked_oversized_body_is_refused_and_a_chunked_small_one_served(base):
    def chunks(total: int, size: int = 8192):
        sent = 0
        while sent < total:
            yield b" " * min(size, total - sent)
            sent += size

    with serving(base, AdmissionConfig(), Limits(max_body_bytes=4096)) as (url, _):
        def send(body):
            return requests.post(f"{url}/retrieve", data=body, timeout=60,
                                 headers={"Content-Type": "application/json"})

        big = send(chunks(300_000))
        assert big.status_code == 413 and "exceeds 4096" in big.json()["detail"]
        small = send(iter([b'{"text": "the whale', b'", "k": 2}']))  # chunked, no Content-Length
        assert small.status_code == 200 and len(small.json()["neighbours"]) == 2


@pytest.fixture(scope="module")
def plain_server(base):
    with serving(base, AdmissionConfig(), Limits(max_body_bytes=32 * 1024)) as (url, _):
        yield url


@pytest.mark.parametrize("path,body,message", [
    ("/generate", {"prompt": "x" * 16_001}, "at most 16000 characters"),
    ("/retrieve", {"text": "x" * 4_001}, "at most 4000 characters"),
    ("/generate", {"prompt": "whale", "seed": 2**63}, "less than 9223372036854775808"),
    ("/generate", {"prompt": "whale", "seed": -2**63 - 1}, "greater than or equal to"),
    ("/generate", {"prompt": "whale", "temperature": 1e-300}, "0 \\(greedy\\) or at least 0.01"),
    ("/generate", '{"prompt": "whale", "temperature": Infinity}', "finite number"),  # Python's json reads it
    ("/generate", '{"prompt": "whale", "temperature": NaN}', "finite number"),
])
def test_hostile_fields_are_422(plain_server, path, body, message):
    import re

    raw = {"data": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, str) \
        else {"json": body}
    response = requests.post(f"{plain_server}{path}", timeout=60, **raw)
    assert response.status_code == 422, response.text
    assert re.search(message, str(response.json()["detail"]))


def test_field_bounds_are_inclusive(plain_server):
    edge = {"prompt": "whale", "seed": 2**63 - 1, "temperature": 0.01, "max_new_tokens": 2}
    assert requests.post(f"{plain_server}/generate", json=edge, timeout=60).status_code == 200
    greedy = {"prompt": "whale", "seed": -2**63, "temperature": 0, "max_new_tokens": 2}
    assert requests.post(f"{plain_server}/generate", json=greedy, timeout=60).status_code == 200


def test_admin_token_rules_and_loopback_binding(home, monkeypatch):
    runner = CliRunner()
    monkeypatch.setenv("RETRO_OPS_ADMIN_TOKEN", "short-token")
    short = runner.invoke(cli, ["serve"])
    assert short.exit_code == 2
    assert "$RETRO_OPS_ADMIN_TOKEN: an admin token needs at least 16 characters (got 11)" in short.output
    monkeypatch.delenv("RETRO_OPS_ADMIN_TOKEN")
    exposed = runner.invoke(cli, ["serve", "--host", "0.0.0.0"])
    assert exposed.exit_code == 2 and "refusing to bind '0.0.0.0' without an admin token" in exposed.output
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_bind(host, None)
    for host in ("0.0.0.0", "10.1.2.3", "::", "example.org"):
        with pytest.raises(AdminTokenError, match=f"refusing to bind '{host}'"):
            check_bind(host, None)
        check_bind(host, TOKEN)
    with pytest.raises(AdminTokenError, match="admin token: an admin token needs at least 16"):
        create_app(None, admin_token="0123456789abcde")


def test_token_is_stored_as_a_keyed_hash(base, ws):
    holder, info, _ = base
    again = DeploymentHolder.start(ws, info.ref, "small", "test://limits-again", TOKEN)
    again.swap("small", TOKEN)
    rows = [d for d in ws.catalog.deployments() if d["endpoint"] in ("test://limits", "test://limits-again")]
    ids = {d["token_id"] for d in rows}
    assert len(rows) == 3 and len(ids) == 1  # one token, one stable id across starts and swaps
    [stored] = ids
    plain = hashlib.sha256(TOKEN.encode()).hexdigest()
    assert len(stored) == 32 and TOKEN not in stored and not plain.startswith(stored[:8])
    catalog_bytes = b"".join(p.read_bytes() for p in ws.settings.home.glob("catalog.db*"))
    assert TOKEN.encode() not in catalog_bytes and plain[:12].encode() not in catalog_bytes
    key = ws.settings.home / "secrets" / "token_id.key"
    assert key.stat().st_mode & 0o077 == 0  # readable by the server's user only


def test_checkpoint_not_matching_the_catalog_is_refused(base, sites, embedder, tmp_path):
    """It tampers with the catalog's checkpoint: the one of a home of its own (a copy of the
    module's site, holding the same model)."""
    import shutil

    from sites import open_home

    ws = open_home(sites.copy("small_trained", tmp_path / "site") / "home", embedder)
    info = ws.catalog.resolve_model(base[1].ref)
    copy = tmp_path / "ckpt"
    shutil.copytree(info.checkpoint_dir, copy)
    load_verified(replace(info, checkpoint_dir=str(copy)))  # an intact copy loads
    weights = copy / MODEL_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=f"model {info.ref}: {weights} hashes to"):
        load_verified(replace(info, checkpoint_dir=str(copy)))
    original = Path(info.checkpoint_dir) / MODEL_FILE
    kept = original.read_bytes()
    try:
        original.write_bytes(bytes(data))
        with pytest.raises(ModelIntegrityError, match="refusing to load a checkpoint that is not"):
            DeploymentHolder.start(ws, info.ref, "small", "test://tampered", TOKEN)
    finally:
        original.write_bytes(kept)
        ws.catalog.close()


def test_gate_is_fifo_bounded_and_lets_priority_work_first():
    """Real threads on the gate alone: waiters run one at a time in arrival order (no request
    starves behind later ones), a priority holder goes next, a full room refuses, a wait times out."""
    from retro_ops.errors import ServerOverloadedError
    from retro_ops.serving.admission import ComputeGate

    gate = ComputeGate(AdmissionConfig(max_queue=5, queue_timeout_s=10))
    order, inside, threads = [], [], []

    def hold(name, enter):
        with enter():
            inside.append(name)
            assert len(inside) == 1  # one holder at a time
            order.append(name)
            time.sleep(0.02)
            inside.remove(name)

    first = gate.admit()
    with gate.turn(first):
        for i in range(5):
            place = gate.admit()
            threads.append(threading.Thread(target=hold, args=(i, lambda p=place: gate.turn(p))))
            threads[-1].start()
            time.sleep(0.02)  # arrival order
        with pytest.raises(ServerOverloadedError, match="6 requests running or queued"):
            gate.admit()
        threads.append(threading.Thread(target=hold, args=("swap", gate.priority)))
        threads[-1].start()
        time.sleep(0.02)
    for thread in threads:
        thread.join(timeout=30)
    assert order == ["swap", 0, 1, 2, 3, 4] and gate.admitted == 0
    short = ComputeGate(AdmissionConfig(max_queue=1, queue_timeout_s=0.05))
    running, waiting = short.admit(), short.admit()
    with short.turn(running):
        with pytest.raises(ServerOverloadedError, match="waited 0.05 s for a turn"):
            with short.turn(waiting):
                pass
    assert short.admitted == 0
    with short.turn(short.admit()):  # the timed-out waiter left no trace
        assert short.admitted == 1


def test_wait_budget_bounds_the_work_ahead():
    """The wait budget admits a request only while the measured work ahead of it is at most
    `max_wait_services` of its own service times: behind one slow request a slow request still
    gets in (1 service ahead), a second does not (2 > 1), nor does a fast one (its own service
    time is far smaller); with the budget off only the queue bound applies."""
    from retro_ops.errors import ServerOverloadedError
    from retro_ops.serving.admission import ComputeGate

    def seeded(budget):
        gate = ComputeGate(AdmissionConfig(max_queue=8, max_wait_services=budget))
        for endpoint, seconds in (("slow", 0.05), ("fast", 0.002)):  # measured, not declared
            with gate.turn(gate.admit(endpoint)):
                time.sleep(seconds)
        return gate

    gate = seeded(1.0)
    running = gate.admit("slow")
    with gate.turn(running):
        waiting = gate.admit("slow")  # 1 slow service ahead <= 1 x its own
        with pytest.raises(ServerOverloadedError, match=r"s of work ahead, over 1 x this request's"):
            gate.admit("slow")  # 2 ahead
        with pytest.raises(ServerOverloadedError, match="of work ahead"):
            gate.admit("fast")  # 0.1 s ahead of a ~0.002 s request
        waiting.release()
    assert gate.admitted == 0
    gate.admit("fast").release()  # nothing ahead any more: admitted

    unbounded = seeded(None)
    with unbounded.turn(unbounded.admit("slow")):
        places = [unbounded.admit("fast") for _ in range(8)]  # only max_queue applies
        with pytest.raises(ServerOverloadedError, match="9 requests running or queued"):
            unbounded.admit("fast")
        for place in places:
            place.release()


SLOW_BYTE_S = 0.2  # a slow client's pace (the attack seen: one byte every 10 s, held forever)
N_SLOW = 100  # slow clients of each kind


class SlowClient:
    """A real socket sending its request at a trickle, one byte per SLOW_BYTE_S: `headers` never
    ends its headers; `body` declares Content-Length: 60000 and trickles the body; `kept` makes
    one whole request on a kept-alive connection, then trickles the next one's headers. `drive`
    records how long after its deadline started (connect / headers sent / response read) the
    server cut each, and what it said."""

    def __init__(self, port: int, kind: str):
        self.kind, self.cut_after, self.answer = kind, None, b""
        self.sock = socket.create_connection(("127.0.0.1", port))
        if kind == "body":
            self.sock.sendall(b"POST /retrieve HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
                              b"\r\nContent-Length: 60000\r\n\r\n")
        elif kind == "kept":
            self.sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(self.sock).startswith(b"HTTP/1.1 200")
        self.since = time.monotonic()
        if kind != "body":
            self.sock.sendall(b"POST /retrieve HTTP/1.1\r\n")

    def cut(self, answer: bytes) -> None:
        self.answer, self.cut_after = answer, time.monotonic() - self.since
        self.sock.close()

    @staticmethod
    def drive(clients: list["SlowClient"], give_up_s: float) -> None:
        """One thread for all of them (the server, in this process, shares the GIL with it): each
        live socket gets a byte every SLOW_BYTE_S; one the server writes to or closes is cut."""
        live, next_byte = {c.sock: c for c in clients}, time.monotonic() + SLOW_BYTE_S
        while live and time.monotonic() - min(c.since for c in live.values()) < give_up_s:
            readable, _, _ = select.select(list(live), [], [], max(0.0, next_byte - time.monotonic()))
            for sock in readable:
                client = live.pop(sock)
                try:
                    client.cut(sock.recv(4096))  # the 408, or b"" for a bare close
                except OSError as exc:
                    client.cut(repr(exc).encode())
            if time.monotonic() >= next_byte:
                next_byte += SLOW_BYTE_S
                for sock, client in list(live.items()):
                    try:
                        sock.sendall(b"x" if client.kind == "body" else b"X")
                    except OSError as exc:  # a reset or a broken pipe
                        live.pop(sock).cut(repr(exc).encode())
        for client in live.values():
            client.sock.close()  # never cut


def read_response(sock: socket.socket) -> bytes:
    """One HTTP response with a Content-Length body, read whole."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def timed(fn) -> float:
    started = time.perf_counter()
    assert fn().status_code == 200
    return time.perf_counter() - started


def test_slow_clients_are_cut_at_the_read_deadlines_while_health_and_retrieve_answer(base):
    """300 slow sockets (100 per kind) against a server with 1 s / 1.5 s deadlines: each is cut
    with a 408 at its deadline (not before, and without the deadlines never), while /health and
    /retrieve answer as fast as before they came, and a slow-but-in-time body is served."""
    limits = ConnectionLimits(header_timeout_s=1.0, body_timeout_s=1.5, max_connections=400)
    with serving(base, AdmissionConfig(), connections=limits) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        health = lambda: requests.get(f"{url}/health", timeout=10)  # noqa: E731
        retrieve = lambda: requests.post(f"{url}/retrieve", json={"text": "the whale", "k": 2},  # noqa: E731
                                         timeout=10)
        timed(retrieve)  # warm
        usual = {"health": [timed(health) for _ in range(10)], "retrieve": [timed(retrieve) for _ in range(5)]}
        slow = [SlowClient(port, kind) for kind in ("headers", "body", "kept") for _ in range(N_SLOW)]
        driver = threading.Thread(target=SlowClient.drive, args=(slow, 4.0))
        driver.start()
        during = {"health": [], "retrieve": []}
        in_time = socket.create_connection(("127.0.0.1", port))  # a body in 3 parts over 0.9 s
        body = b'{"text": "the whale", "k": 2}'
        in_time.sendall(b"POST /retrieve HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(body))
        for part in (body[:10], body[10:20], body[20:]):
            time.sleep(0.3)
            during["health"].append(timed(health))
            during["retrieve"].append(timed(retrieve))
            in_time.sendall(part)
        in_time_answer = read_response(in_time)
        in_time.close()
        while driver.is_alive():
            during["health"].append(timed(health))
            time.sleep(0.02)
    assert in_time_answer.startswith(b"HTTP/1.1 200") and b'"neighbours"' in in_time_answer
    for kind, limit in (("headers", 1.0), ("body", 1.5), ("kept", 1.0)):
        clients = [c for c in slow if c.kind == kind]
        cut = sorted(round(c.cut_after, 2) for c in clients if c.cut_after is not None)
        assert len(cut) == N_SLOW and limit - 0.05 <= cut[0] and cut[-1] <= limit + 0.75, (kind, cut)
        assert all(c.answer.startswith(b"HTTP/1.1 408") for c in clients), {c.answer[:60] for c in clients}
        what = "headers" if kind != "body" else "body"
        assert all(f"request {what} not received within {limit:g} s (read timeout)".encode() in c.answer
                   for c in clients)
    slowest = {k: [round(max(v[k]) * 1000, 1) for v in (usual, during)] for k in usual}  # ms: before, during
    assert len(during["health"]) >= 15 and max(during["health"]) < HEALTH_BOUND_S, slowest
    assert max(during["retrieve"]) < max(0.25, 3 * max(usual["retrieve"])), slowest


def test_connections_past_the_bound_get_a_fast_503_and_those_inside_are_served(base):
    with serving(base, AdmissionConfig(), connections=ConnectionLimits(max_connections=16)) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        held = []
        for _ in range(16):  # each made one request: open on the server, kept alive
            held.append(socket.create_connection(("127.0.0.1", port)))
            held[-1].sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(held[-1]).startswith(b"HTTP/1.1 200")
        started = time.perf_counter()
        refused = requests.get(f"{url}/health", timeout=10)
        took = time.perf_counter() - started
        body = b'{"text": "the whale", "k": 2}'
        held[0].sendall(b"POST /retrieve HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        inside = read_response(held[0])
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 5
        while (after := requests.get(f"{url}/health", timeout=10)).status_code != 200 \
                and time.monotonic() < deadline:
            time.sleep(0.02)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1", refused.text
    assert refused.json()["detail"] == "server busy: 17 connections open (limit 16); retry after 1 s"
    assert took < 0.2
    assert inside.startswith(b"HTTP/1.1 200") and b'"neighbours"' in inside
    assert after.status_code == 200  # the bound frees as connections close


def test_max_connections_must_fit_the_open_file_limit(home):
    result = CliRunner().invoke(cli, ["serve", "--max-connections", "100000000"])
    assert result.exit_code == 2
    assert "max connections 100000000 + 256 files of the server itself exceed the open-file limit" \
        in " ".join(result.output.split())


@pytest.mark.parametrize("batching", [None, BatchConfig()], ids=["one_by_one", "batched"])
def test_retrieve_past_its_time_limit_gets_504_and_gives_its_place_back(base, batching):
    """The compute slot held (as a long request holds it): /retrieve answers 504 at its own time
    limit instead of waiting for the slot, /health still answers, and once the slot is free the
    late query gives its place back without being computed and retrieval serves again."""
    admission = AdmissionConfig(retrieve_timeout_s=0.3, queue_timeout_s=5, max_wait_services=None)
    with serving(base, admission, batching=batching) as (url, served):
        assert post(url, "/retrieve", text="the whale", k=2)[0].status_code == 200
        gate = served.gate
        with gate.turn(gate.admit("generate")):
            late, took = post(url, "/retrieve", text="the whale", k=2)
            health = requests.get(f"{url}/health", timeout=10)
            waiting = gate.admitted
        deadline = time.monotonic() + 5
        while gate.admitted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gate.admitted == 0
        again, _ = post(url, "/retrieve", text="the whale", k=2)
        computed = requests.get(f"{url}/health", timeout=10).json()["batching"]
    assert late.status_code == 504, late.text
    assert late.json()["detail"] == "retrieval past its time limit (0.3 s)"
    assert 0.3 <= took < 1.3 and health.status_code == 200
    assert waiting == 2  # the held slot and the timed-out query, still in line until its turn
    assert again.status_code == 200 and len(again.json()["neighbours"]) == 2
    if batching is not None:  # the warm-up and `again` were encoded; the late query was not
        assert computed["queries"] == 2, computed
