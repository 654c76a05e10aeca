"""Chunking throughput: tokens/s (and per core) of `retro_ops.features.chunking.Chunker` on real text.

Text: the embedded corpora (corpora/sotu/*.jsonl and corpora/moby_dick/*.txt, ~2.6 MB,
~0.6M WordPiece tokens) read with `read_corpus` + `collect_documents`; `--repeat N` feeds the
document list N times for more volume.

Timed (best of `--runs` by wall time, each on the same documents; the rows run interleaved, one
pass of every row per round, so that a shared machine's load changes hit them alike):
  chunker          list(chunker.chunk_documents(docs)): batch tokenization + Chunk objects
  tokenize only    chunker.tokenize(texts): the batch (Rust) tokenizer call alone, for the
                   split between tokenizer time and Python chunk-building time
  per-doc baseline tokenizer(text, add_special_tokens=False) one document at a time
  per-doc + offsets the same, also returning offsets (what the chunker needs): isolates the
                   cost of offsets from the cost of batching
  chunk_documents, 1 process / all processes
                   the same chunker call with workers=1 and workers=0 (documents sharded over one
                   process per core, #17), in this process's thread settings
  chunk_tables, all processes
                   the same chunks as Arrow tables built column-wise from the cut arrays (no
                   Python object per chunk): what the pipeline writes
  end to end, 1 process / all processes
                   read the corpus files, normalise and deduplicate, chunk (chunk_tables), and
                   write the chunks to a LanceDB table in a temporary folder (a fresh table each
                   run), as features.pipeline.chunk_corpus does
"cores busy" counts this process only; "CPU s, all" adds the worker processes' CPU time (read
from /proc), and "tokens/CPU-s" = tokens / that total is the rate per busy core, which a shared
machine disturbs far less than wall time (on an idle machine with every core busy it is the
per-core throughput). The worker
pool is started on the first all-process call and kept (as in the library); "first s" is each
row's first run, which for the all-process rows includes that start-up, and is reported beside
the best run.

The rows run twice: in this process with the default thread settings (TOKENIZERS_PARALLELISM
true, Rust/rayon uses every core), and in a subprocess with RAYON_NUM_THREADS=1 (one core).
"cores avail" is what a row may use (os.cpu_count() or 1); "cores busy" is measured, process CPU
time / wall time. Per-core throughput = tokens/s / cores avail.

RETRO reference: about 1.9 minutes per 1M 64-token chunks per CPU core, i.e.
64e6 / (1.9 * 60) ~= 561k tokens/s/core (figure as given to us; see the caveat in the notes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from _common import Column, Timing, environment, load_documents, report, time_call

RETRO_TOKENS_PER_S_PER_CORE = 64e6 / (1.9 * 60)
ROWS_MARKER = "ROWS_JSON:"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 1)[1])
    parser.add_argument("--repeat", type=int, default=6, metavar="N",
                        help="feed the documents N times (default 6: ~3.2M tokens)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per row, best kept (3)")
    parser.add_argument("--corpora", nargs="+", default=["sotu", "moby_dick"],
                        choices=["sotu", "moby_dick"], help="embedded corpora to read (both)")
    parser.add_argument("--no-single-thread", action="store_true",
                        help="skip the RAYON_NUM_THREADS=1 subprocess rows")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.runs < 1:
        parser.error("--repeat and --runs must be >= 1")
    return args


def _workers_cpu_s() -> float:
    """CPU seconds (user + system) the chunking worker processes have used so far."""
    from retro_ops.features.chunking import worker_pids

    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for pid in worker_pids():
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:  # exited
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
    return total


def time_all(fn) -> tuple[Timing, float, Any]:
    """time_call, plus the CPU seconds of this process and its chunking workers together."""
    before = _workers_cpu_s()
    timing, result = time_call(fn)
    return timing, timing.cpu_s + _workers_cpu_s() - before, result


def measure(args: argparse.Namespace, cores_avail: int, env_label: str) -> list[dict[str, Any]]:
    """The three timed rows in this process's thread settings."""
    import pyarrow.compute as pc

    from retro_ops.features.chunking import Chunker
    from retro_ops.features.embedder import default_model_dir

    chunker = Chunker.from_model_dir(default_model_dir())
    tokenizer = chunker.tokenizer
    base = load_documents(args.corpora)
    docs = [(f"{doc_id}/{r}", text) for r in range(args.repeat) for doc_id, text in base]
    texts = [text for _, text in docs]
    n_chars = sum(len(t) for t in texts)

    def chunk(workers: int):
        def run():
            chunks = list(chunker.chunk_documents(docs, workers=workers))
            return sum(len(c.token_ids) for c in chunks), len(chunks)
        return run

    def tables(workers: int):
        def run():
            rows = list(chunker.chunk_tables(docs, workers=workers))
            return sum(pc.sum(t.column("n_tokens")).as_py() for t in rows), sum(t.num_rows for t in rows)
        return run

    def end_to_end(workers: int):
        import tempfile

        from retro_ops.features.pipeline import row_blocks
        from retro_ops.features.store import FeatureStore

        def run():
            documents = [(f"{doc_id}/{r}", text) for r in range(args.repeat)
                         for doc_id, text in load_documents(args.corpora)]
            with tempfile.TemporaryDirectory() as tmp:  # as features.pipeline.chunk_corpus writes
                store, tokens, n = FeatureStore(tmp), 0, 0
                for rows in row_blocks(chunker.chunk_tables(documents, workers=workers), 20_000):
                    store.add_chunk_table(rows)
                    tokens += pc.sum(rows.column("n_tokens")).as_py()
                    n += rows.num_rows
            return tokens, n
        return run

    def tokenize_only():
        return sum(len(ids) for ids, _ in chunker.tokenize(texts)), None

    def per_doc():
        # verbose=False only silences the "longer than model max length" warning.
        return sum(len(tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"])
                   for t in texts), None

    def per_doc_offsets():
        return sum(len(tokenizer(t, add_special_tokens=False, return_offsets_mapping=True,
                                 verbose=False)["input_ids"]) for t in texts), None

    rows = []
    methods = (("per-doc baseline", per_doc), ("per-doc + offsets", per_doc_offsets),
                       ("chunker.tokenize only", tokenize_only),
                       ("chunk_documents, 1 process", chunk(1)),
                       ("chunk_documents, all processes", chunk(0)),
                       ("chunk_tables, all processes", tables(0)),
                       ("end to end, 1 process", end_to_end(1)),
                       ("end to end, all processes", end_to_end(0)))
    best: dict[str, Any] = {}
    first: dict[str, float] = {}
    best_cpu: dict[str, float] = {}  # least CPU over all processes, kept apart from best wall
    for _ in range(args.runs):  # interleaved: load changes hit every row alike
        for method, fn in methods:
            timing, cpu_all, result = time_all(fn)
            first.setdefault(method, timing.wall_s)
            if method not in best or timing.wall_s < best[method][0].wall_s:
                best[method] = (timing, result)
            if method not in best_cpu or cpu_all < best_cpu[method]:
                best_cpu[method] = cpu_all
    for method, _ in methods:
        timing, (tokens, n_chunks) = best[method]
        rate = tokens / timing.wall_s
        per_core = rate / cores_avail
        rows.append({
            "method": method, "threads": env_label, "cores_avail": cores_avail,
            "documents": len(docs), "chars": n_chars, "tokens": tokens, "chunks": n_chunks,
            "wall_s": timing.wall_s, "first_wall_s": first[method], "cpu_s": timing.cpu_s,
            "cores_busy": timing.busy_cores,
            "tokens_per_s": rate, "tokens_per_s_per_core": per_core,
            "tokens_per_s_per_busy_core": tokens / timing.cpu_s if timing.cpu_s else None,
            "vs_retro_per_core": per_core / RETRO_TOKENS_PER_S_PER_CORE,
            "cpu_s_all": best_cpu[method], "tokens_per_cpu_s_all": tokens / best_cpu[method],
            "vs_retro_per_cpu_s": tokens / best_cpu[method] / RETRO_TOKENS_PER_S_PER_CORE,
        })
    baseline = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup_vs_per_doc"] = row["tokens_per_s"] / baseline
    return rows


def single_thread_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The same rows measured in a fresh interpreter with RAYON_NUM_THREADS=1."""
    env = dict(os.environ, RAYON_NUM_THREADS="1", TOKENIZERS_PARALLELISM="true")
    cmd = [sys.executable, __file__, "--worker", "--repeat", str(args.repeat),
           "--runs", str(args.runs), "--corpora", *args.corpora]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"single-thread worker failed ({done.returncode}):\n{done.stderr}")
    line = next(x for x in done.stdout.splitlines() if x.startswith(ROWS_MARKER))
    return json.loads(line[len(ROWS_MARKER):])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        rows = measure(args, cores_avail=1, env_label="RAYON_NUM_THREADS=1")
        print(ROWS_MARKER + json.dumps(rows))
        return
    meta = environment()
    # Single-thread subprocess first, before this process starts the rayon pool.
    single = [] if args.no_single_thread else single_thread_rows(args)
    cores = os.cpu_count() or 1
    rows = measure(args, cores_avail=cores, env_label="default (TOKENIZERS_PARALLELISM=true)")
    rows += single
    meta.update(repeat=args.repeat, runs=args.runs, corpora=args.corpora,
                retro_tokens_per_s_per_core=RETRO_TOKENS_PER_S_PER_CORE)
    columns = [
        Column("method", "method"),
        Column("threads", "threads"),
        Column("tokens", "tokens", "{:,}"),
        Column("wall_s", "best wall s", "{:.3f}"),
        Column("first_wall_s", "first s", "{:.3f}"),
        Column("cores_busy", "cores busy", "{:.2f}"),
        Column("tokens_per_s", "tokens/s", "{:,.0f}"),
        Column("cores_avail", "cores avail"),
        Column("tokens_per_s_per_core", "tokens/s/core", "{:,.0f}"),
        Column("vs_retro_per_core", "ours/RETRO per core", "{:.2f}x"),
        Column("speedup_vs_per_doc", "speed-up vs per-doc", "{:.2f}x"),
        Column("cpu_s_all", "CPU s, all", "{:.2f}"),
        Column("tokens_per_cpu_s_all", "tokens/CPU-s", "{:,.0f}"),
        Column("vs_retro_per_cpu_s", "ours/RETRO per CPU-s", "{:.2f}x"),
    ]
    notes = [
        (f"Machine: {meta['processor']}, os.cpu_count()={meta['cpu_count']}, load avg "
         f"{meta['load_avg_1min']:.2f} at start, {os.getloadavg()[0]:.2f} at end; tokenizers "
         f"{meta['tokenizers']}; {rows[0]['documents']} documents, {rows[0]['chars']:,} chars, "
         f"best of {args.runs}."),
        (f"RETRO reference: 64e6 / (1.9 min * 60) = {RETRO_TOKENS_PER_S_PER_CORE:,.0f} "
         "tokens/s/core. 'speed-up vs per-doc' compares rows with the same thread setting; "
         "'cores busy' = process CPU time / wall time."),
    ]
    report("chunking", columns, rows, meta, notes)


if __name__ == "__main__":
    main()
