"""Does RETRO learn to read its neighbours, and does that carry over to a swapped-in set?
Held-out bits per byte with and without retrieval after N training steps, for each share of
self-neighbours in training and for chunked cross-attention with and without relative positions.

Data: the home's training corpus and retrieval set (`TrainingSpec(corpus, retrieval_set)` through
`prepare_training`, the seeded train/held-out split, neighbours from the set's verified index
with same-document hits dropped), model `demo_model_config()` with the trimmed vocabulary, k = 2.

A self-neighbour replaces a chunk's last neighbour by the chunk itself followed by its own
continuation, the very text the model must predict next (`with_self_neighbours`). Share 0 is
plain RETRO training; share 1 gives every chunk one ("oracle" neighbours): a model that can copy
from a neighbour at all gets far lower loss with them, so "bpb, self-neighbours" on held-out text
measures the ability to read neighbours apart from whether the corpus offers anything to read.
Shares in between are the training recipe retro-ops uses (`TrainConfig.self_neighbours`).

Each variant (share x CCA positions x steps) is trained from the same seed by the library's
trainer (separate runs: the learning-rate schedule depends on the length), then evaluated on the
held-out documents with no retrieval, with the real neighbours and with self-neighbours only,
and, with `--swap-on CORPUS`, on that corpus's held-out documents with no retrieval and with each
of `--swap-sets` (the transfer `retro-ops eval` measures). Gain = bpb without retrieval - bpb with.
Runs on `--device` (cuda when available): on 2 CPU cores 300 steps take about 3.5 minutes per
variant, on an H100 seconds.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from _common import Column, base_parser, environment, log, parse_int_list, report


def parse_shares(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"expected comma-separated shares in [0, 1], got {text!r}")
    return values


def main() -> None:
    parser = base_parser(__doc__, "retro-ops home holding the trained corpus and its retrieval set")
    parser.add_argument("--corpus", default="sotu")
    parser.add_argument("--retrieval-set", default="sotu")
    parser.add_argument("--steps", type=parse_int_list, default=[150, 300])
    parser.add_argument("--self-neighbours", type=parse_shares, default=[0.0, 0.5, 1.0],
                        help="comma-separated shares of training chunks given a self-neighbour")
    parser.add_argument("--positions", default="on", help="CCA positions: on, off or on,off")
    parser.add_argument("--swap-on", default="", help="also evaluate this corpus's held-out text")
    parser.add_argument("--swap-sets", default="", help="comma-separated sets for --swap-on "
                                                        "(default: the training set)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()
    positions_modes = [p.strip() for p in args.positions.split(",") if p.strip()]
    if not positions_modes or set(positions_modes) - {"on", "off"}:
        parser.error(f"--positions takes on, off or on,off; got {args.positions!r}")

    import torch

    from retro_ops.settings import Settings
    from retro_ops.training.data import make_sequences
    from retro_ops.evaluation.bits_per_byte import evaluate
    from retro_ops.evaluation.compare import heldout_text
    from retro_ops.training.neighbours import NeighbourConfig, with_self_neighbours
    from retro_ops.training.prepare import (
        TrainingSpec, encode_neighbours, encode_table, neighbours_for, prepare_training,
    )
    from retro_ops.training.run import model_config, training_data
    from retro_ops.training.trainer import TrainConfig, TrainingData, seeded_model, train
    from retro_ops.workspace import Workspace

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ws = Workspace.open(Settings(home=args.home))
    data = prepare_training(ws, TrainingSpec(corpus=args.corpus, retrieval_set=args.retrieval_set))
    config, vocab, m = model_config("retro", data), data.vocab, data.spec.model.chunk_size
    heldout = training_data(data, True, heldout=True)
    evaluated = {"none": TrainingData(heldout.sequences, None), "real": heldout,
                 "self": TrainingData(heldout.sequences, encode_neighbours(with_self_neighbours(
                     data.heldout_neighbours.neighbours, data.heldout_table, 1.0, args.seed), vocab))}
    swap = {}
    if args.swap_on:
        text = heldout_text(ws, args.swap_on, data.spec.split, m)
        sequences = make_sequences(encode_table(text.table, vocab), config.n_chunks)
        swap["none"] = TrainingData(sequences, None)
        for name in (args.swap_sets or args.retrieval_set).split(","):
            found = neighbours_for(ws, text.table, ws.retriever(name), NeighbourConfig(k=config.n_neighbours), m)
            swap[name] = TrainingData(sequences, encode_neighbours(found.neighbours, vocab))
    log(f"{len(data.train_table)} train and {len(data.heldout_table)} held-out chunks of "
        f"{args.corpus}, neighbours from {args.retrieval_set}; device {device}")

    rows = []
    for share in args.self_neighbours:
        for positions in (mode == "on" for mode in positions_modes):
            for steps in args.steps:
                train_config = TrainConfig(steps=steps, batch_size=args.batch_size, seed=args.seed,
                                           checkpoint_every=steps, self_neighbours=share,
                                           warmup_steps=max(1, steps // 10))  # as the demo
                train_data = training_data(replace(data, spec=replace(data.spec, train=train_config)), True)
                model = seeded_model(replace(config, cca_positions=positions), args.seed).to(device)
                with tempfile.TemporaryDirectory() as tmp:  # the trainer checkpoints once, at the end
                    seconds = train(model, train_data, Path(tmp) / "model", train_config).seconds
                bpb = {name: evaluate(model, d, name).bits_per_byte for name, d in evaluated.items()}
                row = {"self_neighbours": share, "cca_positions": positions, "steps": steps,
                       "train_s": seconds, "bpb_none": bpb["none"], "bpb_real": bpb["real"],
                       "gain_real": bpb["none"] - bpb["real"], "bpb_self": bpb["self"],
                       "gain_self": bpb["none"] - bpb["self"]}
                for name, d in swap.items():
                    row[f"swap_{name}"] = evaluate(model, d, name).bits_per_byte
                rows.append(row)
                log(f"share={share} positions={positions} steps={steps}: "
                    + ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k.startswith(("bpb", "swap"))))
    columns = [Column("self_neighbours", "self-neighbour share", "{:.2f}"),
               Column("cca_positions", "CCA positions"), Column("steps", "steps"),
               Column("train_s", "train s", "{:.1f}"),
               Column("bpb_none", "bpb, no retrieval", "{:.4f}"),
               Column("bpb_real", "bpb, real neighbours", "{:.4f}"),
               Column("gain_real", "gain, real", "{:.4f}"),
               Column("bpb_self", "bpb, self-neighbours", "{:.4f}"),
               Column("gain_self", "gain, self", "{:.4f}")]
    columns += [Column(f"swap_{name}", f"{args.swap_on}: {'no retrieval' if name == 'none' else 'set ' + name}",
                       "{:.4f}") for name in swap]
    report("retrieval_learning", columns, rows,
           {"device": device, "corpus": args.corpus, "retrieval_set": args.retrieval_set,
            "swap_on": args.swap_on, "batch_size": args.batch_size, "seed": args.seed, **environment()})


if __name__ == "__main__":
    main()
