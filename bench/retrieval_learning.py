"""Does RETRO beat its paired baseline, and where does the gain come from? Held-out bits per
byte of RETRO (no retrieval and with real neighbours) against the baseline trained from the same
seed (identical decoder initialisation, identical batches), over several seeds, with 95% paired
bootstrap intervals over held-out chunks and buckets by the paper's overlap alpha.

Data: the home's training corpus and retrieval set through `prepare_training` (the seeded split,
training neighbours that never come from a held-out document or a near-duplicate of one, held-out
neighbours from the set minus the chunk's own document), model `demo_model_config()`, k = 2.
Bytes are counted exactly from token offsets (`evaluation.token_bytes`).

Per seed and variant (self-neighbour share, shift and noise as `--self-neighbours
SHARE[:SHIFT:NOISE],...`, times each of `--steps`): a baseline and a RETRO are trained by the
library's trainer; differences (negative: the first is better) are RETRO with retrieval minus the
baseline, and RETRO with retrieval minus RETRO without, each with its interval, over all held-out
chunks and over the chunks with alpha <= 12.5% (those that can copy little). With `--swap-on
CORPUS` the models are also evaluated on that corpus's held-out text with each of `--swap-sets`
(the zero-shot swap), with the baseline's row and the interval of each set against the first.
With `--retrofit` each seed's baseline is also RETROfitted (its decoder frozen, only the encoder and
CCA train, as the demo's `retrofit_checkpoint`) and compared with that baseline. The summary gives
mean and sample standard deviation across seeds. Runs on `--device`.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from _common import Column, base_parser, environment, log, parse_int_list, report_tables


def parse_naturals(text: str) -> list[int]:
    """argparse type for seeds and token counts: "0,1,2"."""
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 0 for v in values):
        raise ValueError(f"expected comma-separated integers >= 0, got {text!r}")
    return values


def parse_variants(text: str) -> list[tuple[float, int, float]]:
    """argparse type for self-neighbour variants "0.25,0.5:32:0.3": SHARE or SHARE:SHIFT:NOISE
    (shift and noise 0 when left out), each checked as TrainConfig checks it."""
    from retro_ops.training.config import TrainConfig  # torch-free: parsing stays quick

    variants = []
    for entry in (e.strip() for e in text.split(",")):
        parts = entry.split(":")
        try:
            if len(parts) not in (1, 3):
                raise ValueError("expected SHARE or SHARE:SHIFT:NOISE")
            share, shift, noise = float(parts[0]), *((int(parts[1]), float(parts[2])) if parts[1:] else (0, 0.0))
            TrainConfig(self_neighbours=share, self_neighbour_shift=shift, self_neighbour_noise=noise)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"self-neighbour variant {entry!r}: {exc}") from exc
        variants.append((share, shift, noise))
    return variants


def main() -> None:
    parser = base_parser(__doc__, "retro-ops home holding the trained corpus and its retrieval set")
    parser.add_argument("--corpus", default="sotu")
    parser.add_argument("--retrieval-set", default="sotu")
    parser.add_argument("--steps", type=parse_int_list, default=[300])
    parser.add_argument("--self-neighbours", type=parse_variants, default=None,
                        help="comma-separated variants SHARE[:SHIFT:NOISE]: the share of training chunks "
                             "given a self-neighbour, moved by up to SHIFT tokens, NOISE of its tokens "
                             "dropped or replaced (default: TrainConfig's)")
    parser.add_argument("--seeds", type=parse_naturals, default=[0, 1, 2])
    parser.add_argument("--swap-on", default="", help="also evaluate this corpus's held-out text")
    parser.add_argument("--swap-sets", default="", help="comma-separated sets for --swap-on "
                                                        "(default: the training set)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--retrofit", action="store_true",
                        help="also RETROfit each seed's baseline (frozen decoder, only the encoder "
                             "and CCA train, the demo's `retrofit_checkpoint`) and compare it")
    parser.add_argument("--retrofit-steps", type=int, default=0,
                        help="steps of each RETROfit (0: the same as its baseline's)")
    parser.add_argument("--cca-start-layer", type=int, default=0,
                        help="first CCA layer of RETRO (0: the demo model's own)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()
    if args.retrofit_steps < 0 or args.cca_start_layer < 0:
        parser.error("--retrofit-steps and --cca-start-layer take 0 (the default) or a positive number")
    if args.retrofit_steps and not args.retrofit:
        parser.error("--retrofit-steps needs --retrofit")
    if len(args.seeds) < 3:
        log("fewer than 3 seeds: the spread across seeds means little")

    import numpy as np
    import torch

    from retro_ops.evaluation.bits_per_byte import evaluate
    from retro_ops.evaluation.compare import heldout_text
    from retro_ops.evaluation.intervals import mean_and_spread, paired_bootstrap
    from retro_ops.evaluation.overlap import Buckets, overlap_alpha
    from retro_ops.evaluation.token_bytes import token_bytes
    from retro_ops.features.chunking import Chunker
    from retro_ops.settings import Settings
    from retro_ops.training.data import make_sequences
    from retro_ops.training.neighbours import NeighbourConfig
    from retro_ops.training.prepare import (
        TrainingSpec, encode_neighbours, encode_table, neighbours_for, prepare_training,
    )
    from retro_ops.training.run import model_config, training_data
    from retro_ops.training.trainer import TrainConfig, TrainingData, seeded_model, train
    from retro_ops.training.vocab import UNK
    from retro_ops.workspace import Workspace

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ws = Workspace.open(Settings(home=args.home))
    data = prepare_training(ws, TrainingSpec(corpus=args.corpus, retrieval_set=args.retrieval_set))
    config, vocab, m = model_config("retro", data), data.vocab, data.spec.model.chunk_size
    if args.cca_start_layer:
        config = replace(config, cca_start_layer=args.cca_start_layer)
    base_config = model_config("baseline", data)
    unk_id = int(vocab.encode(np.array([UNK]))[0])
    chunker = Chunker(ws.embedder.tokenizer)

    def setting(table, found):
        """(sequences, bytes, buckets, data with neighbours | None) of one text and set."""
        sequences = make_sequences(encode_table(table, vocab), config.n_chunks)
        sizes = token_bytes(ws.store, chunker, table)
        if found is None:
            return sequences, sizes, None, None
        buckets = Buckets.of(overlap_alpha(table, sequences, found), sizes.sum(axis=1) > 0)
        return sequences, sizes, buckets, TrainingData(sequences, encode_neighbours(found, vocab))

    seqs, sizes, buckets, heldout = setting(data.heldout_table, data.heldout_neighbours.neighbours)
    swaps = {}
    if args.swap_on:
        text = heldout_text(ws, args.swap_on, data.spec.split, m)
        for name in (args.swap_sets or args.retrieval_set).split(","):
            found = neighbours_for(ws, text.table, ws.retriever(name), NeighbourConfig(k=config.n_neighbours), m)
            swaps[name] = setting(text.table, found.neighbours)
    log(f"{len(data.train_table)} train / {len(data.heldout_table)} held-out chunks of {args.corpus}, "
        f"neighbours from {args.retrieval_set}; alpha>50% share {buckets.leaky_share:.3f}; device {device}")

    defaults = TrainConfig()
    variants = args.self_neighbours or [
        (defaults.self_neighbours, defaults.self_neighbour_shift, defaults.self_neighbour_noise)]

    def fit(cfg, variant, steps, seed, with_neighbours, decoder_of=None):
        """decoder_of: a trained baseline to RETROfit (its decoder loaded and frozen)."""
        share, shift, noise = variant
        tc = TrainConfig(steps=steps, batch_size=args.batch_size, seed=seed, checkpoint_every=steps,
                         self_neighbours=share, self_neighbour_shift=shift, self_neighbour_noise=noise,
                         warmup_steps=max(1, steps // 10))  # as the demo
        inputs = training_data(replace(data, spec=replace(data.spec, train=tc)), with_neighbours)
        model = seeded_model(cfg, seed)
        if decoder_of is not None:  # as training.trainer.retrofit_model, from memory
            model.load_state_dict(decoder_of.state_dict(), strict=False)
        model = model.to(device)
        trainable = model.retrieval_parameters() if decoder_of is not None else None
        with tempfile.TemporaryDirectory() as tmp:
            seconds = train(model, inputs, Path(tmp) / "model", tc, trainable=trainable).seconds
        return model, seconds

    def score(model, seq, n_bytes, with_data):
        return evaluate(model, with_data or TrainingData(seq, None), "", n_bytes, unk_id,
                        batch_size=args.batch_size).chunks

    def diff(a, b, rows, seed):
        rows = rows[a.bytes[rows] > 0]
        return paired_bootstrap(a.nll[rows], b.nll[rows], a.bytes[rows], resamples=args.resamples, seed=seed)

    rows, swap_rows = [], []
    for seed in args.seeds:
        for steps in args.steps:
            baseline, base_s = fit(base_config, (0.0, 0, 0.0), steps, seed, False)
            b_none = score(baseline, seqs, sizes, None)
            for variant in variants:
                share, shift, noise = variant
                retro, retro_s = fit(config, variant, steps, seed, True)
                r_none, r_real = score(retro, seqs, sizes, None), score(retro, seqs, sizes, heldout)
                row = {"share": share, "shift": shift, "noise": noise, "steps": steps,
                       "seed": seed, "train_s": base_s + retro_s,
                       "bpb_baseline": b_none.bits_per_byte(), "bpb_retro_none": r_none.bits_per_byte(),
                       "bpb_retro_real": r_real.bits_per_byte(),
                       "bpb_known_baseline": b_none.bits_per_byte(known_only=True),
                       "bpb_known_retro_real": r_real.bits_per_byte(known_only=True)}
                for label, key in (("all", "all"), ("alpha<=12.5%", "low")):
                    chosen = buckets.rows[label]
                    vs_base, vs_none = diff(r_real, b_none, chosen, seed), diff(r_real, r_none, chosen, seed)
                    row[f"vs_baseline_{key}"] = vs_base.difference
                    row[f"vs_baseline_{key}_ci"] = f"[{vs_base.low:+.4f}, {vs_base.high:+.4f}]"
                    row[f"vs_none_{key}"] = vs_none.difference
                    row[f"vs_none_{key}_ci"] = f"[{vs_none.low:+.4f}, {vs_none.high:+.4f}]"
                if args.retrofit:
                    retrofit, fit_s = fit(config, variant, args.retrofit_steps or steps, seed, True,
                                          decoder_of=baseline)
                    f_real = score(retrofit, seqs, sizes, heldout)
                    row["train_s"] += fit_s
                    row["bpb_retrofit_real"] = f_real.bits_per_byte()
                    for label, key in (("all", "all"), ("alpha<=12.5%", "low")):
                        iv = diff(f_real, b_none, buckets.rows[label], seed)
                        row[f"retrofit_vs_baseline_{key}"] = iv.difference
                        row[f"retrofit_vs_baseline_{key}_ci"] = f"[{iv.low:+.4f}, {iv.high:+.4f}]"
                rows.append(row)
                log(f"seed={seed} steps={steps} variant={variant}: " + ", ".join(
                    f"{k}={v:+.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
                first = None
                for name, (s_seq, s_sizes, s_buckets, s_data) in swaps.items():
                    s_real = score(retro, s_seq, s_sizes, s_data)
                    s_base = score(baseline, s_seq, s_sizes, None)
                    all_rows = s_buckets.rows["all"]
                    vs_base = diff(s_real, s_base, all_rows, seed)
                    s_none = score(retro, s_seq, s_sizes, None)
                    out = {"share": share, "shift": shift, "noise": noise, "steps": steps,
                           "seed": seed, "set": name,
                           "bpb_baseline": s_base.bits_per_byte(), "bpb_retro_none": s_none.bits_per_byte(),
                           "bpb_retro_set": s_real.bits_per_byte(),
                           "unk_share": int(s_real.unk_tokens.sum()) / max(int(s_real.tokens.sum()), 1),
                           "bpb_known_retro_set": s_real.bits_per_byte(known_only=True),
                           "vs_baseline": vs_base.difference,
                           "vs_baseline_ci": f"[{vs_base.low:+.4f}, {vs_base.high:+.4f}]"}
                    if first is None:
                        first = s_real
                    else:
                        vs_first = diff(s_real, first, all_rows, seed)
                        out["vs_first_set"] = vs_first.difference
                        out["vs_first_set_ci"] = f"[{vs_first.low:+.4f}, {vs_first.high:+.4f}]"
                    swap_rows.append(out)

    summary = []
    for share, shift, noise in variants:
        for steps in args.steps:
            group = [r for r in rows
                     if (r["share"], r["shift"], r["noise"], r["steps"]) == (share, shift, noise, steps)]
            entry = {"share": share, "shift": shift, "noise": noise, "steps": steps, "seeds": len(group)}
            keys = ["bpb_baseline", "bpb_retro_real", "vs_baseline_all", "vs_baseline_low", "vs_none_all"]
            keys += ["bpb_retrofit_real", "retrofit_vs_baseline_all"] if args.retrofit else []
            for key in keys:
                mean, spread = mean_and_spread([r[key] for r in group])
                entry[key] = f"{mean:+.4f} ± {spread:.4f}" if "vs_" in key else f"{mean:.4f} ± {spread:.4f}"
            summary.append(entry)
    f4, d4 = "{:.4f}", "{:+.4f}"
    variant_cols = [Column("share", "self-neighbour share", "{:.2f}"), Column("shift", "shift"),
                    Column("noise", "noise", "{:.2f}")]
    per_seed = [*variant_cols, Column("steps", "steps"),
                Column("seed", "seed"), Column("bpb_baseline", "baseline bpb", f4),
                Column("bpb_retro_none", "RETRO, no retrieval", f4), Column("bpb_retro_real", "RETRO, retrieval", f4),
                Column("bpb_known_retro_real", "RETRO non-[UNK] bpb", f4),
                Column("vs_baseline_all", "RETRO - baseline", d4), Column("vs_baseline_all_ci", "95% CI"),
                Column("vs_baseline_low", "RETRO - baseline, alpha<=12.5%", d4),
                Column("vs_baseline_low_ci", "95% CI"),
                Column("vs_none_all", "retrieval - none", d4), Column("vs_none_all_ci", "95% CI")]
    if args.retrofit:
        per_seed += [Column("bpb_retrofit_real", "RETROfit, retrieval", f4),
                     Column("retrofit_vs_baseline_all", "RETROfit - baseline", d4),
                     Column("retrofit_vs_baseline_all_ci", "95% CI"),
                     Column("retrofit_vs_baseline_low", "RETROfit - baseline, alpha<=12.5%", d4),
                     Column("retrofit_vs_baseline_low_ci", "95% CI")]
    summary_cols = [*variant_cols, Column("steps", "steps"),
                    Column("seeds", "seeds"), Column("bpb_baseline", "baseline bpb"),
                    Column("bpb_retro_real", "RETRO bpb, retrieval"), Column("vs_baseline_all", "RETRO - baseline"),
                    Column("vs_baseline_low", "RETRO - baseline, alpha<=12.5%"),
                    Column("vs_none_all", "retrieval - none")]
    if args.retrofit:
        summary_cols += [Column("bpb_retrofit_real", "RETROfit bpb, retrieval"),
                         Column("retrofit_vs_baseline_all", "RETROfit - baseline")]
    tables = [("per seed (held-out " + args.corpus + ")", per_seed, rows),
              ("mean ± sd across seeds", summary_cols, summary)]
    if swap_rows:
        tables.append((f"swap: held-out {args.swap_on}", [
            *variant_cols, Column("seed", "seed"), Column("set", "set"),
            Column("bpb_baseline", "baseline bpb", f4), Column("bpb_retro_none", "RETRO, no retrieval", f4),
            Column("bpb_retro_set", "RETRO, set", f4), Column("unk_share", "[UNK] share", "{:.3f}"),
            Column("bpb_known_retro_set", "RETRO non-[UNK] bpb", f4),
            Column("vs_baseline", "RETRO - baseline", d4), Column("vs_baseline_ci", "95% CI"),
            Column("vs_first_set", "set - first set", d4), Column("vs_first_set_ci", "95% CI")], swap_rows))
    report_tables("retrieval_learning", tables,
                  {"device": device, "corpus": args.corpus, "retrieval_set": args.retrieval_set,
                   "swap_on": args.swap_on, "batch_size": args.batch_size, "seeds": args.seeds,
                   "retrofit_steps": args.retrofit_steps, "cca_start_layer": args.cca_start_layer,
                   "alpha_over_half_share": buckets.leaky_share, **environment()})


if __name__ == "__main__":
    main()
