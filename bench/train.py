"""Training throughput and generation latency of RETRO vs its no-retrieval baseline: what
retrieval costs during training (precomputed neighbours) and during generation (live retrieval).

Model: `retro_ops.training.prepare.demo_model_config()` with vocab_size = the trimmed vocabulary
(`store_vocabulary(ws).size` of the home; 15,834 without one), seq_len `--seq-len` (256) and k
`--k` (2) neighbours per chunk. The baseline is the same config with `retrieval=False`: the very
same decoder, no encoder, no chunked cross-attention. "RETRO before #24" is the model before
issue #24 (no copy head, no match evidence, no standalone loss): RETRO's cost per token was to
grow at most 1.5x over it. All are initialised from the same seed.

Training (tokens/s): real data when `--home` holds the trained corpus (`prepare_training` with
`TrainingSpec(corpus, retrieval_set)`, neighbours precomputed and loaded from the home's cache,
then `retro_ops.training.run.training_data`); otherwise (or with `--synthetic`) uniform random
tokens and neighbours of the same shapes. Each step does what `trainer.train` does: build the
batch of rows `batch_rows(seed, step, ...)` (same rows for both models; RETRO's batch also
gathers its (B, n/m, k, 2m) neighbour tokens), forward + loss, zero_grad, backward,
clip_grad_norm_, AdamW step (the trainer's lr, betas and weight decay; constant lr); RETRO adds
the standalone loss of `TrainConfig.standalone_weight` as the trainer does. The models alternate
step by step (order flipped every step) so that machine noise hits both alike;
`--warmup-steps` (1) untimed steps each first, then `--steps` (5) timed ones. tokens/s = target
tokens (targets != -100, as the trainer counts them) / wall seconds of the timed steps, batch
building included. Ratio = RETRO seconds per step / baseline seconds per step (>1: retrieval
costs that much extra training time per token).

Generation (ms per 64 new tokens): `retro_ops.serving.generator.Generator` with freshly initialised,
untrained models (timing does not depend on the weights; the text is gibberish), the trimmed
vocabulary, the embedder's tokenizer, and the home's retriever for `--retrieval-set` (or none).
Prompt: the first ~`--prompt-tokens` (100) tokens of the first document of the repo's sotu corpus,
cut at a token boundary of the original text, so the first chunk of m = 64 tokens completes in the
prompt and a second one during generation; each completed chunk is retrieved for (live BERT
embedding of the chunk text + FAISS search + LanceDB lookup of the neighbours' tokens). Variants:
RETRO with the retriever; RETRO without a retriever (no neighbours: encoder and CCA are skipped);
the baseline. One untimed 2-token warm-up generation per variant (it pays the cold first
retrieval, reported in the notes), then `--gen-runs` (2) timed `--new-tokens` (64) generations
per variant, interleaved; the fastest by wall time is kept. `Generation.model_seconds` (forward
passes + sampling) and `Generation.retrieval_seconds` (decode + retrieve + encode neighbours)
are the split; total = wall time of the `generate` call. Generation needs a home.

Threads: torch's default unless `--threads`. On a shared machine whose other load takes the
cores, every multi-threaded torch op waits for its descheduled sibling thread: a decoder forward
pass was measured ~25x slower with 2 threads than with 1 under a load average of 5 on 2 cores,
and more ops per pass (RETRO) means more such waits. Look at the load average in the notes, and
compare against `--threads 1` when it exceeds the core count.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from _common import base_parser, best_of, Column, elapsed, environment, load_documents, log, report_tables, time_call

DEFAULT_VOCAB = 15834  # trimmed vocabulary of the default corpora, when no home is given
Batch = tuple[Any, Any, Any, Any]  # (input_ids, targets, neighbours, neighbour_mask)






def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = base_parser(__doc__, "retro-ops home with the trained corpus and a published index")
    parser.add_argument("--synthetic", action="store_true",
                        help="train on random tokens even if the home has data; skips generation")
    parser.add_argument("--corpus", default="sotu", help="training corpus in the home (sotu)")
    parser.add_argument("--retrieval-set", default="sotu",
                        help="retrieval set whose index gives the neighbours (sotu)")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch (8)")
    parser.add_argument("--seq-len", type=int, default=256, help="n, a multiple of 64 (256)")
    parser.add_argument("--k", type=int, default=2, help="neighbours per chunk (2)")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per model (5)")
    parser.add_argument("--warmup-steps", type=int, default=1,
                        help="untimed optimizer steps per model first (1)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per generation (64)")
    parser.add_argument("--prompt-tokens", type=int, default=100,
                        help="prompt length in tokens, >= 64 so a chunk completes (100)")
    parser.add_argument("--gen-runs", type=int, default=2,
                        help="timed generations per variant, fastest kept (2)")
    parser.add_argument("--seed", type=int, default=0, help="weights, batches, sampling (0)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0 = torch's default); on a machine whose "
                             "other load takes cores, 1 avoids waiting on descheduled threads")
    args = parser.parse_args(argv)
    for name in ("batch_size", "seq_len", "k", "steps", "new_tokens", "prompt_tokens", "gen_runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup_steps < 0 or args.threads < 0:
        parser.error("--warmup-steps and --threads must be >= 0")
    return args


# --- data --------------------------------------------------------------------------------------

@dataclass
class Setup:
    config: Any  # RetroConfig of the RETRO model
    batches: dict[bool, Callable[[int], Batch]]  # with_neighbours -> step -> batch
    source: str
    ws: Any = None  # Workspace, None without a home
    data: Any = None  # PreparedData


def open_home(args: argparse.Namespace):
    """(Workspace, PreparedData), or None with the reason when the home has no trained corpus."""
    if args.synthetic:
        return None, "--synthetic"
    home = args.home.expanduser().resolve()
    if not (home / "catalog.db").exists():
        return None, f"no retro-ops home at {home}"
    from retro_ops.errors import RetroOpsError
    from retro_ops.model import RetroConfig
    from retro_ops.settings import Settings
    from retro_ops.training.neighbours import NeighbourConfig
    from retro_ops.training.prepare import TrainingSpec, demo_model_config, prepare_training
    from retro_ops.workspace import Workspace

    ws = Workspace.open(Settings(home=home))
    model = RetroConfig.from_dict({**demo_model_config().to_dict(), "seq_len": args.seq_len,
                                   "n_neighbours": args.k})
    spec = TrainingSpec(corpus=args.corpus, retrieval_set=args.retrieval_set, model=model,
                        neighbours=NeighbourConfig(k=args.k))
    try:
        return (ws, prepare_training(ws, spec)), ""
    except RetroOpsError as exc:
        return None, f"{home}: {exc}"


def setup(args: argparse.Namespace) -> Setup:
    import numpy as np
    import torch

    from retro_ops.model import RetroConfig
    from retro_ops.training.prepare import demo_model_config
    from retro_ops.training.trainer import batch_rows

    opened, why = open_home(args)
    if opened is not None:
        from retro_ops.training.run import training_data

        ws, data = opened
        config = RetroConfig.from_dict({**data.spec.model.to_dict(),
                                        "vocab_size": data.vocab.size, "retrieval": True})
        sets = {flag: training_data(data, flag) for flag in (True, False)}
        n = len(sets[True].sequences)

        def real(flag: bool) -> Callable[[int], Batch]:
            return lambda step: sets[flag].batch(batch_rows(args.seed, step, n, args.batch_size))

        neigh = data.train_neighbours
        source = (f"real: corpus {args.corpus!r} v{data.corpus_version.id} "
                  f"({len(data.train_doc_ids)} train docs, {n} sequences of {config.seq_len} "
                  f"tokens), neighbours from retrieval set {neigh.retrieval_set!r} "
                  f"v{neigh.set_version_id} ({'computed now' if neigh.computed_now else 'cached'})")
        return Setup(config, {flag: real(flag) for flag in (True, False)}, source, ws, data)

    log(f"synthetic training data ({why})")
    config = RetroConfig.from_dict({**demo_model_config().to_dict(), "vocab_size": DEFAULT_VOCAB,
                                    "seq_len": args.seq_len, "n_neighbours": args.k})

    def synthetic(flag: bool) -> Callable[[int], Batch]:
        def batch(step: int) -> Batch:
            g = torch.Generator().manual_seed(int(np.random.default_rng([args.seed, step])
                                                  .integers(2**62)))
            B, T, V = args.batch_size, config.seq_len, config.vocab_size
            ids = torch.randint(1, V, (B, T + 1), generator=g)
            if not flag:
                return ids[:, :-1], ids[:, 1:], None, None
            shape = (B, config.n_chunks, config.n_neighbours)
            neighbours = torch.randint(1, V, (*shape, config.neighbour_len), generator=g)
            return ids[:, :-1], ids[:, 1:], neighbours, torch.ones(shape, dtype=torch.bool)
        return batch

    return Setup(config, {flag: synthetic(flag) for flag in (True, False)},
                 f"synthetic: uniform random tokens and neighbours ({why})")


# --- training ----------------------------------------------------------------------------------

def bench_training(s: Setup, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict]:
    import torch

    from retro_ops.training.trainer import TrainConfig, seeded_model, training_objective

    tc = TrainConfig(batch_size=args.batch_size, seed=args.seed)
    variants = {"RETRO": replace(s.config, retrieval=True),
                "RETRO before #24": replace(s.config, retrieval=True, copy_head=False, match_gate=False),
                "baseline": replace(s.config, retrieval=False),
                "RETRO without the standalone loss": replace(s.config, retrieval=True)}
    standalone = {"RETRO": tc.standalone_weight, "RETRO before #24": 0.0, "baseline": 0.0,
                  "RETRO without the standalone loss": 0.0}
    state = {}
    for name, config in variants.items():
        model = seeded_model(config, args.seed)
        model.train()
        params = list(model.parameters())
        optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay,
                                      betas=(0.9, 0.95))
        state[name] = (model, params, optimizer, s.batches[config.retrieval])
    records: dict[str, list[dict[str, float]]] = {name: [] for name in variants}

    def step(name: str, i: int) -> dict[str, float]:
        model, params, optimizer, make_batch = state[name]
        batch_t, (input_ids, targets, neighbours, mask) = time_call(lambda: make_batch(i))

        def optimize() -> float:  # as trainer.train, the standalone loss included
            loss, objective = training_objective(model, input_ids, targets, neighbours, mask,
                                                 standalone[name])
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            optimizer.step()
            return loss.item()

        step_t, loss = time_call(optimize)
        return {"batch_s": batch_t.wall_s, "step_s": step_t.wall_s, "cpu_s": step_t.cpu_s,
                "tokens": int((targets != -100).sum()), "loss": loss}

    names = list(variants)
    for i in range(args.warmup_steps + args.steps):
        for name in (names if i % 2 == 0 else names[::-1]):  # alternate who goes first
            record = step(name, i)
            if i >= args.warmup_steps:
                records[name].append(record)
        log(f"training step {i + 1}/{args.warmup_steps + args.steps}")

    rows = []
    for name, config in variants.items():
        r = records[name]
        wall = sum(x["batch_s"] + x["step_s"] for x in r)
        rows.append({
            "model": name, "retrieval": config.retrieval,
            "parameters": state[name][0].num_parameters(),
            "steps": len(r), "tokens_per_step": r[0]["tokens"],
            "tokens_per_s": sum(x["tokens"] for x in r) / wall,
            "ms_per_step": 1e3 * wall / len(r),
            "median_ms_per_step": 1e3 * statistics.median(x["batch_s"] + x["step_s"] for x in r),
            "batch_ms": 1e3 * statistics.mean(x["batch_s"] for x in r),
            "cores_busy": sum(x["cpu_s"] for x in r) / sum(x["step_s"] for x in r),
            "loss_first": r[0]["loss"], "loss_last": r[-1]["loss"],
            "step_ms_each": [round(1e3 * (x["batch_s"] + x["step_s"]), 1) for x in r],
        })
    by_model = {row["model"]: row for row in rows}
    base, before = by_model["baseline"], by_model["RETRO before #24"]
    for row in rows:
        row["time_ratio_vs_baseline"] = row["ms_per_step"] / base["ms_per_step"]
        row["median_ratio_vs_baseline"] = row["median_ms_per_step"] / base["median_ms_per_step"]
        row["median_ratio_vs_before_24"] = row["median_ms_per_step"] / before["median_ms_per_step"]
    return rows, {name: config.to_dict() for name, config in variants.items()}


# --- generation --------------------------------------------------------------------------------

def prompt_passage(tokenizer, n_tokens: int) -> str:
    """The first n tokens of the first sotu document, cut in the original text."""
    doc_id, text = load_documents(["sotu"])[0]
    offsets = tokenizer(text[:20 * n_tokens], add_special_tokens=False,
                        return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) < n_tokens:
        raise SystemExit(f"sotu document {doc_id} is shorter than {n_tokens} tokens")
    return text[:offsets[n_tokens - 1][1]]


def retrieval_breakdown(retriever, texts: list[str], k: int, runs: int = 3) -> dict[str, float]:
    """Mean over `texts` of the best-of-`runs` ms of each stage of `Retriever.retrieve`."""
    from retro_ops.retrieval.retriever import NEIGHBOUR_COLUMNS

    stages: dict[str, list[float]] = {"embed_ms": [], "faiss_ms": [], "lancedb_ms": []}
    for text in texts:
        t, vectors = best_of(lambda t=text: retriever.embedder.embed([t]), runs)
        stages["embed_ms"].append(1e3 * t.wall_s)
        t, (_, ids) = best_of(lambda v=vectors: retriever.search(v, k), runs)
        stages["faiss_ms"].append(1e3 * t.wall_s)
        wanted = sorted({int(i) for i in ids.ravel() if i >= 0})
        t, _ = best_of(lambda w=wanted: retriever.store.members(
            retriever.version.digest, NEIGHBOUR_COLUMNS, chunk_ids=w).to_pylist(), runs)
        stages["lancedb_ms"].append(1e3 * t.wall_s)
    return {stage: statistics.mean(values) for stage, values in stages.items()}


def bench_generation(s: Setup, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict]:
    from retro_ops.features.chunking import load_tokenizer
    from retro_ops.serving.generator import Generator
    from retro_ops.training.prepare import store_vocabulary
    from retro_ops.training.trainer import seeded_model

    ws = s.ws
    vocab = store_vocabulary(ws)
    assert vocab.size == s.config.vocab_size
    tokenizer = load_tokenizer(ws.embedder.space.model_path)
    retriever = s.data.retriever  # opened by prepare_training as ws.retriever(retrieval_set)
    prompt = prompt_passage(tokenizer, args.prompt_tokens)
    retro = seeded_model(replace(s.config, retrieval=True), args.seed)
    baseline = seeded_model(replace(s.config, retrieval=False), args.seed)
    variants = {
        "RETRO + retrieval": Generator(retro, vocab, tokenizer, retriever),
        "RETRO, no retriever": Generator(retro, vocab, tokenizer, None),
        "baseline": Generator(baseline, vocab, tokenizer, None),
    }
    m, k = s.config.chunk_size, s.config.n_neighbours
    cold = {}
    for name, gen in variants.items():  # warm-up: kernels, first embedding, first LanceDB read
        t, g = time_call(lambda g=gen: g.generate(prompt, max_new_tokens=2, seed=args.seed))
        cold[name] = {"wall_ms": 1e3 * t.wall_s, "retrieval_ms": 1e3 * g.retrieval_seconds,
                      "retrievals": len(g.retrievals)}
    best: dict[str, tuple[Any, Any]] = {}
    for run in range(args.gen_runs):
        for name, gen in variants.items():
            t, g = time_call(lambda g=gen: g.generate(prompt, max_new_tokens=args.new_tokens,
                                                       seed=args.seed))
            if name not in best or t.wall_s < best[name][0].wall_s:
                best[name] = (t, g)
        log(f"generation run {run + 1}/{args.gen_runs}")

    rows = []
    for name, (t, g) in best.items():
        expected = (g.prompt_tokens + g.new_tokens - 1) // m if variants[name].retriever else 0
        with_hits = sum(len(r.neighbours) == k for r in g.retrievals)
        if variants[name].retriever and (with_hits != expected or expected < 1):
            raise SystemExit(f"{name}: expected {expected} retrievals with {k} neighbours each, "
                             f"got {with_hits} of {len(g.retrievals)}")
        per64 = 64 / g.new_tokens
        rows.append({
            "variant": name, "prompt_tokens": g.prompt_tokens, "new_tokens": g.new_tokens,
            "retrievals": with_hits if variants[name].retriever else 0,
            "total_ms_per_64": 1e3 * t.wall_s * per64,
            "model_ms_per_64": 1e3 * g.model_seconds * per64,
            "retrieval_ms_per_64": 1e3 * g.retrieval_seconds * per64,
            "ms_per_retrieval": (1e3 * g.retrieval_seconds / with_hits
                                 if variants[name].retriever and with_hits else None),
            "retrieval_share": g.retrieval_seconds / t.wall_s,
            "retrieval_vs_model": g.retrieval_seconds / g.model_seconds,
            "cores_busy": t.busy_cores,
        })
    base = rows[-1]
    for row in rows:
        row["total_vs_baseline"] = row["total_ms_per_64"] / base["total_ms_per_64"]
        row["model_vs_baseline"] = row["model_ms_per_64"] / base["model_ms_per_64"]
    chunk_texts = [r.text for r in best["RETRO + retrieval"][1].retrievals]
    meta = {"prompt": prompt, "cold_warmup": cold,
            "retrieval_stages_ms": retrieval_breakdown(retriever, chunk_texts, k),
            "retrieval_set": retriever.version.retrieval_set,
            "index_factory": retriever.manifest.factory, "index_ntotal": retriever.manifest.ntotal,
            "embedder": ws.embedder.space.model_name}
    return rows, meta


# --- main --------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_start = os.getloadavg()[0]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    log("preparing data")
    s = setup(args)
    log(f"data ready: {s.source}")
    train_rows, configs = bench_training(s, args)
    gen_rows, gen_meta = bench_generation(s, args) if s.ws is not None else ([], {})

    meta = environment()
    meta.update(source=s.source, configs=configs, batch_size=args.batch_size,
                steps=args.steps, warmup_steps=args.warmup_steps, gen_runs=args.gen_runs,
                new_tokens=args.new_tokens, seed=args.seed, generation=gen_meta,
                load_avg_start=load_start, elapsed_s=elapsed())
    c = s.config
    train_cols = [
        Column("model", "model"), Column("parameters", "params", "{:,}"),
        Column("tokens_per_s", "tokens/s", "{:,.0f}"),
        Column("ms_per_step", "ms/step (mean)", "{:.0f}"),
        Column("median_ms_per_step", "ms/step (median)", "{:.0f}"),
        Column("batch_ms", "of which batch build ms", "{:.1f}"),
        Column("time_ratio_vs_baseline", "time/step vs baseline", "{:.2f}x"),
        Column("median_ratio_vs_before_24", "median vs RETRO before #24", "{:.2f}x"),
        Column("cores_busy", "cores busy", "{:.2f}"),
    ]
    tables = [(f"Training (B={args.batch_size}, n={c.seq_len}, k={c.n_neighbours}, "
               f"{args.steps} timed AdamW steps each)", train_cols, train_rows)]
    by_model = {row["model"]: row for row in train_rows}
    r, b = by_model["RETRO"], by_model["baseline"]
    notes = [
        (f"Training: RETRO/baseline time per step = {r['time_ratio_vs_baseline']:.2f}x (mean), "
         f"{r['median_ratio_vs_baseline']:.2f}x (median); baseline/RETRO tokens/s = "
         f"{b['tokens_per_s'] / r['tokens_per_s']:.2f}x. Data: {s.source}. Model: demo config "
         f"d={c.d_model}, {c.n_layer} layers, CCA in layers {[i + 1 for i in c.cca_layers()]}, "
         f"encoder {c.enc_n_layer} x d={c.enc_d_model}, vocab {c.vocab_size:,}. Loss first/last "
         f"timed step: RETRO {r['loss_first']:.2f}/{r['loss_last']:.2f}, baseline "
         f"{b['loss_first']:.2f}/{b['loss_last']:.2f}. Per-step ms: RETRO {r['step_ms_each']}, "
         f"baseline {b['step_ms_each']}."),
    ]
    if gen_rows:
        gen_cols = [
            Column("variant", "variant"), Column("retrievals", "retrievals"),
            Column("total_ms_per_64", "total ms / 64 tok", "{:.0f}"),
            Column("model_ms_per_64", "model ms", "{:.0f}"),
            Column("retrieval_ms_per_64", "retrieval ms", "{:.1f}"),
            Column("ms_per_retrieval", "ms / retrieval", "{:.1f}"),
            Column("retrieval_share", "retrieval share", "{:.1%}"),
            Column("total_vs_baseline", "total vs baseline", "{:.2f}x"),
        ]
        tables.append((f"Generation ({args.new_tokens} new tokens after a "
                       f"{gen_rows[0]['prompt_tokens']}-token prompt, untrained weights, best of "
                       f"{args.gen_runs})", gen_cols, gen_rows))
        g, cold = gen_rows[0], gen_meta["cold_warmup"]["RETRO + retrieval"]
        stages = gen_meta["retrieval_stages_ms"]
        notes.append(
            f"Generation: retrieval / model time = {g['retrieval_vs_model']:.3f} "
            f"({g['retrievals']} retrievals, {g['ms_per_retrieval']:.1f} ms each; re-timed by "
            f"stage, best of 3: {stages['embed_ms']:.1f} ms {gen_meta['embedder']} embedding of "
            f"the chunk text, {stages['faiss_ms']:.2f} ms FAISS {gen_meta['index_factory']} "
            f"search over {gen_meta['index_ntotal']:,} chunks, {stages['lancedb_ms']:.1f} ms "
            f"LanceDB lookup of the neighbours' tokens); RETRO model time vs baseline "
            f"{g['model_vs_baseline']:.2f}x. Cold first retrieval (in the untimed warm-up): "
            f"{cold['retrieval_ms']:.0f} ms. Weights are freshly initialised (untrained): "
            "timing does not depend on them. The generator decodes token by token with cached "
            "keys/values and once-encoded neighbours (IncrementalDecoder). 'retrieval ms' of the rows "
            "without a retriever is the chunk decode the generator still does.")
    else:
        notes.append("Generation: skipped (needs a home with a published index; see --home).")
    notes.append(
        f"Machine: {meta['processor']}, os.cpu_count()={meta['cpu_count']}, torch threads "
        f"{meta['torch_threads']}, load avg {load_start:.2f} at start, "
        f"{meta['load_avg_1min']:.2f} at end (shared machine: compare rows within this run); "
        f"total {meta['elapsed_s']:.0f} s.")
    report_tables("train", tables, meta, notes)


if __name__ == "__main__":
    main()
