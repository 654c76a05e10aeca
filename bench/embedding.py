"""Embedding throughput: chunks/s of `retro_ops.features.embedder.Embedder` by batch size, and its FLOP/s
as a share of this machine's measured fp32 matmul peak.

Input: the first N full 64-token chunks (`--n-chunks`, default 512) that the chunker cuts from
the embedded moby_dick corpus. Each batch size runs `embedder.embed(texts)` on all N texts (one
untimed warm-up batch first, then best of `--runs` by wall time); the time includes the
embedder's own tokenization, padding and pooling, i.e. what the pipeline pays.

FLOPs (counted analytically, 1 multiply-add = 2 FLOPs) for a BERT encoder with L layers, hidden
size d, FFN size f, on a sequence of T tokens (the padded length the batch actually ran,
[CLS] and [SEP] included):

    per layer  = 2*T*(4*d*d + 2*d*f)   Q, K, V and output projections (4 d x d), FFN d->f->d
               + 2*2*T*T*d             attention scores Q.K^T and the weighted sum over V
    per chunk  = L * per layer

Embeddings, layer norms, softmax, GELU, biases and pooling are left out (O(T*d), < 1%).
Batch FLOPs = batch size * per-chunk FLOPs at that batch's padded T; the embedder sorts texts by
length, so padding is small.

Fast paths (#17): each `--precisions` entry is its own embedding space (fp32 torch, bf16 torch
with bfloat16 weights and eager attention, int8 ONNX Runtime). The batch sizes run interleaved
(for each batch size and run, every precision in turn), so machine load hits them alike; each
row gives its speed-up over fp32 at the same batch size, also per CPU-second (process CPU time),
which a shared machine disturbs less than wall time. Quality: recall@10 of the fp32 exact
neighbours (inner product, self excluded) among the N chunks, searched in each space's own
vectors.

Peak: the best of `--matmul-runs` float32 (n x n) @ (n x n) torch matmuls (n = `--matmul-size`,
2048 by default, 2*n^3 FLOPs each) with torch's default thread count, measured before and after
the embedder runs; the higher of the two is the reference.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from functools import partial

from _common import Column, best_of, environment, parse_int_list, report, time_call


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--n-chunks", type=int, default=512, metavar="N",
                        help="how many real 64-token chunk texts to embed (512)")
    parser.add_argument("--batch-sizes", type=parse_int_list, default=[8, 32, 64, 128],
                        metavar="B,B,...", help="comma-separated batch sizes (8,32,64,128)")
    parser.add_argument("--runs", type=int, default=2,
                        help="timed passes over the N texts per batch size, best kept (2)")
    parser.add_argument("--precisions", default="fp32,bf16,int8", metavar="P,P,...",
                        help="embedding spaces to compare; fp32 first is the baseline (fp32,bf16,int8); "
                             "P@S runs a torch space with Embedder(streams=S), e.g. bf16@2")
    parser.add_argument("--threads", type=int, default=0, metavar="T",
                        help="torch (and ONNX Runtime) threads; 0 = torch's default (every core)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the peak matmul")
    parser.add_argument("--matmul-runs", type=int, default=10, help="timed peak matmuls (10)")
    args = parser.parse_args(argv)
    if args.n_chunks < 1 or args.runs < 1 or args.matmul_runs < 1 or args.matmul_size < 1:
        parser.error("--n-chunks, --runs, --matmul-size and --matmul-runs must be >= 1")
    return args


def chunk_texts(n: int) -> tuple[list[str], int]:
    """The first n chunk texts of exactly m tokens from moby_dick, and m."""
    from _common import load_documents

    from retro_ops.features.chunking import Chunker
    from retro_ops.features.embedder import default_model_dir

    chunker = Chunker.from_model_dir(default_model_dir())
    m = chunker.config.chunk_tokens
    texts = []
    for chunk in chunker.chunk_documents(load_documents(["moby_dick"])):
        if len(chunk.token_ids) == m:
            texts.append(chunk.text)
            if len(texts) == n:
                return texts, m
    raise SystemExit(f"moby_dick has only {len(texts)} full {m}-token chunks; lower --n-chunks")


def bert_flops_per_sequence(layers: int, d: int, f: int, t: int) -> int:
    """Forward FLOPs of one T-token sequence through the encoder (formula in the docstring)."""
    return layers * (2 * t * (4 * d * d + 2 * d * f) + 2 * 2 * t * t * d)


def matmul_peak(n: int, runs: int) -> float:
    """Best fp32 FLOP/s of an (n x n) @ (n x n) torch matmul."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    timing, _ = best_of(lambda: torch.mm(a, b), runs, warmup=1)
    return 2 * n**3 / timing.wall_s


def batch_flops(embedder, texts: list[str], batch_size: int) -> tuple[int, float]:
    """FLOPs of embed(texts) at this batch size, and the mean padded T: the batches are rebuilt
    as `Embedder.embed` builds them (stable sort by character length, padding to the longest)."""
    import numpy as np

    config = embedder.model.config
    order = np.argsort([len(t) for t in texts], kind="stable")
    total, t_sum = 0, 0
    for start in range(0, len(texts), batch_size):
        batch = [texts[i] for i in order[start:start + batch_size]]
        encoded = embedder.tokenizer(batch, padding=True, truncation=True,
                                     max_length=embedder.space.max_tokens)
        t = len(encoded["input_ids"][0])
        total += len(batch) * bert_flops_per_sequence(
            config.num_hidden_layers, config.hidden_size, config.intermediate_size, t)
        t_sum += len(batch) * t
    return total, t_sum / len(texts)


def recall_at_10(reference, vectors) -> float:
    """Share of each chunk's 10 exact fp32 neighbours (itself excluded) found by `vectors`."""
    import numpy as np

    def top(v):
        scores = v @ v.T
        np.fill_diagonal(scores, -np.inf)
        return np.argsort(-scores, axis=1)[:, :10]

    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top(reference), top(vectors))]))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from retro_ops.features.embedder import Embedder

    if args.threads:  # before any embedder: the int8 session takes torch's thread count
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    peak_before = matmul_peak(args.matmul_size, args.matmul_runs)
    texts, m = chunk_texts(args.n_chunks)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    embedders = {p: Embedder(precision=p.partition("@")[0], streams=int(p.partition("@")[2] or 1))
                 for p in precisions}
    embedder = embedders[precisions[0]]
    config = embedder.model.config

    best: dict[tuple[str, int], Any] = {}
    outputs: dict[str, Any] = {}
    for batch_size in args.batch_sizes:
        for e in embedders.values():
            e.batch_size = batch_size
            e.embed(texts[:batch_size])  # warm-up: allocator, kernels for this shape
        for _ in range(args.runs):  # interleaved: every precision once per round
            for p, e in embedders.items():
                timing, vectors = time_call(partial(e.embed, texts))
                outputs[p] = vectors
                if (p, batch_size) not in best or timing.wall_s < best[(p, batch_size)].wall_s:
                    best[(p, batch_size)] = timing
    recall = {p: recall_at_10(outputs[precisions[0]], outputs[p]) for p in precisions}
    rows: list[dict[str, Any]] = []
    for batch_size in args.batch_sizes:
        flops, mean_t = batch_flops(embedder, texts, batch_size)
        base = best[(precisions[0], batch_size)]
        for p in precisions:
            timing = best[(p, batch_size)]
            rows.append({
                "precision": p, "space_id": embedders[p].space.space_id,
                "batch_size": batch_size, "n_chunks": len(texts), "wall_s": timing.wall_s,
                "cpu_s": timing.cpu_s, "cores_busy": timing.busy_cores,
                "chunks_per_s": len(texts) / timing.wall_s,
                "chunks_per_cpu_s": len(texts) / timing.cpu_s,
                "speedup_wall": base.wall_s / timing.wall_s, "speedup_cpu": base.cpu_s / timing.cpu_s,
                "recall_at_10": recall[p], "ms_per_chunk": 1e3 * timing.wall_s / len(texts),
                "mean_padded_T": mean_t, "gflop_per_chunk": flops / len(texts) / 1e9,
                "gflop_per_s": flops / timing.wall_s / 1e9,
            })
    peak_after = matmul_peak(args.matmul_size, args.matmul_runs)
    peak = max(peak_before, peak_after)
    for row in rows:
        row["pct_of_matmul_peak"] = 100 * row["gflop_per_s"] * 1e9 / peak

    meta = environment()
    meta.update(
        model=embedder.space.model_name, layers=config.num_hidden_layers, hidden=config.hidden_size,
        intermediate=config.intermediate_size, heads=config.num_attention_heads,
        chunk_tokens=m, n_chunks=len(texts), runs=args.runs, matmul_size=args.matmul_size,
        matmul_peak_gflops_before=peak_before / 1e9, matmul_peak_gflops_after=peak_after / 1e9,
        matmul_peak_gflops=peak / 1e9, elapsed_s=time.perf_counter() - t0, precisions=precisions,
    )
    columns = [
        Column("precision", "space"),
        Column("batch_size", "batch size"),
        Column("chunks_per_s", "chunks/s", "{:.1f}"),
        Column("speedup_wall", "vs fp32 (wall)", "{:.2f}x"),
        Column("chunks_per_cpu_s", "chunks/CPU-s", "{:.1f}"),
        Column("speedup_cpu", "vs fp32 (CPU)", "{:.2f}x"),
        Column("recall_at_10", "recall@10 vs fp32", "{:.3f}"),
        Column("pct_of_matmul_peak", "fp32-equiv. % of peak", "{:.0f}%"),
    ]
    notes = [
        (f"Model {meta['model']}: L={meta['layers']}, d={meta['hidden']}, "
         f"f={meta['intermediate']}; {len(texts)} real {m}-token moby_dick chunks, padded T ~ "
         f"{rows[0]['mean_padded_T']:.1f} tokens incl. [CLS]/[SEP], "
         f"{rows[0]['gflop_per_chunk']:.3f} GFLOP/chunk; best of {args.runs}, interleaved."),
        (f"Peak: fp32 {args.matmul_size}^3 torch.mm with {meta['torch_threads']} torch threads: "
         f"{peak_before / 1e9:.1f} GFLOP/s before, {peak_after / 1e9:.1f} after; the higher is "
         f"100%. Machine: {meta['processor']}, os.cpu_count()={meta['cpu_count']}, load avg "
         f"{load_start:.2f} at start, {meta['load_avg_1min']:.2f} at end; "
         f"total {meta['elapsed_s']:.0f} s."),
    ]
    report("embedding", columns, rows, meta, notes)


if __name__ == "__main__":
    main()
