"""Serving: throughput and latency of the real HTTP server (`retro-ops serve`) for /retrieve and
/generate at several client concurrencies, the retrieval vs model split of /generate, and a hot
swap of the retrieval set under /retrieve load (swap latency, requests lost, versions served).

Server: `retro-ops serve --model MODEL --set SET --port P` from this checkout's venv, started as a
subprocess with RETRO_OPS_HOME=--home and a random RETRO_OPS_ADMIN_TOKEN (passed by environment,
never on the command line), bound to 127.0.0.1 on a free port; the bench waits for GET /health,
and stops the server at the end with SIGINT (then SIGTERM, then SIGKILL), also on errors and on
Ctrl-C / SIGTERM of the bench. The server's stdout/stderr go to a temporary log whose tail is
shown if it fails; tracebacks in it are counted in the notes. Before timing: 3 untimed /retrieve
and 1 untimed /generate (cold costs in the JSON meta).

Load generator (this process, loopback only): C threads (`--clients`, 1,4,16), each with its own
keep-alive connection (`http.client`; `--load-client requests` for a `requests.Session`, about
5x the client CPU per request), started together; a thread takes the next request ticket while
fewer than N tickets were taken and the cell's time is not up, so a cell ends after S seconds or
N requests, whichever first, plus the requests still in flight (each client gets at least one).
  /retrieve  {"text": q, "k": --k (5)}: q cycles through a seeded shuffle of real sentences
             (8-40 words) of the repo's sotu and moby_dick corpora. S = --retrieve-seconds (10),
             N = --retrieve-requests (3000).
  /generate  {"prompt": p, "max_new_tokens": --new-tokens (64), "seed": i}: p cycles through
             8 real sotu passages of exactly --prompt-tokens (70) tokens of the embedder's
             tokenizer (as the server counts them), each from a different speech, starting at a
             sentence a third into it, so the first chunk (m = 64) completes in the prompt and is
             retrieved for, and a second one completes during generation. S = --generate-seconds
             (15), N = --generate-requests (12).
req/s = successful responses / (last response - first request) of the cell. Latency = client
wall time of one request (queueing at the server included). For /generate, `retrieval_ms` and
`model_ms` come from the server's response (Generator timings: decode + embed + search + fetch
of neighbours vs forward passes + sampling); retrieval share = sum(retrieval_ms) /
sum(retrieval_ms + model_ms); "wait + HTTP" = latency - retrieval_ms - model_ms, the time the
request spent queued behind the server's compute lock plus HTTP/JSON overhead. Server cores
busy = the server process's CPU seconds (from /proc) / cell wall seconds; client cores busy the
same for this process: both share the machine's cores.

The server runs every /retrieve and /generate under one compute gate (`DeploymentHolder.
gate`), so requests are served one at a time: throughput plateaus at ~1 / (service time)
and extra clients only add queueing latency.

Hot swap: `--swap-clients` (4) threads call /retrieve continuously; after `--swap-hold` (3) s,
PUT /deployment/retrieval-set {"retrieval_set": --swap-set} with the bearer token, hold again,
PUT back to the starting set, hold again, stop. Per swap: HTTP status, latency (ms), requests in
flight during the swap window (started before the PUT's response and ended after it was sent),
their errors and worst latency. Over the whole phase: requests, errors, and requests lost
(tickets taken without a response or an error: should be 0). Every response's
`retrieval_set_version` must be one of the two versions, and consistent with the swaps: a
request that ended before the first PUT was sent must name the start version, one wholly
between the two swaps the swapped-to version, one that started after the second PUT returned
the start version (requests overlapping a swap may name either); violations are counted.
Each swap is recorded in the home's catalog (deployments), like any real swap.

Generation log (`--log-compare`): instead of the parts above, /generate cells at `--clients`
with the generation log off (RETRO_OPS_GENERATION_LOG=off) and on (defaults: batches of 32 or
2 s, MLflow traces on), each mode in its own server process, alternated off/on `--log-rounds`
times in the same run so that drift of the shared machine hits both alike; p50/p99 are pooled
per mode and client count, reported as on/off ratios. Then, in this process, the rows/s the
log's writer sustains (records of real 64-token sotu passages with 2 retrievals of 2 neighbours:
embedding + LanceDB commit per batch, with and without MLflow traces) and the cost of
`record()` on the request path. `--build-home` builds a small home first (bench/overload.py's).
`--batching-compare` (#17) measures only the /retrieve cells, on two servers running side by side
with the same arguments but `--batch-wait-ms -1` (one query per encoder call, the old behaviour)
and `--batch-wait-ms` B (`--batch-wait`, 2: concurrent queries micro-batched): in each of
`--batching-rounds` rounds, per client count, one cell on each (order alternating by round, so
drift of a shared machine hits both alike), and prints pooled req/s, p50 and p99 per mode with
the batched/one-by-one ratios, the median and worst paired (same round) ratio, server CPU per
request and the mean queries per encoder call (from /health).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from _common import (
    REPO_ROOT, Column, base_parser, elapsed, environment, free_port, load_documents, log, parse_int_list, report,
    report_tables,
)

HOST = "127.0.0.1"




def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__, "retro-ops home with a trained model and published indices of --set and --swap-set")
    parser.add_argument("--model", default="retro", help="model to serve (retro: the newest)")
    parser.add_argument("--set", dest="retrieval_set", default="sotu",
                        help="retrieval set the server starts with (sotu)")
    parser.add_argument("--swap-set", default="moby_dick",
                        help="retrieval set swapped to and back from (moby_dick)")
    parser.add_argument("--port", type=int, default=0, help="server port (0 = a free one)")
    parser.add_argument("--batching-compare", action="store_true",
                        help="only /retrieve: one-by-one vs micro-batched servers, ABAB (#17)")
    parser.add_argument("--batch-wait", type=float, default=2.0,
                        help="--batch-wait-ms of the micro-batched server (2)")
    parser.add_argument("--batching-rounds", type=int, default=1,
                        help="ABAB rounds of the batching comparison (1)")
    parser.add_argument("--batch-gathers", type=lambda t: [int(v) for v in t.split(",")], default=[0],
                        metavar="G,G,...", help="batched servers of the batching comparison, one "
                             "per --batch-gather-ms value (0: wait only --batch-wait)")
    parser.add_argument("--batching-endpoint", choices=["retrieve", "generate"], default="retrieve",
                        help="what the batching comparison sends (retrieve; generate: --prompt-tokens "
                             "prompts, --new-tokens each, --generate-seconds per cell)")
    parser.add_argument("--load-client", choices=["http.client", "requests"], default="http.client",
                        help="the load generator's HTTP client: one keep-alive http.client "
                             "connection per thread (default), or a requests.Session (the "
                             "tables before #17's re-measure)")
    parser.add_argument("--clients", type=parse_int_list, default=[1, 4, 16],
                        help="concurrent clients per cell, comma-separated (1,4,16)")
    parser.add_argument("--k", type=int, default=5, help="neighbours per /retrieve (5)")
    parser.add_argument("--retrieve-seconds", type=float, default=10.0,
                        help="time bound of a /retrieve cell (10)")
    parser.add_argument("--retrieve-requests", type=int, default=3000,
                        help="request bound of a /retrieve cell (3000)")
    parser.add_argument("--new-tokens", type=int, default=64, help="max_new_tokens per /generate (64)")
    parser.add_argument("--prompt-tokens", type=int, default=70,
                        help="prompt length in tokens, >= 64 so a chunk completes (70)")
    parser.add_argument("--generate-seconds", type=float, default=15.0,
                        help="time bound of a /generate cell (15)")
    parser.add_argument("--generate-requests", type=int, default=12,
                        help="request bound of a /generate cell, raised to the client count (12)")
    parser.add_argument("--skip-generate", action="store_true", help="no /generate cells")
    parser.add_argument("--swap-clients", type=int, default=4,
                        help="/retrieve clients running during the swaps (4)")
    parser.add_argument("--swap-hold", type=float, default=3.0,
                        help="seconds of load before, between and after the two swaps (3)")
    parser.add_argument("--server-threads", type=int, default=0,
                        help="OMP_NUM_THREADS/MKL_NUM_THREADS for the server (0 = inherit)")
    parser.add_argument("--startup-timeout", type=float, default=180.0,
                        help="seconds to wait for GET /health (180)")
    parser.add_argument("--seed", type=int, default=0, help="query/prompt shuffle (0)")
    parser.add_argument("--log-compare", action="store_true",
                        help="only /generate with the generation log off vs on, and the log's rows/s")
    parser.add_argument("--log-rounds", type=int, default=2, help="off/on server pairs (2)")
    parser.add_argument("--log-rows", type=int, default=256, help="rows fed to the log's writer (256)")
    parser.add_argument("--build-home", action="store_true",
                        help="build a small home if none (12 moby_dick chapters, RETRO trained 10 steps)")
    args = parser.parse_args(argv)
    Load.client = args.load_client
    for name in ("k", "new_tokens", "prompt_tokens", "retrieve_requests", "generate_requests",
                 "swap_clients"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.prompt_tokens < 64:
        parser.error("--prompt-tokens must be >= 64 so that a chunk completes in the prompt")
    for name in ("retrieve_seconds", "generate_seconds", "swap_hold", "startup_timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if not 0 <= args.port <= 65535 or args.server_threads < 0:
        parser.error("--port must be 0..65535 and --server-threads >= 0")
    if args.swap_set == args.retrieval_set:
        parser.error("--swap-set must differ from --set")
    # every client may wait in the server's queue: these cells measure queueing, not shedding
    # (bench/overload.py measures that)
    args.max_queue = max(args.clients + [args.swap_clients])
    args.max_wait = 0  # its cells measure queueing; shedding is bench/overload.py's
    return args


# --- the server --------------------------------------------------------------------------------

def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process from /proc (Linux), None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Server:
    """`retro-ops serve` as a subprocess on loopback; a context manager that always stops it."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str] | None = None):
        self.home = args.home.expanduser().resolve()
        self.port = args.port or free_port(HOST)
        self.base = f"http://{HOST}:{self.port}"
        self.token = secrets.token_urlsafe(32)
        self.argv = [str(Path(sys.executable).with_name("retro-ops")), "serve", "--model",
                     args.model, "--set", args.retrieval_set, "--host", HOST,
                     "--port", str(self.port)]
        if getattr(args, "max_queue", None) is not None:
            self.argv += ["--max-queue", str(args.max_queue)]
        if getattr(args, "max_wait", None) is not None:
            self.argv += ["--max-wait", str(args.max_wait)]
        if getattr(args, "batch_wait_ms", None) is not None:
            self.argv += ["--batch-wait-ms", str(args.batch_wait_ms)]
        if getattr(args, "batch_gather_ms", None) is not None:
            self.argv += ["--batch-gather-ms", str(args.batch_gather_ms)]
        if not Path(self.argv[0]).exists():  # not run with the venv's python
            self.argv[0] = str(REPO_ROOT / ".venv" / "bin" / "retro-ops")
        self.env = {**os.environ, "RETRO_OPS_HOME": str(self.home),
                    "RETRO_OPS_ADMIN_TOKEN": self.token, **(env or {})}
        if args.server_threads:
            self.env.update(OMP_NUM_THREADS=str(args.server_threads),
                            MKL_NUM_THREADS=str(args.server_threads))
        self.startup_timeout = args.startup_timeout
        self.proc: subprocess.Popen | None = None
        self.log_file = tempfile.NamedTemporaryFile("w+", prefix="retro-ops-serve-", suffix=".log",
                                                    delete=False)
        self.startup_s = float("nan")

    def __enter__(self) -> "Server":
        log(f"starting {' '.join(self.argv[1:])} (home {self.home})")
        t = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self.log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=REPO_ROOT)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t
        log(f"server pid {self.proc.pid} healthy on {self.base} after {self.startup_s:.1f} s")
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode} before it was "
                                 f"healthy:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.25)
        raise SystemExit(f"server not healthy after {self.startup_timeout:.0f} s:\n"
                         f"{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for send, wait_s in ((lambda: proc.send_signal(signal.SIGINT), 20),
                             (proc.terminate, 10), (proc.kill, 10)):
            with contextlib.suppress(ProcessLookupError):
                send()
            try:
                proc.wait(timeout=wait_s)
                log(f"server stopped (exit {proc.returncode})")
                return
            except subprocess.TimeoutExpired:
                continue
        log(f"warning: server pid {proc.pid} did not exit")

    def cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self.proc.pid) if self.proc else None

    def log_text(self) -> str:
        self.log_file.flush()
        return Path(self.log_file.name).read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def swap(self, retrieval_set: str) -> requests.Response:
        return requests.put(f"{self.base}/deployment/retrieval-set",
                            json={"retrieval_set": retrieval_set},
                            headers={"Authorization": f"Bearer {self.token}"}, timeout=120)


def raise_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so `with Server(...)` stops the server on the way out."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


# --- load generation ---------------------------------------------------------------------------

@dataclass
class Result:
    start: float  # time.perf_counter() at send
    end: float  # at response or error
    status: int | None  # HTTP status, None on an exception (timeout, connection error)
    fields: dict[str, Any] = field(default_factory=dict)  # extracted from a 200 response
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def latency_ms(self) -> float:
        return 1e3 * (self.end - self.start)


@dataclass
class Cell:
    results: list[Result]
    tickets: int  # requests started
    wall_s: float  # first send .. last response
    server_cpu_s: float | None
    client_cpu_s: float

    @property
    def ok(self) -> list[Result]:
        return [r for r in self.results if r.ok]


RequestMaker = Callable[[int], tuple[str, dict]]  # ticket -> (path, JSON body)
Extractor = Callable[[dict], dict]  # response JSON -> the fields kept


class _RawPoster:
    """POST JSON over one keep-alive `http.client` connection: about a fifth of `requests`'
    client CPU per call, which matters when the load generator shares the server's 2 cores."""

    def __init__(self, base: str, timeout_s: float):
        host, port = base.removeprefix("http://").rsplit(":", 1)
        self.host, self.port, self.timeout_s, self.conn = host, int(port), timeout_s, None

    def __call__(self, path: str, body: dict) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        self.conn.request("POST", path, json.dumps(body).encode(),
                          {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        payload = response.read()
        if response.will_close:
            self.reset()
        return response.status, payload

    def reset(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    close = reset


class _RequestsPoster:
    """The same through a `requests.Session` (`--load-client requests`: the earlier tables)."""

    def __init__(self, base: str, timeout_s: float):
        self.base, self.timeout_s, self.session = base, timeout_s, requests.Session()

    def __call__(self, path: str, body: dict) -> tuple[int, bytes]:
        response = self.session.post(f"{self.base}{path}", json=body, timeout=self.timeout_s)
        return response.status_code, response.content

    def reset(self) -> None:
        pass

    def close(self) -> None:
        self.session.close()


class Load:
    """C client threads sending requests until `seconds` pass or `max_requests` were started,
    or until `stop` is set; every started request ends as a Result."""

    client = "http.client"  # or "requests" (`--load-client`)

    def __init__(self, server: Server, clients: int, make: RequestMaker, extract: Extractor, *,
                 seconds: float, max_requests: int, timeout_s: float):
        self.server, self.clients, self.make, self.extract = server, clients, make, extract
        self.seconds, self.max_requests, self.timeout_s = seconds, max_requests, timeout_s
        self.stop = threading.Event()
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._tickets = 0
        self._deadline = 0.0
        self._threads: list[threading.Thread] = []

    def _take(self) -> int | None:
        with self._lock:
            if (self.stop.is_set() or self._tickets >= self.max_requests
                    or time.perf_counter() >= self._deadline):
                return None
            self._tickets += 1
            return self._tickets - 1

    def _client(self, start: threading.Barrier) -> None:
        post = (_RequestsPoster if self.client == "requests" else _RawPoster)(self.server.base, self.timeout_s)
        try:
            start.wait()
            while (ticket := self._take()) is not None:
                path, body = self.make(ticket)
                t0 = time.perf_counter()
                try:
                    status, payload = post(path, body)
                    end = time.perf_counter()
                    if status == 200:
                        result = Result(t0, end, 200, self.extract(json.loads(payload)))
                    else:
                        result = Result(t0, end, status, error=payload[:200].decode(errors="replace"))
                except (OSError, http.client.HTTPException, requests.RequestException, ValueError) as exc:
                    post.reset()
                    result = Result(t0, time.perf_counter(), None, error=repr(exc)[:200])
                with self._lock:
                    self.results.append(result)
        finally:
            post.close()

    def start(self) -> "Load":
        barrier = threading.Barrier(self.clients + 1)
        self._threads = [threading.Thread(target=self._client, args=(barrier,), daemon=True)
                         for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()
        self._cpu0 = (self.server.cpu_seconds(), time.process_time())
        self._deadline = time.perf_counter() + self.seconds
        barrier.wait()
        return self

    def join(self) -> Cell:
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + self.seconds + 60)
        server_cpu, client_cpu = self.server.cpu_seconds(), time.process_time()
        with self._lock:
            results = sorted(self.results, key=lambda r: r.start)
            tickets = self._tickets
        wall = (max(r.end for r in results) - results[0].start) if results else float("nan")
        s0, c0 = self._cpu0
        return Cell(results, tickets, wall,
                    server_cpu - s0 if server_cpu is not None and s0 is not None else None,
                    client_cpu - c0)

    def run(self) -> Cell:
        return self.start().join()


def percentile(values: list[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if values else None


def latency_stats(cell: Cell) -> dict[str, Any]:
    ok = cell.ok
    lat = [r.latency_ms for r in ok]
    return {
        "requests": len(cell.results), "ok": len(ok), "errors": len(cell.results) - len(ok),
        "lost": cell.tickets - len(cell.results),
        "wall_s": cell.wall_s, "req_per_s": len(ok) / cell.wall_s if ok else 0.0,
        "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99), "mean_ms": statistics.mean(lat) if lat else None,
        "max_ms": max(lat) if lat else None,
        "server_cores_busy": (cell.server_cpu_s / cell.wall_s
                              if cell.server_cpu_s is not None and ok else None),
        "client_cores_busy": cell.client_cpu_s / cell.wall_s if ok else None,
        "error_samples": sorted({f"{r.status}: {r.error}" for r in cell.results if not r.ok})[:3],
    }


# --- inputs ------------------------------------------------------------------------------------

def query_texts(seed: int, n: int = 600) -> list[str]:
    """A seeded shuffle of real sentences of 8-40 words from the sotu and moby_dick corpora."""
    sentences = []
    for _, text in load_documents(["sotu", "moby_dick"]):
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            if 8 <= len(sentence.split()) <= 40:
                sentences.append(sentence)
    rng = random.Random(seed)
    return rng.sample(sentences, min(n, len(sentences)))


def generation_prompts(home: Path, n_tokens: int, count: int = 8) -> list[str]:
    """`count` passages of exactly `n_tokens` tokens (the server's tokenizer, no special tokens),
    each from a different sotu speech, starting at a sentence a third of the way in."""
    from retro_ops.features.chunking import load_tokenizer
    from retro_ops.features.embedder import default_model_dir
    from retro_ops.settings import Settings

    settings = Settings.from_env({**os.environ, "RETRO_OPS_HOME": str(home)})
    tokenizer = load_tokenizer(settings.embedder_path or default_model_dir())
    docs = load_documents(["sotu"])
    step = max(1, len(docs) // count)
    prompts = []
    for _, text in docs[::step]:
        cut = text.find(". ", len(text) // 3)
        passage = text[cut + 2 if cut >= 0 else 0:]
        offsets = tokenizer(passage[:20 * n_tokens], add_special_tokens=False,
                            return_offsets_mapping=True)["offset_mapping"]
        if len(offsets) >= n_tokens:
            prompt = passage[:offsets[n_tokens - 1][1]]
            if len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) == n_tokens:
                prompts.append(prompt)
        if len(prompts) == count:
            break
    if not prompts:
        raise SystemExit(f"no sotu passage of {n_tokens} tokens found")
    return prompts


def cycle_maker(items: list[Any], build: Callable[[Any, int], tuple[str, dict]]) -> RequestMaker:
    return lambda ticket: build(items[ticket % len(items)], ticket)


def retrieve_fields(body: dict) -> dict:
    return {"set": body["retrieval_set"], "version": body["retrieval_set_version"],
            "neighbours": len(body["neighbours"])}


def generate_fields(body: dict) -> dict:
    return {"set": body["retrieval_set"], "version": body["retrieval_set_version"],
            "retrieval_ms": body["retrieval_ms"], "model_ms": body["model_ms"],
            "prompt_tokens": body["prompt_tokens"], "new_tokens": body["new_tokens"],
            "chunks": len(body["chunks"]),
            "neighbours": sum(len(c["neighbours"]) for c in body["chunks"])}


# --- the three parts ---------------------------------------------------------------------------

def warm_up(server: Server, queries: list[str], prompts: list[str], args) -> dict[str, Any]:
    cold: dict[str, Any] = {"retrieve_ms": []}
    for q in queries[-3:]:
        t = time.perf_counter()
        r = requests.post(f"{server.base}/retrieve", json={"text": q, "k": args.k}, timeout=120)
        r.raise_for_status()
        cold["retrieve_ms"].append(round(1e3 * (time.perf_counter() - t), 1))
    if not args.skip_generate:
        t = time.perf_counter()
        r = requests.post(f"{server.base}/generate", json={"prompt": prompts[-1], "seed": 0,
                                                          "max_new_tokens": args.new_tokens},
                          timeout=300)
        r.raise_for_status()
        body = r.json()
        cold["generate"] = {"wall_ms": round(1e3 * (time.perf_counter() - t), 1),
                            **{key: body[key] for key in ("retrieval_ms", "model_ms",
                                                          "prompt_tokens", "new_tokens")},
                            "chunks": len(body["chunks"])}
    return cold


def batching_counters(server: Server) -> dict | None:
    return requests.get(f"{server.base}/health", timeout=10).json().get("batching")


def per_encoder_call(before: dict | None, after: dict | None) -> float | None:
    """Queries answered per encoder call between two /health readings (None: not batching)."""
    if before and after and after["encoder_calls"] > before["encoder_calls"]:
        return (after["queries"] - before["queries"]) / (after["encoder_calls"] - before["encoder_calls"])
    return None


def bench_retrieve(server: Server, queries: list[str], args, start_version: int,
                   keep_latencies: bool = False) -> list[dict[str, Any]]:
    make = cycle_maker(queries, lambda q, i: ("/retrieve", {"text": q, "k": args.k}))
    rows = []
    for clients in args.clients:
        before = batching_counters(server)
        cell = Load(server, clients, make, retrieve_fields, seconds=args.retrieve_seconds,
                    max_requests=args.retrieve_requests, timeout_s=60).run()
        row = {"endpoint": "/retrieve", "clients": clients, **latency_stats(cell),
               "queries_per_encoder_call": per_encoder_call(before, batching_counters(server))}
        ok = cell.ok
        row["short_answers"] = sum(r.fields["neighbours"] < args.k for r in ok)
        row["wrong_version"] = sum(r.fields["version"] != start_version for r in ok)
        if keep_latencies:
            row["latencies_ms"] = [r.latency_ms for r in ok]
        rows.append(row)
        log(f"/retrieve x{clients}: {row['ok']} ok, {row['errors']} errors, "
            f"{row['req_per_s']:.1f} req/s, p50 {row['p50_ms'] or float('nan'):.0f} ms")
    return add_scaling(rows)


def bench_generate(server: Server, prompts: list[str], args,
                   start_version: int) -> list[dict[str, Any]]:
    make = cycle_maker(prompts, lambda p, i: ("/generate", {"prompt": p, "seed": i,
                                                          "max_new_tokens": args.new_tokens}))
    rows = []
    for clients in args.clients:
        before = batching_counters(server)
        cell = Load(server, clients, make, generate_fields, seconds=args.generate_seconds,
                    max_requests=max(args.generate_requests, clients), timeout_s=600).run()
        row = {"endpoint": "/generate", "clients": clients, **latency_stats(cell),
               "queries_per_encoder_call": per_encoder_call(before, batching_counters(server))}
        ok = cell.ok
        row["latencies_ms"] = [r.latency_ms for r in ok]
        if ok:
            retrieval = [r.fields["retrieval_ms"] for r in ok]
            model = [r.fields["model_ms"] for r in ok]
            row.update(
                retrieval_ms=statistics.mean(retrieval), model_ms=statistics.mean(model),
                retrieval_share=sum(retrieval) / (sum(retrieval) + sum(model)),
                wait_http_ms=statistics.mean(r.latency_ms - r.fields["retrieval_ms"]
                                             - r.fields["model_ms"] for r in ok),
                compute_ms=statistics.mean(a + b for a, b in zip(retrieval, model)),
                tokens_per_s=sum(r.fields["new_tokens"] for r in ok) / cell.wall_s,
                prompt_tokens=statistics.mean(r.fields["prompt_tokens"] for r in ok),
                new_tokens=statistics.mean(r.fields["new_tokens"] for r in ok),
                retrievals_per_request=statistics.mean(r.fields["chunks"] for r in ok),
                neighbours_per_request=statistics.mean(r.fields["neighbours"] for r in ok),
                wrong_version=sum(r.fields["version"] != start_version for r in ok))
        rows.append(row)
        log(f"/generate x{clients}: {row['ok']} ok, {row['errors']} errors, "
            f"{row['req_per_s']:.2f} req/s, p50 {row['p50_ms'] or float('nan'):.0f} ms")
    return add_scaling(rows)


def add_scaling(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """req/s relative to the fewest-clients row of the same run."""
    base = min(rows, key=lambda r: r["clients"])["req_per_s"]
    for row in rows:
        row["rps_vs_fewest"] = row["req_per_s"] / base if base else None
    return rows


def bench_swap(server: Server, queries: list[str], args, start: dict[str, Any]
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    make = cycle_maker(queries, lambda q, i: ("/retrieve", {"text": q, "k": args.k}))
    hold = args.swap_hold
    load = Load(server, args.swap_clients, make, retrieve_fields, seconds=3 * hold + 300,
                max_requests=10**6, timeout_s=120).start()
    swaps = []
    try:
        for target in (args.swap_set, args.retrieval_set):
            time.sleep(hold)
            t0 = time.perf_counter()
            try:
                response = server.swap(target)
                status, body = response.status_code, (response.json() if response.ok else {})
                detail = "" if response.ok else response.text[:200]
            except requests.RequestException as exc:
                status, body, detail = None, {}, repr(exc)[:200]
            t1 = time.perf_counter()
            swaps.append({"t0": t0, "t1": t1, "target": target, "status": status,
                          "body": body, "detail": detail})
            log(f"swap to {target}: HTTP {status} in {1e3 * (t1 - t0):.0f} ms {detail}")
        time.sleep(hold)
    finally:
        load.stop.set()
        cell = load.join()

    start_v = start["retrieval_set_version"]
    swapped_v = (swaps[0]["body"].get("current", {}).get("retrieval_set_version")
                 if swaps and swaps[0]["status"] == 200 else None)
    allowed = {start_v, swapped_v} - {None}
    ok = cell.ok
    seen: dict[Any, int] = {}
    for r in ok:
        seen[r.fields["version"]] = seen.get(r.fields["version"], 0) + 1
    violations = 0
    for r in ok:
        v = r.fields["version"]
        if v not in allowed:
            violations += 1
        elif len(swaps) == 2 and swapped_v is not None:
            if r.end < swaps[0]["t0"] and v != start_v:
                violations += 1
            elif swaps[0]["t1"] < r.start and r.end < swaps[1]["t0"] and v != swapped_v:
                violations += 1
            elif r.start > swaps[1]["t1"] and v != start_v:
                violations += 1
    steady = [r.latency_ms for r in ok
              if not any(r.start < s["t1"] and r.end > s["t0"] for s in swaps)]
    rows = []
    for s in swaps:
        during = [r for r in cell.results if r.start < s["t1"] and r.end > s["t0"]]
        current = s["body"].get("current", {})
        rows.append({
            "swap": f"{s['body'].get('previous', {}).get('retrieval_set', '?')} -> {s['target']}",
            "status": s["status"], "swap_ms": 1e3 * (s["t1"] - s["t0"]),
            "to_version": current.get("retrieval_set_version"),
            "to_chunks": current.get("chunks"),
            "in_flight": len(during), "in_flight_errors": sum(not r.ok for r in during),
            "in_flight_max_ms": max((r.latency_ms for r in during if r.ok), default=None),
            "detail": s["detail"],
        })
    summary = {
        "clients": args.swap_clients, "phase_s": cell.wall_s, "requests": len(cell.results),
        "ok": len(ok), "errors": len(cell.results) - len(ok),
        "lost": cell.tickets - len(cell.results), "versions_seen": seen,
        "allowed_versions": sorted(allowed), "version_violations": violations,
        "steady_p50_ms": percentile(steady, 50), "steady_p99_ms": percentile(steady, 99),
        "req_per_s": len(ok) / cell.wall_s if ok else 0.0,
        "error_samples": sorted({f"{r.status}: {r.error}" for r in cell.results if not r.ok})[:3],
    }
    for row in rows:
        row.update({key: summary[key] for key in ("requests", "errors", "lost",
                                                   "version_violations")})
    return rows, summary


def joined(rows: list[dict[str, Any]], key: str, fmt: str) -> str:
    return ", ".join("-" if row.get(key) is None else fmt.format(row[key]) for row in rows)


# --- main --------------------------------------------------------------------------------------

def compare_batching(args) -> None:
    """/retrieve cells on a one-by-one server and a micro-batched one, both running, cells
    alternating between them (A B per client count per round)."""
    queries = query_texts(args.seed)
    generate = args.batching_endpoint == "generate"
    prompts = generation_prompts(args.home.expanduser().resolve(), args.prompt_tokens) if generate else []
    meta, load_start = environment(), os.getloadavg()[0]
    modes = (("one by one", -1.0, None),
             *((f"batched ({args.batch_wait:g} ms, gather {g} ms)", args.batch_wait, g) for g in args.batch_gathers))
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        servers = {}
        for mode, wait, gather in modes:
            server = stack.enter_context(Server(argparse.Namespace(
                **{**vars(args), "batch_wait_ms": wait, "batch_gather_ms": gather})))
            warm_up(server, queries, prompts, argparse.Namespace(**{**vars(args), "skip_generate": not generate}))
            servers[mode] = (server, requests.get(f"{server.base}/health", timeout=10).json())
        for round_ in range(args.batching_rounds):
            for clients in args.clients:
                for mode, *_ in modes if round_ % 2 == 0 else modes[::-1]:
                    server, start = servers[mode]
                    one = argparse.Namespace(**{**vars(args), "clients": [clients]})
                    [row] = (bench_generate(server, prompts, one, start["retrieval_set_version"]) if generate
                             else bench_retrieve(server, queries, one, start["retrieval_set_version"],
                                                 keep_latencies=True))
                    cells.setdefault((mode, clients), []).append({**row, "round": round_})
    table = []
    for clients in args.clients:
        base_cells = cells[(modes[0][0], clients)]
        for mode, *_ in modes:
            runs = cells[(mode, clients)]
            latencies = [x for run in runs for x in run.pop("latencies_ms")]
            wall, ok = sum(r["wall_s"] for r in runs), sum(r["ok"] for r in runs)
            busy = [r["server_cores_busy"] * r["wall_s"] for r in runs if r.get("server_cores_busy") is not None]
            calls = [r["queries_per_encoder_call"] for r in runs if r.get("queries_per_encoder_call")]
            paired = [r["req_per_s"] / b["req_per_s"] for r, b in zip(runs, base_cells) if b["req_per_s"]]
            table.append({"clients": clients, "mode": mode, "ok": ok,
                          "errors": sum(r["errors"] for r in runs), "req_per_s": ok / wall if wall else 0.0,
                          "paired_ratio_median": statistics.median(paired) if paired else None,
                          "paired_ratio_min": min(paired) if paired else None,
                          "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
                          "server_cpu_ms_per_req": 1e3 * sum(busy) / ok if busy and ok else None,
                          "queries_per_encoder_call": statistics.mean(calls) if calls else None,
                          "client_cores_busy": statistics.mean(r["client_cores_busy"] or 0 for r in runs)})
    by_key = {(r["mode"], r["clients"]): r for r in table}
    for row in table:
        base = by_key[(modes[0][0], row["clients"])]
        row["rps_vs_one_by_one"] = row["req_per_s"] / base["req_per_s"] if base["req_per_s"] else None
        row["p99_vs_one_by_one"] = (row["p99_ms"] / base["p99_ms"]) if base.get("p99_ms") else None
        cpu, base_cpu = row["server_cpu_ms_per_req"], base["server_cpu_ms_per_req"]
        row["cpu_vs_one_by_one"] = cpu / base_cpu if cpu and base_cpu else None
    columns = [Column("clients", "clients"), Column("mode", "mode"), Column("ok", "ok"),
               Column("errors", "errors"), Column("req_per_s", "req/s", "{:.1f}"),
               Column("rps_vs_one_by_one", "req/s vs one by one", "{:.2f}x"),
               Column("paired_ratio_median", "median paired ratio", "{:.2f}x"),
               Column("paired_ratio_min", "worst paired ratio", "{:.2f}x"),
               Column("p50_ms", "p50 ms", "{:.0f}"), Column("p99_ms", "p99 ms", "{:.0f}"),
               Column("p99_vs_one_by_one", "p99 vs one by one", "{:.2f}x"),
               Column("server_cpu_ms_per_req", "server CPU ms/req", "{:.1f}"),
               Column("cpu_vs_one_by_one", "CPU/req vs one by one", "{:.2f}x"),
               Column("queries_per_encoder_call", "queries/encoder call", "{:.1f}"),
               Column("client_cores_busy", "client cores busy", "{:.2f}")]
    meta.update(load_avg_start=load_start, load_avg_end=os.getloadavg()[0], rounds=args.batching_rounds,
                cells={f"{m}|{c}": v for (m, c), v in cells.items()},
                args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()})
    notes = [f"{args.batching_rounds} round(s); in each, per client count, one cell on each server "
             f"(both running; order alternating by round); endpoint /{args.batching_endpoint}. "
             f"req/s = all ok responses / all cell seconds of that mode; p50/p99 over all its "
             f"latencies; paired ratio = batched / one-by-one req/s of the two cells of one round. k={args.k}; "
             + (f"{args.generate_seconds:g} s or {max(args.generate_requests, 1)} requests per cell "
                f"(at least one per client), {args.new_tokens} new tokens. " if generate else
                f"{args.retrieve_seconds:g} s or {args.retrieve_requests} requests per cell. ")
             + f"Machine: "
             f"{meta['processor']}, os.cpu_count()={meta['cpu_count']}, load avg {load_start:.2f} "
             f"at start, {os.getloadavg()[0]:.2f} at end (shared: compare rows of this run only); "
             f"load generator: {args.load_client}."]
    report(f"serve_batching_{args.batching_endpoint}", columns, table, meta, notes)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    home = args.home.expanduser().resolve()
    if not (home / "catalog.db").exists() and args.build_home:
        from overload import build_home

        build_home(home, 12, 10)
    if not (home / "catalog.db").exists():
        raise SystemExit(f"no retro-ops home at {home} (see --home)")
    if args.log_compare:
        from serve_log import compare_log

        return compare_log(args, home)
    if args.batching_compare:
        return compare_batching(args)
    load_start = os.getloadavg()[0]
    raise_on_sigterm()
    log("loading query texts and prompts")
    queries = query_texts(args.seed)
    prompts = [] if args.skip_generate else generation_prompts(home, args.prompt_tokens)
    meta = environment()  # before the server starts: its imports stay off the timed cells

    with Server(args) as server:
        start = requests.get(f"{server.base}/health", timeout=10).json()
        cold = warm_up(server, queries, prompts, args)
        log(f"warm-up done: {cold}")
        retrieve_rows = bench_retrieve(server, queries, args, start["retrieval_set_version"])
        generate_rows = ([] if args.skip_generate else
                         bench_generate(server, prompts, args, start["retrieval_set_version"]))
        swap_rows, swap_summary = bench_swap(server, queries, args, start)
        end_state = requests.get(f"{server.base}/health", timeout=10).json()
        server.stop()
        server_log = server.log_text()
        startup_s = server.startup_s

    meta.update(
        server_argv=server.argv[1:], server_threads_env=args.server_threads or "(inherited)",
        home=str(home), startup_s=startup_s, deployment_start=start, deployment_end=end_state,
        cold=cold, queries=len(queries), prompts=prompts, swap=swap_summary,
        server_log_tracebacks=server_log.count("Traceback"),
        server_log_tail=server_log.splitlines()[-20:], load_avg_start=load_start,
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        elapsed_s=elapsed())

    load_cols = [
        Column("clients", "clients"), Column("ok", "ok"), Column("errors", "errors"),
        Column("req_per_s", "req/s", "{:.1f}"),
        Column("rps_vs_fewest", f"req/s vs {min(args.clients)} client(s)", "{:.2f}x"),
        Column("p50_ms", "p50 ms", "{:.0f}"), Column("p95_ms", "p95 ms", "{:.0f}"),
        Column("p99_ms", "p99 ms", "{:.0f}"),
        Column("server_cores_busy", "server cores", "{:.2f}"),
        Column("client_cores_busy", "client cores", "{:.2f}"),
    ]
    tables = [(f"/retrieve (k={args.k}, {args.retrieve_seconds:g} s or "
               f"{args.retrieve_requests} requests per cell)", load_cols, retrieve_rows)]
    if generate_rows:
        gen_cols = load_cols[:3] + [Column("req_per_s", "req/s", "{:.2f}"),
                                    Column("tokens_per_s", "new tok/s", "{:.1f}")] + \
            load_cols[4:8] + [
            Column("retrieval_ms", "retrieval ms", "{:.0f}"),
            Column("model_ms", "model ms", "{:.0f}"),
            Column("retrieval_share", "retrieval share", "{:.1%}"),
            Column("wait_http_ms", "wait + HTTP ms", "{:.0f}"),
            Column("server_cores_busy", "server cores", "{:.2f}"),
        ]
        g0 = generate_rows[0]
        tables.append((f"/generate ({args.new_tokens} new tokens, {args.prompt_tokens}-token "
                       f"prompts, {g0.get('retrievals_per_request', 0):.0f} retrievals each; "
                       f"{args.generate_seconds:g} s or max({args.generate_requests}, clients) "
                       "requests per cell)", gen_cols, generate_rows))
    swap_cols = [
        Column("swap", "swap"), Column("status", "HTTP"), Column("swap_ms", "swap ms", "{:.0f}"),
        Column("to_version", "now serving version"),
        Column("in_flight", "requests in flight during swap"),
        Column("in_flight_errors", "of which errors"),
        Column("in_flight_max_ms", "their max latency ms", "{:.0f}"),
    ]
    tables.append((f"Hot swap under /retrieve load ({args.swap_clients} clients)",
                   swap_cols, swap_rows))

    s = swap_summary
    notes = []
    notes.append(
        f"Swap phase: {s['requests']} /retrieve requests in {s['phase_s']:.1f} s "
        f"({s['req_per_s']:.1f} req/s), {s['errors']} errors, {s['lost']} lost; versions served "
        f"{s['versions_seen']} (allowed {s['allowed_versions']}), {s['version_violations']} "
        f"responses with a version outside the two or inconsistent with the swap order. "
        f"Latency of requests not overlapping a swap: p50 {s['steady_p50_ms'] or 0:.0f} ms, "
        f"p99 {s['steady_p99_ms'] or 0:.0f} ms. A swap loads and verifies the new index (digest, "
        f"trust, ntotal, a smoke query) holding the compute lock, then switches with one "
        f"assignment: requests in flight wait for it, none is dropped by design. Server ended "
        f"on {end_state['retrieval_set']} v{end_state['retrieval_set_version']}"
        + (" (swapped back)." if end_state['retrieval_set_version'] ==
           start['retrieval_set_version'] else " (NOT the start version)."))
    if s["error_samples"]:
        notes.append(f"Swap-phase errors, samples: {s['error_samples']}")
    r1 = retrieve_rows
    notes.append(
        "Throughput plateaus by design: the server runs every /retrieve and /generate under one "
        "compute lock (2 cores), so requests are served one at a time; more clients only queue. "
        f"/retrieve req/s at {joined(r1, 'clients', '{}')} clients: "
        f"{joined(r1, 'req_per_s', '{:.1f}')}; p50 grows with the queue "
        f"({joined(r1, 'p50_ms', '{:.0f}')} ms)."
        + ("" if not generate_rows else
           f" /generate req/s: {joined(generate_rows, 'req_per_s', '{:.2f}')}; the "
           "'wait + HTTP' column is latency minus the server's retrieval_ms + model_ms: time "
           "queued behind other requests (plus HTTP/JSON)."))
    if generate_rows:
        g = generate_rows[0]
        cg = cold.get("generate", {})
        notes.append(
            f"/generate split: retrieval (decode chunk + BERT embedding + FAISS search + LanceDB "
            f"fetch of neighbours, {g.get('retrievals_per_request', 0):.1f} retrievals/request) "
            f"vs model (cached token-by-token decoding + sampling): retrieval share "
            f"{joined(generate_rows, 'retrieval_share', '{:.1%}')} at "
            f"{joined(generate_rows, 'clients', '{}')} clients. Prompt tokens "
            f"{g.get('prompt_tokens', 0):.0f}, new tokens {g.get('new_tokens', 0):.0f}. Cold first "
            f"/generate (untimed warm-up): {cg.get('wall_ms', 0):.0f} ms "
            f"(retrieval {cg.get('retrieval_ms', 0):.0f} ms); cold /retrieve {cold['retrieve_ms']} ms.")
    notes.append(
        "Percentiles interpolate linearly between the cell's latencies (numpy): with the few "
        "/generate requests per cell, p95/p99 are close to the slowest request, not a tail "
        "estimate. Latencies are client wall times, queueing at the server included.")
    errors = [(row["endpoint"], row["clients"], row["error_samples"])
              for row in retrieve_rows + generate_rows if row["errors"]]
    if errors:
        notes.append(f"Load errors, samples: {errors}")
    notes.append(
        f"Server: `retro-ops serve` healthy {startup_s:.1f} s after start, serving "
        f"{start['model']} with {start['retrieval_set']} v{start['retrieval_set_version']} "
        f"({start['chunks']:,} chunks, {start['index_factory']}); tracebacks in its log: "
        f"{meta['server_log_tracebacks']}. Machine: {meta['processor']}, os.cpu_count()="
        f"{meta['cpu_count']}, load avg {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end "
        f"(shared machine: the load generator runs on the same cores; compare rows within this "
        f"run); total {meta['elapsed_s']:.0f} s.")
    report_tables("serve", tables, meta, notes)


if __name__ == "__main__":
    main()
