"""`bench/serve.py --log-compare`: serving latency with the generation log off vs on, and the rows/s
the log's writer sustains (see bench/serve.py's docstring for the method)."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from _common import Column, elapsed, environment, load_documents, log, report_tables
from serve import Server, bench_generate, generation_prompts, percentile


def compare_log(args, home: Path) -> None:
    prompts = generation_prompts(home, args.prompt_tokens)
    meta = environment()
    cells: dict[tuple[str, int], list[float]] = {}
    rows: list[dict[str, Any]] = []
    health: dict[str, Any] = {}
    for round_ in range(args.log_rounds):
        for mode in ("off", "on"):
            with Server(args, env={"RETRO_OPS_GENERATION_LOG": mode}) as server:
                start = requests.get(f"{server.base}/health", timeout=10).json()
                for i in range(2):  # untimed: first-call costs stay out of the cells
                    requests.post(f"{server.base}/generate", json={"prompt": prompts[i], "seed": i,
                                  "max_new_tokens": args.new_tokens}, timeout=300).raise_for_status()
                for row in bench_generate(server, prompts, args, start["retrieval_set_version"]):
                    rows.append({"round": round_, "log": mode, **row})
                    cells.setdefault((mode, row["clients"]), []).extend(row.pop("latencies_ms"))
                health[f"{mode}-{round_}"] = requests.get(f"{server.base}/health", timeout=10).json()
            log(f"round {round_} log {mode} done")
    table = []
    for clients in args.clients:
        off, on = cells[("off", clients)], cells[("on", clients)]
        entry = {"clients": clients, "n_off": len(off), "n_on": len(on)}
        for q in (50, 99):
            a, b = percentile(off, q), percentile(on, q)
            entry.update({f"p{q}_off": a, f"p{q}_on": b, f"p{q}_ratio": b / a if a else None})
        entry["mean_ratio"] = statistics.mean(on) / statistics.mean(off)
        for mode in ("off", "on"):  # server CPU seconds per request (all its threads, from /proc)
            mine = [r for r in rows if r["log"] == mode and r["clients"] == clients and r["ok"]]
            entry[f"cpu_ms_{mode}"] = 1e3 * sum(r["server_cores_busy"] * r["wall_s"] for r in mine) / \
                sum(r["ok"] for r in mine)
        entry["cpu_ratio"] = entry["cpu_ms_on"] / entry["cpu_ms_off"]
        table.append(entry)
    throughput = log_throughput(args.log_rows)
    meta.update(home=str(home), rounds=args.log_rounds, per_round=rows, health_end=health,
                elapsed_s=elapsed(), args={k: str(v) for k, v in vars(args).items()})
    columns = [Column("clients", "clients"), Column("n_off", "requests off"), Column("n_on", "requests on"),
               Column("p50_off", "p50 off ms", "{:.0f}"), Column("p50_on", "p50 on ms", "{:.0f}"),
               Column("p50_ratio", "p50 on/off", "{:.3f}"),
               Column("p99_off", "p99 off ms", "{:.0f}"), Column("p99_on", "p99 on ms", "{:.0f}"),
               Column("p99_ratio", "p99 on/off", "{:.3f}"), Column("mean_ratio", "mean on/off", "{:.3f}"),
               Column("cpu_ms_off", "server CPU ms/request off", "{:.0f}"),
               Column("cpu_ms_on", "on", "{:.0f}"), Column("cpu_ratio", "CPU on/off", "{:.3f}")]
    log_columns = [Column("what", "writer"), Column("rows", "rows"), Column("seconds", "s", "{:.2f}"),
                   Column("rows_per_s", "rows committed/s", "{:.1f}"), Column("traces_per_s", "traces/s", "{:.1f}"),
                   Column("record_us", "record() µs", "{:.1f}"),
                   Column("cpu_ms_per_row", "CPU ms/row (all threads)", "{:.1f}")]
    logged = sum(v["generation_log"]["written"] for k, v in health.items() if k.startswith("on"))
    notes = [f"/generate with {args.new_tokens} new tokens and {args.prompt_tokens}-token prompts; "
             f"{args.log_rounds} off/on server pairs alternated in one run, latencies pooled per mode; "
             f"rows the 'on' servers logged: {logged}. Shared 2-core machine: compare the ratios. "
             f"Load average at the end: {os.getloadavg()[0]:.1f}."]
    report_tables("serve_log", [("/generate latency, generation log off vs on", columns, table),
                                ("Generation-log writer throughput (this process)", log_columns, throughput)],
                  meta, notes)


def log_throughput(n: int) -> list[dict[str, Any]]:
    """Rows/s of the writer fed `n` records at once, with and without MLflow traces."""
    from datetime import datetime, timezone

    from retro_ops.features.embedder import Embedder
    from retro_ops.features.store import FeatureStore
    from retro_ops.generations.log import GenerationLog
    from retro_ops.generations.records import GenerationLogConfig, GenerationRecord, NeighbourUse, new_request_id
    from retro_ops.generations.traces import TraceRecorder
    from retro_ops.settings import Settings

    embedder = Embedder()
    texts = [" ".join(t.split()[:48]) for _, t in load_documents(["sotu"])]
    out = []
    for traces in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(home=Path(tmp))
            settings.ensure_dirs()
            writer = GenerationLog(FeatureStore(settings.lancedb_uri), embedder,
                                   GenerationLogConfig(flush_every=32, traces=traces),
                                   TraceRecorder(settings) if traces else None)
            records = [GenerationRecord(
                request_id=new_request_id(), created_at=datetime.now(timezone.utc), source="http",
                prompt=texts[i % len(texts)], output=texts[(i + 7) % len(texts)],
                params={"max_new_tokens": 64, "temperature": 0.8, "seed": i}, model="retro-ops-retro/1",
                model_id=1, retrieval_set="sotu", retrieval_set_version=1, deployment_id=1,
                prompt_tokens=70, new_tokens=64, retrieval_ms=50.0, model_ms=400.0,
                neighbours=[NeighbourUse(c, [i * 10 + c, i * 10 + c + 1], ["d", "e"], [0.9, 0.8])
                            for c in (0, 1)]) for i in range(n)]
            started, cpu0 = time.perf_counter(), time.process_time()
            for record in records:
                writer.record(record)
            record_us = 1e6 * (time.perf_counter() - started) / n
            writer.flush()  # every row committed (traces may still be in their own queue)
            seconds = time.perf_counter() - started
            writer.close()  # traces written and exported too
            traced, cpu = time.perf_counter() - started, time.process_time() - cpu0
            out.append({"what": "LanceDB + MLflow traces" if traces else "LanceDB only", "rows": writer.stats.written,
                        "seconds": seconds, "rows_per_s": writer.stats.written / seconds, "record_us": record_us,
                        "traces_per_s": n / traced if traces else None, "cpu_ms_per_row": 1e3 * cpu / n})
            log(f"log writer, traces {traces}: {out[-1]['rows_per_s']:.0f} rows/s")
    return out
