"""Micro-batching in process: queries/s and CPU per query of `Retriever.retrieve` called from C
threads one at a time under the compute gate (as `/retrieve` without batching) vs through
`RetrieveBatcher` (#17), rounds alternating (ABAB), no HTTP in between.

Queries: the first `--queries` real sentences that bench/serve.py sends. CPU = process CPU
seconds of the whole pass (all threads); on a shared machine it is steadier than wall time.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _common import Column, base_parser, environment, parse_int_list, report


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__, "retro-ops home with a published index of --set")
    parser.add_argument("--set", dest="retrieval_set", default="sotu", help="retrieval set (sotu)")
    parser.add_argument("--clients", type=parse_int_list, default=[4, 16], help="threads (4,16)")
    parser.add_argument("--queries", type=int, default=120, help="queries per pass (120)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds, best kept (2)")
    parser.add_argument("--k", type=int, default=5, help="neighbours per query (5)")
    args = parser.parse_args(argv)
    from serve import query_texts

    from retro_ops.serving.admission import AdmissionConfig, ComputeGate
    from retro_ops.serving.batching import BatchConfig, RetrieveBatcher
    from retro_ops.settings import Settings
    from retro_ops.workspace import Workspace

    ws = Workspace.open(Settings(home=args.home))
    retriever = ws.retriever(args.retrieval_set)
    queries = query_texts(0)[:args.queries]
    gate = ComputeGate(AdmissionConfig(max_queue=1024, max_wait_services=None))
    batcher = RetrieveBatcher(gate, BatchConfig())

    def one_by_one(text: str):
        place = gate.admit("retrieve")
        try:
            with gate.turn(place):
                return retriever.retrieve([text], k=args.k)
        finally:
            place.release()

    modes = {"one by one": one_by_one, "batched": lambda t: batcher.retrieve(retriever, t, args.k)}
    retriever.retrieve(queries[:4], k=args.k)  # warm-up
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for _ in range(args.rounds):
        for clients in args.clients:
            for mode, fn in modes.items():
                wall, cpu = time.perf_counter(), time.process_time()
                with ThreadPoolExecutor(clients) as pool:
                    list(pool.map(fn, queries))
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                row = {"clients": clients, "mode": mode, "queries_per_s": len(queries) / wall,
                       "cpu_ms_per_query": 1e3 * cpu / len(queries)}
                if (mode, clients) not in best or row["queries_per_s"] > best[(mode, clients)]["queries_per_s"]:
                    best[(mode, clients)] = row
    rows = sorted(best.values(), key=lambda r: (r["clients"], r["mode"] != "one by one"))
    for row in rows:
        base = best[("one by one", row["clients"])]
        row["speedup"] = row["queries_per_s"] / base["queries_per_s"]
        row["cpu_vs_one_by_one"] = row["cpu_ms_per_query"] / base["cpu_ms_per_query"]
    meta = environment()
    meta.update(batches=batcher.batches, batched_queries=batcher.queries, args=str(vars(args)))
    columns = [Column("clients", "threads"), Column("mode", "mode"),
               Column("queries_per_s", "queries/s", "{:.1f}"), Column("speedup", "vs one by one", "{:.2f}x"),
               Column("cpu_ms_per_query", "CPU ms/query", "{:.1f}"),
               Column("cpu_vs_one_by_one", "CPU vs one by one", "{:.2f}x")]
    notes = [f"{len(queries)} queries per pass, best of {args.rounds} alternating rounds; "
             f"{batcher.queries} batched queries ran in {batcher.batches} encoder calls. Load avg "
             f"{meta['load_avg_1min']:.2f} at start."]
    report("batching", columns, rows, meta, notes)


if __name__ == "__main__":
    main()
