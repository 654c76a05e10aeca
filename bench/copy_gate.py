"""Where an unrelated retrieval set costs a trained RETRO bits: its copy head or its CCA.

One trained model (`--model`, a catalog reference, default the newest `retro`) is scored on a part
of its training corpus's held-out documents (`--part`, validation by default), on the chunks that
read neighbours, with no retrieval, its training set (`--retrieval-set`) and an unrelated set
(`--unrelated-set`), each as trained, with the copy head taken out, and with every CCA branch
zeroed. Also the copy gate g of the copy head at the positions that read each set: a gate that
stays open where nothing matches costs -log(1 - g) nats on every token it does not copy.

    python bench/copy_gate.py --home <demo home> --unrelated-set moby_dick
"""

from __future__ import annotations

from contextlib import contextmanager

from _common import Column, base_parser, environment, log, report_tables

ABLATIONS = ("as trained", "without the copy head", "CCA zeroed")


@contextmanager
def ablated(model, how: str):
    """The model with one path cut (restored on exit)."""
    import torch

    copy, blocks = model.copy, [b.cca for b in model.transformer.h if b.cca is not None]
    if how == "without the copy head":
        model.copy = None
    elif how == "CCA zeroed":
        for cca in blocks:
            cca.forward = lambda x, *args, **kwargs: torch.zeros_like(x)
    try:
        yield model
    finally:
        model.copy = copy
        for cca in blocks:
            cca.__dict__.pop("forward", None)


def gate_values(model, score):
    """The copy gate g at every position that reads neighbours, while `score()` runs."""
    import torch

    seen: list[torch.Tensor] = []
    copy = model.copy
    original = copy.on_positions

    def spy(*args, **kwargs):
        laid = original(*args, **kwargs)
        if laid is not None:
            seen.append(laid[0].detach().flatten())
        return laid

    copy.on_positions = spy
    try:
        score()
    finally:
        del copy.on_positions
    z = torch.cat(seen)
    return torch.sigmoid(z[z > type(copy).NO_COPY / 2])


def main() -> None:
    import numpy as np
    import torch

    from retro_ops.evaluation.bits_per_byte import evaluate
    from retro_ops.evaluation.compare import heldout_text, model_split
    from retro_ops.evaluation.overlap import reads_neighbours
    from retro_ops.evaluation.token_bytes import token_bytes
    from retro_ops.features.chunking import Chunker
    from retro_ops.settings import Settings
    from retro_ops.training.config import NeighbourConfig
    from retro_ops.training.data import make_sequences
    from retro_ops.training.prepare import encode_neighbours, encode_table, neighbours_for
    from retro_ops.training.trainer import TrainingData
    from retro_ops.training.verified import load_verified
    from retro_ops.training.vocab import UNK
    from retro_ops.workspace import Workspace

    parser = base_parser(__doc__, "the home holding the trained model and the sets")
    parser.add_argument("--model", default="retro", help="a model reference (retro: the newest RETRO)")
    parser.add_argument("--corpus", default="kjv_nt")
    parser.add_argument("--retrieval-set", default="asv_nt")
    parser.add_argument("--unrelated-set", default="moby_dick")
    parser.add_argument("--part", choices=["validation", "test"], default="validation")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ws = Workspace.open(Settings.from_env({"RETRO_OPS_HOME": str(args.home)}))
    info = ws.catalog.resolve_model(args.model)
    loaded = load_verified(info)
    model, vocab = loaded.model, loaded.vocab
    m = model.config.chunk_size
    text = heldout_text(ws, args.corpus, model_split(info), m, part=args.part)
    sequences = make_sequences(encode_table(text.table, vocab), model.config.n_chunks)
    sizes = token_bytes(ws.store, Chunker(ws.embedder.tokenizer), text.table)
    unk = int(vocab.encode(np.array([UNK]))[0])
    found = {name: neighbours_for(ws, text.table, ws.retriever(name), NeighbourConfig(k=model.config.n_neighbours),
                                  m).neighbours for name in (args.retrieval_set, args.unrelated_set)}
    reads = reads_neighbours(sequences, found[args.retrieval_set], len(text.table))

    def bpb(neighbours) -> float:
        data = TrainingData(sequences, None if neighbours is None else encode_neighbours(neighbours, vocab))
        return evaluate(model, data, info.ref, sizes, unk).chunks.bits_per_byte(reads)

    log(f"{info.ref} on {text.name}: {len(text.doc_ids)} documents, {len(reads)} chunks that read")
    none = bpb(None)
    rows, gates = [], []
    for name, neighbours in found.items():
        for how in ABLATIONS:
            with ablated(model, how):
                rows.append({"set": name, "model": how, "minus_none": bpb(neighbours) - none})
            log(f"{name}, {how}")
        g = gate_values(model, lambda n=neighbours: bpb(n))
        gates.append({"set": name, "mean_g": float(g.mean()), "median_g": float(g.median()),
                      "p90_g": float(g.quantile(0.9)), "leak_nats": float(-torch.log1p(-g).mean())})
    report_tables("copy_gate", [
        ("bpb of the reading chunks - no retrieval", [
            Column("set", "set"), Column("model", "model"), Column("minus_none", "bpb - none", "{:+.4f}")], rows),
        ("the copy gate where the chunks read", [
            Column("set", "set"), Column("mean_g", "mean g", "{:.4f}"), Column("median_g", "median g", "{:.4f}"),
            Column("p90_g", "90th percentile", "{:.4f}"),
            Column("leak_nats", "mean -log(1 - g), nats", "{:.4f}")], gates),
    ], {**environment(), "model": info.ref, "part": args.part, "no_retrieval_bpb": none})


if __name__ == "__main__":
    main()
