"""Does RETRO read its neighbours? Paired comparisons over seeds, on the validation part (for
choosing) or the test part (for reporting) of the held-out documents, with controls that separate
reading from extra capacity.

Per seed a baseline is trained; per seed and variant a RETRO (and with `--retrofit` a RETROfit of
that seed's baseline) is trained from the same initial decoder and batches. Each is scored in
bits per byte on the chosen part: no retrieval; the training set; the same neighbours shuffled
across chunks; an unrelated set (`--unrelated-set`); the oracle (the exact text that follows as
the last neighbour). Buckets: all chunks, sequence-first chunks (they read nothing), chunks that
read neighbours, those with overlap alpha > 50%, and the ten alpha deciles of the reading chunks.

Intervals: per seed, a paired bootstrap that resamples documents (chunks of a chapter are
correlated); across seeds, a Student-t interval of the per-seed differences (what survives
retraining). Variants override TrainConfig or RetroConfig fields:
`--variant copy=copy_head=true --variant cca-only=copy_head=false,no_neighbour_share=0.1`.
Also records training tokens/s per model and wall time, the CPU model and its flags. Writes
bench/results/retrieval_learning.json and, with `--plot`, the decile curves as a PNG.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

from _common import (
    RESULTS_DIR, Column, base_parser, environment, log, parse_int_list, report_tables, write_results,
)


def parse_naturals(text: str) -> list[int]:
    """argparse type for seeds: "0,1,2"."""
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 0 for v in values):
        raise ValueError(f"expected comma-separated integers >= 0, got {text!r}")
    return values


def parse_variant(text: str) -> tuple[str, dict]:
    """NAME=FIELD=VALUE,FIELD=VALUE over TrainConfig and RetroConfig fields (checked here)."""
    import argparse

    from retro_ops.model.config import RetroConfig
    from retro_ops.training.config import TrainConfig

    name, _, body = text.partition("=")
    known = {f.name: f for cls in (TrainConfig, RetroConfig) for f in fields(cls)}
    overrides = {}
    for item in filter(None, body.split(",")):
        key, _, raw = item.partition("=")
        if key not in known:
            raise argparse.ArgumentTypeError(f"variant {name!r}: unknown field {key!r}")
        default = getattr(TrainConfig if key in TrainConfig.__dataclass_fields__ else RetroConfig, key)
        kind = type(default) if default is not None else int
        overrides[key] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
    if not name:
        raise argparse.ArgumentTypeError(f"variant {text!r}: expected NAME=FIELD=VALUE,...")
    return name, overrides


BUCKETS = ("all", "first chunks", "reads", "reads, alpha>50%")
KEYS = {"all": "all", "first chunks": "first", "reads": "reads", "reads, alpha>50%": "high"}


SUMMARY_KEYS = ("set_vs_base_reads", "set_vs_base_high", "set_vs_base_all", "set_vs_base_first",
                "none_vs_base_all", "set_vs_none_reads", "shuffled_vs_none_reads", "oracle_vs_none_reads",
                "unrelated_vs_none_reads")


def across_seeds(per_seed: list[dict]) -> list[dict]:
    """Per (variant, model, steps): the mean of each paired difference over seeds with its 95%
    Student-t interval (seeds are the unit: what survives retraining)."""
    import numpy as np

    from retro_ops.evaluation.intervals import seed_interval

    summary = []
    for variant, kind, steps in dict.fromkeys((r["variant"], r["kind"], r["steps"]) for r in per_seed):
        group = [r for r in per_seed if (r["variant"], r["kind"], r["steps"]) == (variant, kind, steps)]
        entry = {"variant": variant, "kind": kind, "steps": steps, "seeds": len(group),
                 "seed_list": ",".join(str(r["seed"]) for r in group),
                 "tokens_per_s_ratio": float(np.mean([r["tokens_per_s"] / r["baseline_tokens_per_s"]
                                                      for r in group]))}
        for key in SUMMARY_KEYS:
            values = [r[key] for r in group if key in r]
            if len(values) >= 2:
                iv = seed_interval(values)
                entry[key] = f"{iv.difference:+.4f} [{iv.low:+.4f}, {iv.high:+.4f}]"
            elif values:
                entry[key] = f"{values[0]:+.4f}"
        summary.append(entry)
    return summary


def combine(paths: list[str], name: str) -> None:
    """Runs of other seeds side by side (`--name`) read back and summarised as one run; a run
    stopped early counts with the seeds its `_partial` file holds (rows without a table)."""
    import json

    rows = [r for path in paths for r in json.loads(Path(path).read_text())["rows"]
            if r.get("table", "per seed").startswith("per seed")]
    report_tables(name, [("across seeds: mean [95% t interval over seeds]", SUMMARY_COLUMNS,
                          across_seeds(rows))], {"combined": paths})


SUMMARY_COLUMNS = [Column("variant", "variant"), Column("kind", "model"), Column("steps", "steps"),
                   Column("seed_list", "seeds"), Column("set_vs_base_reads", "reads: - baseline [95% t, seeds]"),
                   Column("set_vs_base_high", "α>50%: - baseline"), Column("set_vs_base_all", "all: - baseline"),
                   Column("set_vs_base_first", "first chunks: - baseline"),
                   Column("none_vs_base_all", "no retrieval - baseline"),
                   Column("shuffled_vs_none_reads", "shuffled - none"),
                   Column("unrelated_vs_none_reads", "unrelated - none"),
                   Column("oracle_vs_none_reads", "oracle - none"),
                   Column("tokens_per_s_ratio", "train tok/s vs baseline", "{:.2f}x")]


def main() -> None:
    parser = base_parser(__doc__, "retro-ops home holding the trained corpus and its retrieval set")
    parser.add_argument("--corpus", default="kjv_nt")
    parser.add_argument("--retrieval-set", default="asv_nt")
    parser.add_argument("--unrelated-set", default="", help="a set of another domain, as a control")
    parser.add_argument("--part", choices=["validation", "test"], default="validation",
                        help="held-out part scored: validation for choosing, test for reporting")
    parser.add_argument("--steps", type=parse_int_list, default=[300])
    parser.add_argument("--seeds", type=parse_naturals, default=[0, 1, 2, 3, 4])
    parser.add_argument("--variant", type=parse_variant, action="append", default=[],
                        help="NAME=FIELD=VALUE,... (repeatable; default: one variant of the defaults)")
    parser.add_argument("--retrofit", action="store_true", help="also RETROfit each seed's baseline")
    parser.add_argument("--no-retro", action="store_true",
                        help="with --retrofit: skip RETRO trained from scratch (half the time)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--plot", action="store_true", help="write the first seed's decile curves (PNG)")
    parser.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--name", default="retrieval_learning",
                        help="results file stem under bench/results (runs side by side need their own)")
    parser.add_argument("--combine", default="",
                        help="FILE,FILE: summarise the per-seed rows of earlier runs' results files "
                             "over all their seeds (nothing is trained)")
    args = parser.parse_args()
    if args.combine:
        return combine(args.combine.split(","), args.name)
    if args.no_retro and not args.retrofit:
        parser.error("--no-retro needs --retrofit (nothing would be trained but the baseline)")
    if len(args.seeds) < 2:
        log("one seed: no seed-level interval")

    import numpy as np
    import torch

    from retro_ops.evaluation.bits_per_byte import evaluate
    from retro_ops.evaluation.compare import control_neighbours
    from retro_ops.evaluation.intervals import paired_bootstrap
    from retro_ops.evaluation.overlap import Buckets, overlap_alpha, reads_neighbours
    from retro_ops.evaluation.token_bytes import token_bytes
    from retro_ops.features.chunking import Chunker
    from retro_ops.model import RetroConfig
    from retro_ops.settings import Settings
    from retro_ops.training.config import NeighbourConfig, TrainConfig
    from retro_ops.training.data import make_sequences
    from retro_ops.training.prepare import (
        TrainingSpec, encode_neighbours, encode_table, neighbours_for, prepare_training,
    )
    from retro_ops.training.run import model_config, training_data
    from retro_ops.training.trainer import TrainingData, seeded_model, train
    from retro_ops.training.vocab import UNK
    from retro_ops.workspace import Workspace

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ws = Workspace.open(Settings(home=args.home))
    data = prepare_training(ws, TrainingSpec(corpus=args.corpus, retrieval_set=args.retrieval_set))
    vocab, m = data.vocab, data.spec.model.chunk_size
    unk_id = int(vocab.encode(np.array([UNK]))[0])
    part_docs = set(data.split.part(args.part))
    rows_of_part = np.flatnonzero(np.isin(data.heldout_table.doc_ids, list(part_docs)))
    table = replace(data.heldout_table, **{f.name: getattr(data.heldout_table, f.name)[rows_of_part]
                                           for f in fields(data.heldout_table) if f.name != "dropped"})
    found = data.heldout_neighbours.neighbours
    found = replace(found, **{f.name: getattr(found, f.name)[rows_of_part] for f in fields(found)
                              if getattr(found, f.name) is not None})
    sequences = make_sequences(encode_table(table, vocab), data.spec.model.n_chunks)
    sizes = token_bytes(ws.store, Chunker(ws.embedder.tokenizer), table)
    alpha = overlap_alpha(table, sequences, found)
    buckets = Buckets.of(alpha, sizes.sum(axis=1) > 0, reads_neighbours(sequences, found, len(table)))
    settings = {"set": found, **{f"set {k}": v for k, v in control_neighbours(found, table, 0).items()}}
    if args.unrelated_set:
        settings["unrelated"] = neighbours_for(ws, table, ws.retriever(args.unrelated_set),
                                               NeighbourConfig(k=data.spec.neighbours.k), m).neighbours
    inputs = {name: TrainingData(sequences, encode_neighbours(n, vocab)) for name, n in settings.items()}
    plain = TrainingData(sequences, None)
    log(f"{len(data.train_table)} train chunks; {args.part}: {len(part_docs)} documents, {len(table)} "
        f"chunks ({len(buckets.rows['reads'])} read neighbours, {len(buckets.rows['reads, alpha>50%'])} "
        f"with alpha > 50%); device {device}")

    def fit(config: RetroConfig, tc: TrainConfig, with_neighbours: bool, decoder_of=None):
        model = seeded_model(config, tc.seed)
        if decoder_of is not None:  # RETROfit: the baseline's decoder, frozen
            model.load_state_dict(decoder_of.state_dict(), strict=False)
        model = model.to(device)
        trainable = model.retrieval_parameters() if decoder_of is not None else None
        batches = training_data(replace(data, spec=replace(data.spec, train=tc)), with_neighbours)
        with tempfile.TemporaryDirectory() as tmp:
            result = train(model, batches, Path(tmp) / "model", tc, trainable=trainable)
        return model, result

    def score(model, feed):
        return evaluate(model, feed, "", sizes, unk_id, batch_size=args.batch_size).chunks

    def diff(a, b, label, seed):
        rows = buckets.rows[label]
        rows = rows[a.bytes[rows] > 0]
        return paired_bootstrap(a.nll[rows], b.nll[rows], a.bytes[rows], clusters=table.doc_ids[rows],
                                resamples=args.resamples, seed=seed)

    variants = args.variant or [("default", {})]
    train_fields = {f.name for f in fields(TrainConfig)}
    per_seed, curves = [], {}
    started = time.perf_counter()
    for steps in args.steps:
        for seed in args.seeds:
            base_tc = TrainConfig(steps=steps, batch_size=args.batch_size, seed=seed, checkpoint_every=steps)
            baseline, base_result = fit(model_config("baseline", data), base_tc, False)
            b_none = score(baseline, plain)
            curves.setdefault((steps, seed), {})["baseline"] = [b_none.bits_per_byte(r) for r in buckets.decile_rows]
            for name, overrides in variants:
                tc = replace(base_tc, **{k: v for k, v in overrides.items() if k in train_fields})
                config = replace(model_config("retro", data), **{k: v for k, v in overrides.items()
                                                                 if k not in train_fields})
                kinds = ([] if args.no_retro else [("retro", None)]) + (
                    [("retrofit", baseline)] if args.retrofit else [])
                for kind, parent in kinds:
                    model, result = fit(config, tc, True, parent)
                    none, scored = score(model, plain), {s: score(model, feed) for s, feed in inputs.items()}
                    row = {"variant": name, "kind": kind, "steps": steps, "seed": seed,
                           "tokens_per_s": result.tokens_per_second, "train_s": result.seconds,
                           "baseline_tokens_per_s": base_result.tokens_per_second,
                           "bpb_baseline": b_none.bits_per_byte(), "bpb_none": none.bits_per_byte(),
                           "bpb_set": scored["set"].bits_per_byte()}
                    for label in BUCKETS:
                        iv = diff(scored["set"], b_none, label, seed)
                        row[f"set_vs_base_{KEYS[label]}"], row[f"set_vs_base_{KEYS[label]}_ci"] = (
                            iv.difference, f"[{iv.low:+.4f}, {iv.high:+.4f}]")
                    row["none_vs_base_all"] = diff(none, b_none, "all", seed).difference
                    for setting, result_s in scored.items():
                        key = setting.removeprefix("set ")
                        row[f"{key}_vs_none_reads"] = diff(result_s, none, "reads", seed).difference
                    rows_high = buckets.rows["reads, alpha>50%"]
                    row["bpb_base_high"], row["bpb_set_high"] = b_none.bits_per_byte(rows_high), \
                        scored["set"].bits_per_byte(rows_high)
                    curves[(steps, seed)][f"{kind} {name}"] = [scored["set"].bits_per_byte(r)
                                                               for r in buckets.decile_rows]
                    curves[(steps, seed)][f"{kind} {name} oracle"] = [scored["set oracle"].bits_per_byte(r)
                                                                      for r in buckets.decile_rows]
                    per_seed.append(row)
                    write_results(f"{args.name}_partial", {"args": vars(args) | {"variant": None}}, per_seed)
                    log(f"steps={steps} seed={seed} {kind} {name}: " + ", ".join(
                        f"{k}={v:+.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                        if k not in ("variant", "kind", "steps", "seed")))

    summary = across_seeds(per_seed)

    if args.plot and curves:
        from retro_ops.evaluation.plots import alpha_curve_png

        (steps, seed), series = next(iter(curves.items()))
        png = RESULTS_DIR / f"{args.name}_alpha.png"
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        png.write_bytes(alpha_curve_png(
            [{"model": label, "setting": "oracle" if label.endswith("oracle") else args.part,
              "deciles": [None if v != v else v for v in values]} for label, values in series.items()],
            f"{args.corpus} {args.part}, set {args.retrieval_set}, seed {seed}, {steps} steps"))
        log(f"decile curves: {png}")

    d4, f4 = "{:+.4f}", "{:.4f}"
    seed_cols = [Column("variant", "variant"), Column("kind", "model"), Column("steps", "steps"),
                 Column("seed", "seed"), Column("bpb_baseline", "baseline bpb", f4),
                 Column("bpb_set", "bpb, set", f4), Column("set_vs_base_reads", "reads: - baseline", d4),
                 Column("set_vs_base_reads_ci", "95% CI (docs)"),
                 Column("bpb_base_high", "α>50%: baseline", f4), Column("bpb_set_high", "α>50%: model", f4),
                 Column("set_vs_base_high_ci", "α>50% diff 95% CI"),
                 Column("none_vs_base_all", "no retrieval - baseline", d4),
                 Column("shuffled_vs_none_reads", "shuffled - none (reads)", d4),
                 *([Column("unrelated_vs_none_reads", "unrelated - none (reads)", d4)] if args.unrelated_set else []),
                 Column("oracle_vs_none_reads", "oracle - none (reads)", d4),
                 Column("tokens_per_s", "train tok/s", "{:.0f}"),
                 Column("baseline_tokens_per_s", "baseline tok/s", "{:.0f}")]
    summary_cols = SUMMARY_COLUMNS
    deciles = [{"model": label, **{f"d{i}": v for i, v in enumerate(values)}}
               for label, values in next(iter(curves.values())).items()] if curves else []
    decile_cols = [Column("model", "model (first seed)"),
                   *(Column(f"d{i}", lab, f4) for i, lab in enumerate(Buckets.decile_labels()))]
    report_tables(args.name, [
        (f"per seed ({args.corpus} {args.part}, set {args.retrieval_set}; bpb differences, negative = better)",
         seed_cols, per_seed),
        ("across seeds: mean [95% t interval over seeds]", summary_cols, summary),
        ("bpb of reading chunks by alpha decile", decile_cols, deciles)],
        {"device": device, "corpus": args.corpus, "retrieval_set": args.retrieval_set,
         "unrelated_set": args.unrelated_set, "part": args.part, "documents": len(part_docs),
         "batch_size": args.batch_size, "seeds": args.seeds, "variants": dict(variants),
         "wall_s": time.perf_counter() - started, **environment()})


if __name__ == "__main__":
    main()
