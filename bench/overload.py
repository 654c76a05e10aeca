"""Overload: the real `retro-ops serve` on loopback at 1x, 2x and 4x its measured saturation load
for /retrieve and /generate. Per cell: offered and accepted req/s, p50/p99 of accepted requests,
share refused (503/429) and how fast, /health p99 from another process, server RSS.

Saturation: 2 closed-loop clients (bench/serve.py's `Load`) for --saturation-seconds; their
req/s is the server's capacity (it computes one request at a time, and one waiting request keeps
it busy; more clients would only be refused by the wait budget and spin on fast 503s, stealing
the 2 cores from the server and halving the capacity measured). Overload cells are open loop:
requests are sent at a fixed rate (factor x capacity) for --cell-seconds whatever the answers,
by a pool of --workers client threads, so a refused request is not retried and the offered load
really is the factor. A request's latency runs from its scheduled send time (client-side delay
included). /health is polled every 50 ms by a separate process (the load generator's GIL does
not delay it). Server RSS (VmRSS) is sampled every 0.5 s; VmHWM (peak) is read after each cell.
Goal (issue #11): at 4x, accepted p99 within 2x of the p99 at 1x; /health p99 < 50 ms; RSS flat.

Home: --home as for bench/serve.py (a trained model and a published index of --set). With
--build-home and no catalog there, a small home is built first through the library: the first
--chapters chapters of moby_dick as corpus and set `moby_dick`, and a demo-shaped RETRO trained
--train-steps steps (the service time is what matters here, not the text). The server runs with
--max-queue (8), --max-wait (2) and --generate-timeout (30).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from _common import CORPORA, Column, base_parser, elapsed, environment, log, report_tables
from serve import (
    Load, Result, Server, cycle_maker, generate_fields, generation_prompts, percentile, query_texts,
    raise_on_sigterm, retrieve_fields,
)


def parse_args(argv: list[str] | None = None):
    parser = base_parser(__doc__, "retro-ops home with a trained model and a published index of --set")
    parser.add_argument("--model", default="retro", help="model to serve (retro: the newest)")
    parser.add_argument("--set", dest="retrieval_set", default="sotu", help="retrieval set (sotu)")
    parser.add_argument("--factors", default="1,2,4", help="load factors x capacity (1,2,4)")
    parser.add_argument("--endpoints", default="retrieve,generate", help="(retrieve,generate)")
    parser.add_argument("--cell-seconds", type=float, default=15.0, help="per overload cell (15)")
    parser.add_argument("--saturation-seconds", type=float, default=8.0, help="(8)")
    parser.add_argument("--workers", type=int, default=64, help="client threads of the open loop (64)")
    parser.add_argument("--k", type=int, default=5, help="neighbours per /retrieve (5)")
    parser.add_argument("--new-tokens", type=int, default=64, help="max_new_tokens per /generate (64)")
    parser.add_argument("--prompt-tokens", type=int, default=70, help="prompt tokens (70)")
    parser.add_argument("--max-queue", type=int, default=8, help="server --max-queue (8)")
    parser.add_argument("--pin", action="store_true",
                        help="server on CPU 0, load generator on CPU 1 (keeps client-side delay out "
                             "of the server's latencies on a 2-core machine)")
    parser.add_argument("--max-wait", type=float, default=2.0,
                        help="server --max-wait: work ahead allowed, in service times (2; 0 = queue bound only)")
    parser.add_argument("--generate-timeout", type=float, default=30.0, help="server (30)")
    parser.add_argument("--build-home", action="store_true", help="build a small home if none")
    parser.add_argument("--chapters", type=int, default=12, help="moby_dick chapters (12)")
    parser.add_argument("--train-steps", type=int, default=10, help="steps of the built model (10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.factors = [float(f) for f in args.factors.split(",")]
    args.endpoints = [e.strip() for e in args.endpoints.split(",")]
    if not set(args.endpoints) <= {"retrieve", "generate"} or min(args.factors) <= 0:
        parser.error("--endpoints takes retrieve and/or generate; --factors positive numbers")
    # what bench/serve.py's Server reads
    args.port, args.server_threads, args.startup_timeout = 0, 0, 240.0
    return args


def build_home(home: Path, chapters: int, steps: int) -> None:
    """A small home through the library: moby_dick chapters, its set and index, a demo RETRO."""
    import shutil

    from retro_ops.features import pipeline
    from retro_ops.features.chunking import Chunker
    from retro_ops.retrieval.index.route import publish_retrieval_set
    from retro_ops.settings import Settings
    from retro_ops.training.neighbours import NeighbourConfig
    from retro_ops.training.prepare import TrainingSpec, prepare_training
    from retro_ops.training.run import train_model
    from retro_ops.training.trainer import TrainConfig
    from retro_ops.workspace import Workspace

    corpus = home / "corpus_moby_dick"
    corpus.mkdir(parents=True, exist_ok=True)
    source = sorted(Path(CORPORA["moby_dick"]).parent.glob("chapter_*.txt"),
                    key=lambda p: int(p.stem.split("_")[1]))
    for path in source[:chapters]:
        shutil.copy(path, corpus / path.name)
    ws = Workspace.open(Settings(home=home))
    ws.catalog.add_corpus("moby_dick", str(corpus))
    log(f"building a small home in {home}: {chapters} chapters")
    pipeline.materialize_corpus(ws.catalog, ws.store, Chunker(ws.embedder.tokenizer), ws.embedder, "moby_dick")
    ws.catalog.create_retrieval_set("moby_dick", ["moby_dick"])
    publish_retrieval_set(ws.catalog, ws.store, ws.settings.indices_dir, "moby_dick", ws.embedder.space)
    spec = TrainingSpec(corpus="moby_dick", retrieval_set="moby_dick",
                        train=TrainConfig(steps=steps, batch_size=4, warmup_steps=2,
                                          checkpoint_every=steps),
                        neighbours=NeighbourConfig(k=2))
    train_model(ws, prepare_training(ws, spec), "retro")
    log("home built")


def rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                fields[line.split(":")[0]] = int(line.split()[1])
    return fields


def poll_health(url: str, stop, out) -> None:
    """In its own process: GET /health every 50 ms until `stop`; send the latencies (ms)."""
    latencies, failures = [], 0
    with requests.Session() as session:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                ok = session.get(url, timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            latencies.append(1e3 * (time.perf_counter() - started))
            failures += not ok
            time.sleep(0.05)
    out.send((latencies, failures))


class OpenLoad:
    """Requests sent at `rate` per second for `seconds`, whatever the answers (open loop)."""

    def __init__(self, server: Server, make, rate: float, seconds: float, workers: int):
        self.server, self.make, self.rate, self.seconds = server, make, rate, seconds
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.local = threading.local()
        self.results: list[Result] = []
        self.lock = threading.Lock()

    def _fire(self, ticket: int, scheduled: float) -> None:
        session = getattr(self.local, "session", None) or requests.Session()
        self.local.session = session
        path, body = self.make(ticket)
        try:
            response = session.post(f"{self.server.base}{path}", json=body, timeout=300)
            result = Result(scheduled, time.perf_counter(), response.status_code,
                            {"retry_after": response.headers.get("Retry-After")})
        except requests.RequestException as exc:
            result = Result(scheduled, time.perf_counter(), None, error=repr(exc)[:200])
        with self.lock:
            self.results.append(result)

    def run(self) -> list[Result]:
        start = time.perf_counter() + 0.1
        for ticket in range(int(self.rate * self.seconds)):
            scheduled = start + ticket / self.rate
            time.sleep(max(0.0, scheduled - time.perf_counter()))
            self.pool.submit(self._fire, ticket, scheduled)
        self.pool.shutdown(wait=True)
        return self.results


def cell(server: Server, make, rate: float, args) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    stop, (receive, send) = ctx.Event(), ctx.Pipe(duplex=False)
    poller = ctx.Process(target=poll_health, args=(f"{server.base}/health", stop, send))
    poller.start()
    rss, sampling = [], threading.Event()

    def sample():
        while not sampling.is_set():
            rss.append(rss_kib(server.proc.pid).get("VmRSS", 0))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    results = OpenLoad(server, make, rate, args.cell_seconds, args.workers).run()
    wall = time.perf_counter() - started
    sampling.set()
    stop.set()
    health, health_failures = receive.recv()
    poller.join(timeout=30)
    sampler.join()
    ok = [r.latency_ms for r in results if r.status == 200]
    shed = [r for r in results if r.status in (503, 429)]
    return {
        "offered_rps": rate, "sent": len(results), "accepted_rps": len(ok) / wall,
        "p50_ms": percentile(ok, 50), "p99_ms": percentile(ok, 99),
        "shed_share": len(shed) / len(results) if results else 0.0,
        "shed_p99_ms": percentile([r.latency_ms for r in shed], 99),
        "shed_with_retry_after": sum(bool(r.fields.get("retry_after")) for r in shed),
        "other": len(results) - len(ok) - len(shed),
        "other_samples": sorted({f"{r.status}: {r.error}" for r in results
                                 if r.status not in (200, 503, 429)})[:3],
        "health_p99_ms": percentile(health, 99), "health_max_ms": max(health, default=None),
        "health_failures": health_failures,
        "rss_max_mib": max(rss, default=0) / 1024, "rss_end_mib": (rss[-1] if rss else 0) / 1024,
        "hwm_mib": rss_kib(server.proc.pid).get("VmHWM", 0) / 1024,
    }



def pin_process(pid: int, cpus: set[int]) -> None:
    """Every thread of a running process onto `cpus` (sched_setaffinity(pid) moves one thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


SATURATION_CLIENTS = 2


def run_endpoint(server: Server, name: str, make, args) -> list[dict[str, Any]]:
    extract = retrieve_fields if name == "retrieve" else generate_fields
    saturation = Load(server, SATURATION_CLIENTS, make, extract, seconds=args.saturation_seconds,
                      max_requests=10**6, timeout_s=300).run()
    capacity = len(saturation.ok) / saturation.wall_s
    log(f"/{name}: capacity {capacity:.2f} req/s ({SATURATION_CLIENTS} closed-loop clients)")
    rows = []
    for factor in args.factors:
        row = {"endpoint": f"/{name}", "factor": factor, "capacity_rps": capacity,
               **cell(server, make, factor * capacity, args)}
        rows.append(row)
        log(f"/{name} x{factor:g}: {row['accepted_rps']:.2f} accepted req/s, p99 "
            f"{row['p99_ms'] or 0:.0f} ms, shed {row['shed_share']:.0%}, health p99 "
            f"{row['health_p99_ms'] or 0:.1f} ms, RSS {row['rss_max_mib']:.0f} MiB")
    base = rows[0]["p99_ms"]
    for row in rows:
        row["p99_vs_1x"] = row["p99_ms"] / base if base and row["p99_ms"] else None
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.home = args.home.expanduser().resolve()
    if not (args.home / "catalog.db").exists():
        if not args.build_home:
            raise SystemExit(f"no retro-ops home at {args.home} (see --home, --build-home)")
        build_home(args.home, args.chapters, args.train_steps)
        args.retrieval_set = "moby_dick"
    raise_on_sigterm()
    queries = query_texts(args.seed)
    prompts = generation_prompts(args.home, args.prompt_tokens) if "generate" in args.endpoints else []
    meta = environment()
    makers = {
        "retrieve": cycle_maker(queries, lambda q, i: ("/retrieve", {"text": q, "k": args.k})),
        "generate": cycle_maker(prompts, lambda p, i: ("/generate", {
            "prompt": p, "seed": i, "max_new_tokens": args.new_tokens})),
    }
    server = Server(args)
    server.argv += ["--generate-timeout", str(args.generate_timeout)]
    tables = []
    if args.pin:
        os.sched_setaffinity(0, {1})  # this process and the threads and processes it starts
    with server:
        if args.pin:
            pin_process(server.proc.pid, {0})
        for name in args.endpoints:
            requests.post(f"{server.base}/{name}", json=makers[name](0)[1], timeout=300)  # warm
            rows = run_endpoint(server, name, makers[name], args)
            tables.append((f"/{name} at {', '.join(f'{f:g}x' for f in args.factors)} its capacity",
                           COLUMNS, rows))
        deployment = requests.get(f"{server.base}/deployment", timeout=10).json()
        server_log = server.log_text()
    meta.update(server_argv=server.argv[1:], deployment=deployment, elapsed_s=elapsed(),
                server_log_tracebacks=server_log.count("Traceback"),
                args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()})
    notes = [f"Server {deployment['model']} with {deployment['retrieval_set']} "
             f"({deployment['chunks']:,} chunks), --max-queue {args.max_queue}, --max-wait {args.max_wait:g}; "
             f"client and server "
             f"share the machine's {os.cpu_count()} cores (load avg {os.getloadavg()[0]:.2f} at "
             f"the end): compare rows within this run. Tracebacks in the server log: "
             f"{meta['server_log_tracebacks']}. Total {elapsed():.0f} s."]
    report_tables("overload", tables, meta, notes)


COLUMNS = [
    Column("factor", "load", "{:g}x"), Column("offered_rps", "offered req/s", "{:.1f}"),
    Column("accepted_rps", "accepted req/s", "{:.2f}"), Column("p50_ms", "p50 ms", "{:.0f}"),
    Column("p99_ms", "p99 ms", "{:.0f}"), Column("p99_vs_1x", "p99 vs 1x", "{:.2f}"),
    Column("shed_share", "503/429", "{:.0%}"), Column("shed_p99_ms", "503 p99 ms", "{:.1f}"),
    Column("shed_with_retry_after", "with Retry-After"), Column("other", "other errors"),
    Column("health_p99_ms", "/health p99 ms", "{:.1f}"),
    Column("health_max_ms", "/health max ms", "{:.1f}"),
    Column("rss_max_mib", "RSS max MiB", "{:.0f}"), Column("hwm_mib", "peak RSS MiB", "{:.0f}"),
]


if __name__ == "__main__":
    main()
