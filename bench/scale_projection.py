"""Scale-out projection: the Pile's 5.8 B chunks chunked and embedded by 10, 100 and 1,000 Celery
workers, from what bench/scale.py --celery measured, and which shared part breaks first.

    python bench/scale.py --chapters 135 --editions kjv_nt,asv_nt,web_nt,sotu --celery
    python bench/scale_projection.py                       # reads bench/results/scale.json
    python bench/scale_projection.py --workers 10,100,1000 --chunks-per-shard 100000 --json

Measured (the configuration with the most workers in the results file):
  rate per worker   chunks / library seconds of its chunk + embed steps (at its threads per worker)
  per-shard cost    run wall - library seconds, per shard run (process, orchestration, Celery)
  events            event-log entries per step and per run (each a row written to the event log)
  bytes per chunk   the LanceDB chunk and embedding tables' bytes / chunks; fragments (one per
                    write) per chunk: too many where the measured shards hold under 512 chunks
  commit seconds    one 512-vector LanceDB write under the table's writer lock (local disk); a
                    table's writes queue on its lock, so it takes 1 / commit seconds commits/s
  merge             FAISS merge seconds per vector and index bytes per vector (shard files)
Projected, for W workers and S = chunks / --chunks-per-shard shard runs (one step at a time each):
  wall = ceil(S / c) * (chunks per shard / rate + per-shard cost), with c = W busy workers, and
  with c = min(W, max_concurrent_runs, pool limit) as deploy/celery/dagster.yaml configures them;
  each shared part's demand with W workers busy, against a stated capacity (constants below,
  each overridable): utilization = demand / capacity; the part with the highest breaks first.
The merge does not shrink with W: its bytes must fit one machine, its time follows the workers.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from _common import REPO_ROOT, RESULTS_DIR, Column, markdown_table, parse_int_list, write_results
from projection import PILE_CHUNKS

# Capacities of the shared parts: assumed, not measured here; each is an option.
#: RabbitMQ's own single-queue benchmarks (rabbitmq.com blog, "Quorum Queues and Flow Control -
#: Single Queue Benchmarks", 2020) report tens of thousands of small messages/s through one queue
#: on one node with confirms and acks; 20k is a round figure at the low end of that range.
BROKER_MSGS_PER_S = 20_000.0
#: the task to the worker queue and its result back over rpc:// (deploy/celery/celery.yaml's
#: backend); acks are protocol frames, not messages
MESSAGES_PER_TASK = 2
#: Dagster writes each event in its own transaction; a single SSD-backed Postgres node commits a
#: few thousand single-row transactions/s with group commit (an assumed figure, not measured here)
EVENT_WRITES_PER_S = 5_000.0
#: one NFS server's 10 GbE link at line rate (1.25 GB/s); object storage scales further
SHARED_FS_BYTES_PER_S = 1.25e9
#: one large-memory machine for the in-memory merge (assumed; RETRO's Pile index took 176 GB of RAM)
MERGE_HOST_RAM_BYTES = 512e9
#: Lance's default compaction target (lance.dataset.optimize: target_rows_per_fragment)
LANCE_ROWS_PER_COMPACTED_FRAGMENT = 1_048_576
DEPLOY_INSTANCE = REPO_ROOT / "deploy" / "celery" / "dagster.yaml"


@dataclass(frozen=True)
class Measured:
    """The per-unit figures of one results file (see the module docstring)."""

    workers: int
    threads_per_worker: int
    chunks: int
    chunks_per_s_per_worker: float
    per_shard_overhead_s: float
    in_step_overhead_s: float
    steps_per_shard: int
    events_per_step: float
    events_per_run: float
    embedding_bytes_per_chunk: float
    chunk_bytes_per_chunk: float
    embedding_fragments_per_chunk: float  # one fragment per write (commit)
    chunk_fragments_per_chunk: float
    commit_s: float
    merge_s_per_vector: float
    index_bytes_per_vector: float
    load_mean: float


def measured(results: dict) -> Measured:
    """The figures of the configuration with the most workers: its steps ran side by side."""
    runs = [r for r in results["rows"] if r.get("workers")]
    if not runs:
        raise SystemExit("no Celery rows in the results: run bench/scale.py --celery first")
    row = max(runs, key=lambda r: r["workers"])
    steps = [s for s in results["rows"] if s.get("config") == f"{row['workers']} worker(s)"]
    by_run: dict[str, list[dict]] = {}
    for step in steps:
        by_run.setdefault(step["partition"], []).append(step)
    library = sum(s["library_s"] for s in steps)
    per_run = [r[0]["run_wall_s"] - sum(s["library_s"] for s in r) for r in by_run.values()]
    return Measured(
        workers=row["workers"], threads_per_worker=results["meta"].get("threads_per_worker", 0),
        chunks=row["chunks"], chunks_per_s_per_worker=row["chunks"] / library,
        per_shard_overhead_s=sum(per_run) / len(per_run),
        in_step_overhead_s=sum(s["in_step_overhead_s"] for s in steps) / len(steps),
        steps_per_shard=len({s["asset"] for s in steps}),
        events_per_step=sum(s["step_events"] for s in steps) / len(steps),
        events_per_run=sum(r[0]["run_events"] for r in by_run.values()) / len(by_run),
        embedding_bytes_per_chunk=row["embeddings_bytes"] / row["chunks"],
        chunk_bytes_per_chunk=row["chunks_bytes"] / row["chunks"],
        embedding_fragments_per_chunk=row["embeddings_fragments"] / row["chunks"],
        chunk_fragments_per_chunk=row["chunks_fragments"] / row["chunks"],
        commit_s=results["meta"]["lancedb_commit_s"],
        merge_s_per_vector=row["merge_s"] / row["ntotal"],
        index_bytes_per_vector=sum(row["shard_index_bytes"]) / sum(row["shard_vectors"]),
        load_mean=row["load_mean"])


def deploy_limits(path: Path = DEPLOY_INSTANCE) -> dict[str, int]:
    """The instance's run and pool limits: a shard run takes one step at a time, and every
    sharded feature step holds a slot of the `lancedb_writes` pool (default limit)."""
    concurrency = yaml.safe_load(path.read_text()).get("concurrency", {})
    return {"max_concurrent_runs": concurrency.get("runs", {}).get("max_concurrent_runs", 0),
            "pool_limit": concurrency.get("pools", {}).get("default_limit", 0)}


def project(m: Measured, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """One worker count: wall times, what each shared part carries and its utilization."""
    shards = math.ceil(args.chunks / args.chunks_per_shard)
    shard_s = args.chunks_per_shard / m.chunks_per_s_per_worker + m.per_shard_overhead_s
    limits = [n for n in (args.max_concurrent_runs, args.pool_limit) if n > 0]
    allowed = min([workers, shards, *limits])
    busy = min(workers, shards)
    chunks_per_s = busy * args.chunks_per_shard / shard_s
    merge_bytes = args.chunks * (args.index_bytes_per_vector or m.index_bytes_per_vector)
    demand = {  # part -> (demand, capacity, unit)
        "Dagster run slots": (busy, args.max_concurrent_runs or math.inf, "runs at once"),
        "Dagster pool lancedb_writes": (busy, args.pool_limit or math.inf, "steps at once"),
        "broker (RabbitMQ)": (busy * m.steps_per_shard / shard_s * args.messages_per_task,
                              args.broker_msgs_per_s, "messages/s"),
        "event log (Postgres)": (busy / shard_s * (m.steps_per_shard * m.events_per_step + m.events_per_run),
                                 args.event_writes_per_s, "writes/s"),
        "shared filesystem": (chunks_per_s * (m.embedding_bytes_per_chunk + m.chunk_bytes_per_chunk),
                              args.fs_bytes_per_s, "bytes/s"),
        "LanceDB writer lock (busiest table)": (
            chunks_per_s * max(m.embedding_fragments_per_chunk, m.chunk_fragments_per_chunk), 1 / args.commit_s,
            "commits/s"),
        "FAISS merge host RAM": (merge_bytes, args.merge_ram_bytes, "bytes"),
    }
    parts = [{"workers": workers, "part": part, "demand": d, "capacity": c, "unit": unit, "utilization": d / c}
             for part, (d, c, unit) in demand.items()]
    over = sorted((p for p in parts if p["utilization"] >= 1), key=lambda p: -p["utilization"])
    nearest = max(parts, key=lambda p: p["utilization"])
    return {
        "workers": workers, "shards": shards, "steps_at_once": allowed,
        "wall_h": math.ceil(shards / busy) * shard_s / 3600,
        "wall_as_deployed_h": math.ceil(shards / allowed) * shard_s / 3600,
        "merge_h": args.chunks * m.merge_s_per_vector / 3600, "merge_bytes": merge_bytes,
        "fragments": args.chunks * (m.embedding_fragments_per_chunk + m.chunk_fragments_per_chunk),
        "fragments_compacted": args.chunks / LANCE_ROWS_PER_COMPACTED_FRAGMENT,
        "breaks_first": over[0]["part"] if over else "",
        "over_capacity": ", ".join(f"{p['part']} ({p['utilization']:.3g}x)" for p in over)
        or f"none; nearest {nearest['part']} ({nearest['utilization']:.0%})",
        "parts": parts,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    head, _, tail = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(description=head, epilog=tail,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    limits = deploy_limits()
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "scale.json",
                        help="bench/scale.py --celery's results (default bench/results/scale.json)")
    parser.add_argument("--workers", type=parse_int_list, default=[10, 100, 1000],
                        help="worker counts (default 10,100,1000)")
    parser.add_argument("--chunks", type=float, default=PILE_CHUNKS, help="corpus size in chunks (5.8e9: the Pile)")
    parser.add_argument("--chunks-per-shard", type=float, default=100_000,
                        help="chunks in one shard run (default 100k: at ~30 chunks/s per single-thread worker "
                             "an hour or so per step, so the per-shard cost is small and a lost worker costs "
                             "about an hour)")
    parser.add_argument("--max-concurrent-runs", type=int, default=limits["max_concurrent_runs"],
                        help=f"run slots, 0 = none (default {limits['max_concurrent_runs']}: "
                             "deploy/celery/dagster.yaml)")
    parser.add_argument("--pool-limit", type=int, default=limits["pool_limit"],
                        help=f"the lancedb_writes pool's slots, 0 = none (default {limits['pool_limit']}: "
                             "deploy/celery/dagster.yaml's default_limit)")
    parser.add_argument("--broker-msgs-per-s", type=float, default=BROKER_MSGS_PER_S,
                        help=f"broker capacity (default {BROKER_MSGS_PER_S:,.0f}, see BROKER_MSGS_PER_S)")
    parser.add_argument("--messages-per-task", type=int, default=MESSAGES_PER_TASK,
                        help=f"broker messages per step (default {MESSAGES_PER_TASK}: task + rpc:// result)")
    parser.add_argument("--event-writes-per-s", type=float, default=EVENT_WRITES_PER_S,
                        help=f"event-log capacity (default {EVENT_WRITES_PER_S:,.0f}, see EVENT_WRITES_PER_S)")
    parser.add_argument("--fs-bytes-per-s", type=float, default=SHARED_FS_BYTES_PER_S,
                        help=f"shared filesystem write bandwidth (default {SHARED_FS_BYTES_PER_S:.3g}: 10 GbE)")
    parser.add_argument("--merge-ram-bytes", type=float, default=MERGE_HOST_RAM_BYTES,
                        help=f"the merge machine's RAM (default {MERGE_HOST_RAM_BYTES:.3g})")
    parser.add_argument("--index-bytes-per-vector", type=float,
                        help="the merged index's bytes per vector (default: measured, the measured factory's; "
                             "e.g. 72 for IVF,PQ64 with 8-byte ids)")
    parser.add_argument("--commit-s", type=float, help="seconds of one LanceDB write (default: measured)")
    parser.add_argument("--json", action="store_true", help="print the projection as JSON instead of tables")
    return parser.parse_args(argv)


def run(results: dict, args: argparse.Namespace) -> tuple[Measured, list[dict]]:
    """The measured figures and one projection per worker count (`--commit-s` wins over the measured)."""
    m = measured(results)
    if args.commit_s is None:
        args.commit_s = m.commit_s
    return m, [project(m, w, args) for w in args.workers]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = json.loads(args.results.read_text())
    m, rows = run(results, args)
    meta = {"results": str(args.results), "results_created": results.get("created"),
            "measured_on": {k: results["meta"].get(k)
                            for k in ("processor", "cpu_flags", "cpu_count", "load_avg_1min")},
            "measured": asdict(m), "assumptions": {k: v for k, v in vars(args).items() if k not in ("json", "results")}}
    parts = [p for row in rows for p in row.pop("parts")]
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows, "parts": parts}, indent=2, default=str))
    else:
        print(f"### measured ({m.workers} workers, {m.threads_per_worker} thread(s) each, load {m.load_mean:.1f})\n")
        print(markdown_table([Column("k", "figure"), Column("v", "value", "{:.4g}")],
                             [{"k": k, "v": v} for k, v in asdict(m).items()]) + "\n")
        print(f"### {args.chunks:.3g} chunks, {args.chunks_per_shard:,.0f} per shard\n")
        print(markdown_table([
            Column("workers", "workers"), Column("shards", "shard runs", "{:,}"),
            Column("wall_h", "chunk+embed, W busy (h)", "{:,.1f}"),
            Column("steps_at_once", "steps at once as deployed"),
            Column("wall_as_deployed_h", "chunk+embed as deployed (h)", "{:,.1f}"),
            Column("merge_h", "FAISS merge (h)", "{:,.2f}"), Column("merge_bytes", "merged index (bytes)", "{:.3g}"),
            Column("fragments", "LanceDB fragments", "{:.3g}"),
            Column("over_capacity", "over capacity, worst first")], rows) + "\n")
        print("### what each shared part carries with W workers busy\n")
        print(markdown_table([Column("workers", "workers"), Column("part", "part"),
                              Column("demand", "demand", "{:.3g}"),
                              Column("capacity", "capacity", "{:.3g}"), Column("unit", "unit"),
                              Column("utilization", "utilization", "{:.3g}")], parts))
    write_results("scale_projection", meta, [{"table": "projection", **r} for r in rows]
                  + [{"table": "shared parts", **p} for p in parts])


if __name__ == "__main__":
    main()
