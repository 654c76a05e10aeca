"""Pile-scale projection: what 5.8 B chunks would cost with the rates measured here.

Per-unit figures come from the other benchmarks' result files in bench/results/ (run them first)
or from the flags, which win:
  tokens/s/core        chunking.json, the best "end to end" row (read, normalise, tokenize,
                       chunk, write), all cores counted (--tokens-per-s-per-core)
  chunks/s/core        embedding.json, the fastest space whose recall@10 vs fp32 is >= 0.95
                       (fp32 counts as 1.0), chunks/s / os.cpu_count() (--chunks-per-s-per-core)
  chunks/s/GPU         only from --chunks-per-s-per-gpu (no GPU measured here: left out if absent)
  resident B/vector    index.json, the retro-ops default row of the largest synthetic dataset
                       (--resident-bytes-per-vector); disk adds dim*4 + 8 B/vector (vectors.npy +
                       ids.npy beside the index)
  add rate, p50        the same row: vectors / build seconds (train + add), p50 ms at its n
Projection: CPU-hours = units / (rate per core) / 3600 (also on --cores cores, in wall hours);
RAM to query = n * resident bytes; disk = n * (resident + dim*4 + 8 + chunk row), the chunk row
(`--chunk-row-bytes`, 600: 64 int32 token ids + ~300 B of text + ids/hashes) in LanceDB.
Reference: the RETRO Pile build as reported (~180 CPU-hours to tokenize, ~1k GPU-hours to embed,
176 GB of RAM to query, 2-40 ms per query).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from _common import RESULTS_DIR, Column, environment, report

PILE_CHUNKS = 5.8e9
CHUNK_TOKENS = 64
RETRO = {"tokenize_cpu_hours": 180, "embed_gpu_hours": 1_000, "query_ram_gb": 176,
         "query_ms": "2-40"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--chunks", type=float, default=PILE_CHUNKS, help="corpus size in chunks (5.8e9)")
    parser.add_argument("--dim", type=int, default=384, help="embedding dimension (384)")
    parser.add_argument("--cores", type=int, default=64, help="cores of the machine to project onto (64)")
    parser.add_argument("--tokens-per-s-per-core", type=float)
    parser.add_argument("--chunks-per-s-per-core", type=float)
    parser.add_argument("--chunks-per-s-per-gpu", type=float)
    parser.add_argument("--resident-bytes-per-vector", type=float)
    parser.add_argument("--add-per-s", type=float, help="index build rate, vectors/s (train + add)")
    parser.add_argument("--p50-ms", type=float, help="query p50 at the measured size")
    parser.add_argument("--chunk-row-bytes", type=float, default=600.0)
    return parser.parse_args(argv)


def _rows(name: str) -> list[dict[str, Any]]:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text())["rows"] if path.exists() else []


def measured(args: argparse.Namespace) -> dict[str, Any]:
    """The per-unit figures, each with where it came from."""
    cores = os.cpu_count() or 1
    found: dict[str, Any] = {}
    chunking = [r for r in _rows("chunking") if str(r.get("method", "")).startswith("end to end")]
    if chunking:
        best = max(chunking, key=lambda r: r["tokens_per_s_per_core"])
        found["tokens_per_s_per_core"] = (best["tokens_per_s_per_core"], f"chunking.json: {best['method']}")
    good = [r for r in _rows("embedding") if r.get("recall_at_10", 1.0) >= 0.95]
    if good:
        best = max(good, key=lambda r: r["chunks_per_s"])
        found["chunks_per_s_per_core"] = (best["chunks_per_s"] / cores,
                                          f"embedding.json: {best.get('precision', 'fp32')} "
                                          f"batch {best['batch_size']}, / {cores} cores")
    index = [r for r in _rows("index") if str(r.get("method", "")).startswith("retro-ops default")
             and r.get("dataset") == "synthetic" and r.get("recall_at_10") is not None]
    if index:
        row = max(index, key=lambda r: r["n"])
        source = f"index.json: {row['factory']} at n={row['n']:,}"
        found["resident_bytes_per_vector"] = (row["bytes_per_vector"], source)
        found["add_per_s"] = (row["n"] / row["build_s"], source)
        found["p50_ms"] = (row["p50_ms"], f"{source}, recall@10 {row['recall_at_10']:.3f}")
    for key in ("tokens_per_s_per_core", "chunks_per_s_per_core", "chunks_per_s_per_gpu",
                "resident_bytes_per_vector", "add_per_s", "p50_ms"):
        if getattr(args, key) is not None:
            found[key] = (getattr(args, key), "--" + key.replace("_", "-"))
    return found


def project(args: argparse.Namespace, unit: dict[str, Any]) -> list[dict[str, Any]]:
    n, rows = args.chunks, []

    def add(item: str, ours: str, retro: str, source: str) -> None:
        rows.append({"item": item, "ours": ours, "retro": retro, "source": source})

    if "tokens_per_s_per_core" in unit:
        rate, source = unit["tokens_per_s_per_core"]
        hours = n * CHUNK_TOKENS / rate / 3600
        add("chunk (tokenize) the corpus", f"{hours:,.0f} CPU-h ({hours / args.cores:,.1f} h on "
            f"{args.cores} cores)", f"~{RETRO['tokenize_cpu_hours']} CPU-h", f"{rate:,.0f} tok/s/core; {source}")
    if "chunks_per_s_per_core" in unit:
        rate, source = unit["chunks_per_s_per_core"]
        hours = n / rate / 3600
        add("embed on CPU", f"{hours:,.0f} CPU-h ({hours / args.cores:,.0f} h on {args.cores} cores)",
            f"~{RETRO['embed_gpu_hours']:,} GPU-h", f"{rate:.1f} chunks/s/core; {source}")
    if "chunks_per_s_per_gpu" in unit:
        rate, source = unit["chunks_per_s_per_gpu"]
        add("embed on GPU", f"{n / rate / 3600:,.0f} GPU-h", f"~{RETRO['embed_gpu_hours']:,} GPU-h",
            f"{rate:,.0f} chunks/s/GPU; {source}")
    if "resident_bytes_per_vector" in unit:
        per, source = unit["resident_bytes_per_vector"]
        add("RAM to query (index resident)", f"{n * per / 1e9:,.0f} GB ({per:.1f} B/vector)",
            f"{RETRO['query_ram_gb']} GB", source)
        disk = n * (per + args.dim * 4 + 8 + args.chunk_row_bytes)
        add("disk (index + refine vectors + chunks)", f"{disk / 1e12:,.1f} TB", "-",
            f"{per:.0f} + {args.dim * 4 + 8} + {args.chunk_row_bytes:.0f} B per chunk")
    if "add_per_s" in unit:
        rate, source = unit["add_per_s"]
        add("build the index (train + add)", f"{n / rate / 3600:,.0f} h at the measured rate",
            "-", f"{rate:,.0f} vectors/s; {source}")
    if "p50_ms" in unit:
        p50, source = unit["p50_ms"]
        add("query latency (p50, at the measured n)", f"{p50:.2f} ms", f"{RETRO['query_ms']} ms", source)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    unit = measured(args)
    if not unit:
        raise SystemExit("no measured figures: run bench/chunking.py, bench/embedding.py and "
                         "bench/index.py first, or pass the rates as flags (see --help)")
    rows = project(args, unit)
    meta = environment()
    meta.update(chunks=args.chunks, dim=args.dim, cores=args.cores,
                unit={k: {"value": v, "source": s} for k, (v, s) in unit.items()})
    columns = [Column("item", f"{args.chunks:.3g} chunks"), Column("ours", "projected here"),
               Column("retro", "RETRO Pile build"), Column("source", "from")]
    notes = ["Linear in n: the index's add rate and latency are measured at a smaller n and grow "
             "with it (more lists to probe); read them as a lower bound. Measured on a shared "
             "2-core machine: per-core rates are lower than on an idle one."]
    report("projection", columns, rows, meta, notes)


if __name__ == "__main__":
    main()
