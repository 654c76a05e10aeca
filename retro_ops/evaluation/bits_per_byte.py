"""Held-out evaluation in bits per byte, and how much eval text the retrieval set leaks.

bits-per-byte = total next-token NLL (in bits) / UTF-8 bytes of the chunk text scored: it
compares models whatever their tokenizer. (The BERT WordPiece tokenizer is uncased, so this is
a relative measure between models on the same tokens, not a lossless byte-level code length.)
Leakage follows the paper's analysis in spirit: the share of each evaluated chunk's token
8-grams that also occur verbatim in the neighbours it was given.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from retro_ops.model import Retro
from retro_ops.training.data import IGNORE
from retro_ops.training.trainer import TrainingData


@dataclass(frozen=True)
class EvalResult:
    name: str
    bits_per_byte: float
    loss_per_token: float  # nats
    tokens: int
    bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def evaluate(model: Retro, data: TrainingData, name: str, *, batch_size: int = 8) -> EvalResult:
    """NLL of every target in `data`; neighbours are used iff `data.neighbours` is set."""
    model.eval()
    device = next(model.parameters()).device  # batches follow the model (CPU, or a GPU)
    nll, tokens = 0.0, 0
    for start in range(0, len(data.sequences), batch_size):
        rows = np.arange(start, min(start + batch_size, len(data.sequences)))
        input_ids, targets, neighbours, mask = data.batch(rows, device)
        logits, _ = model(input_ids, neighbours, mask)
        nll += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                     ignore_index=IGNORE, reduction="sum"))
        tokens += int((targets != IGNORE).sum())
    n_bytes = int(data.sequences.n_bytes.sum())
    return EvalResult(name, nll / math.log(2) / max(n_bytes, 1), nll / max(tokens, 1), tokens, n_bytes)


def ngram_overlap(chunk_tokens: np.ndarray, n_tokens: np.ndarray, neighbour_tokens: np.ndarray,
                  neighbour_mask: np.ndarray, n: int = 8) -> dict:
    """Share of eval chunks' token n-grams found verbatim in their own neighbours."""
    shared = total = 0
    leaked_chunks = 0
    for tokens, length, values, valid in zip(chunk_tokens, n_tokens, neighbour_tokens, neighbour_mask):
        grams = {tuple(tokens[i:i + n]) for i in range(max(0, int(length) - n + 1))}
        if not grams:
            continue
        found = set()
        for value, ok in zip(values, valid):
            if ok:
                found |= {tuple(value[i:i + n]) for i in range(len(value) - n + 1)}
        hit = len(grams & found)
        shared, total = shared + hit, total + len(grams)
        leaked_chunks += hit / len(grams) > 0.5
    return {"ngram": n, "shared_ngram_fraction": shared / total if total else 0.0,
            "chunks_over_half_leaked": int(leaked_chunks), "chunks": len(chunk_tokens)}
