"""Does RETRO learn to use its neighbours? Held-out bits per byte with and without retrieval
after N training steps, for chunked cross-attention with and without relative positions, trained
on real neighbours and on oracle neighbours.

Data: the home's training corpus and retrieval set (`TrainingSpec(corpus, retrieval_set)` through
`prepare_training`, the seeded train/held-out split, neighbours from the set's verified index
with same-document hits dropped), model `demo_model_config()` with the trimmed vocabulary, k = 2.
"Oracle" neighbours replace slot 0 of every chunk's neighbours by the chunk itself followed by
its own continuation (the very text the model must predict next) and keep the real slot-0
neighbour in slot 1: a model that can copy from a neighbour at all gets far lower loss with
them, so they measure the ability to read neighbours apart from whether the corpus offers
anything to read. Real RETRO training never sees such neighbours (the paper drops same-document
hits, as does retro-ops); this is a diagnostic, not a training recipe.

Variants: each of `--neighbours` (real, oracle) x CCA positions on/off, trained from the same
seed for each of `--steps` (separate runs: the learning-rate schedule depends on the length),
by the library's trainer (`retro_ops.training.trainer.train`). Evaluated on the
held-out documents with no retrieval, with the same kind of neighbours as in training, and (for
oracle-trained models) with the real neighbours. Gain = bpb without retrieval - bpb with.
Runs on `--device` (cuda when available): on 2 CPU cores 600 steps take about 13 minutes per
variant, on an H100 about 15 seconds.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from _common import Column, base_parser, environment, log, parse_int_list, report


def oracle_neighbours(table, real):
    """Slot 0: the chunk + its continuation in the same document; slot 1: the real best hit."""
    import numpy as np

    n, k, r = real.tokens.shape
    m = r // 2
    tokens, mask = real.tokens.copy(), real.mask.copy()
    if k > 1:
        tokens[:, 1], mask[:, 1] = real.tokens[:, 0], real.mask[:, 0]
    same_doc_next = np.r_[table.doc_ids[1:] == table.doc_ids[:-1], False]
    tokens[:, 0, :m] = table.tokens
    tokens[:, 0, m:] = np.where(same_doc_next[:, None], np.roll(table.tokens, -1, axis=0), 0)
    mask[:, 0] = True
    return replace(real, tokens=tokens, mask=mask)


def main() -> None:
    parser = base_parser(__doc__, "retro-ops home holding the trained corpus and its retrieval set")
    parser.add_argument("--corpus", default="sotu")
    parser.add_argument("--retrieval-set", default="sotu")
    parser.add_argument("--steps", type=parse_int_list, default=[150, 600])
    parser.add_argument("--neighbours", default="real,oracle", help="comma-separated: real, oracle")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()

    import torch

    from retro_ops.settings import Settings
    from retro_ops.training.evaluate import evaluate
    from retro_ops.training.prepare import TrainingSpec, prepare_training
    from retro_ops.training.run import model_config, training_data
    from retro_ops.training.trainer import TrainConfig, TrainingData, seeded_model, train
    from retro_ops.workspace import Workspace

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ws = Workspace.open(Settings(home=args.home))
    data = prepare_training(ws, TrainingSpec(corpus=args.corpus, retrieval_set=args.retrieval_set))
    config = model_config("retro", data)
    sets = {}
    for split, table in (("train", data.train_table), ("heldout", data.heldout_table)):
        real = training_data(data, True, heldout=split == "heldout")
        sets[split, "real"] = real
        sets[split, "oracle"] = TrainingData(real.sequences, oracle_neighbours(
            replace(table, tokens=data.vocab.encode(table.tokens)), real.neighbours))
    plain = TrainingData(sets["heldout", "real"].sequences, None)
    log(f"{len(data.train_table)} train and {len(data.heldout_table)} held-out chunks of "
        f"{args.corpus}, neighbours from {args.retrieval_set}; device {device}")

    rows = []
    for kind in args.neighbours.split(","):
        for positions in (True, False):
            for steps in args.steps:
                model = seeded_model(replace(config, cca_positions=positions), args.seed).to(device)
                with tempfile.TemporaryDirectory() as tmp:  # the trainer checkpoints once, at the end
                    seconds = train(model, sets["train", kind], Path(tmp) / "model", TrainConfig(
                        steps=steps, batch_size=args.batch_size, seed=args.seed,
                        checkpoint_every=steps)).seconds
                none = evaluate(model, plain, "none").bits_per_byte
                same = evaluate(model, sets["heldout", kind], kind).bits_per_byte
                real = evaluate(model, sets["heldout", "real"], "real").bits_per_byte
                rows.append({"trained_on": kind, "cca_positions": positions, "steps": steps,
                             "train_s": seconds, "bpb_no_retrieval": none, "bpb_same_kind": same,
                             "gain_same_kind": none - same, "bpb_real": real, "gain_real": none - real})
                log(f"{kind} positions={positions} steps={steps}: {none:.4f} -> {same:.4f}")
    columns = [Column("trained_on", "neighbours in training"), Column("cca_positions", "CCA positions"),
               Column("steps", "steps"), Column("train_s", "train s", "{:.1f}"),
               Column("bpb_no_retrieval", "bpb, no retrieval", "{:.4f}"),
               Column("bpb_same_kind", "bpb, same neighbours", "{:.4f}"),
               Column("gain_same_kind", "gain", "{:.4f}"),
               Column("bpb_real", "bpb, real neighbours", "{:.4f}"),
               Column("gain_real", "gain, real", "{:.4f}")]
    report("retrieval_learning", columns, rows,
           {"device": device, "corpus": args.corpus, "retrieval_set": args.retrieval_set,
            "batch_size": args.batch_size, "seed": args.seed, **environment()})


if __name__ == "__main__":
    main()
