"""Held-out evaluation in bits per byte, kept per chunk so that differences get intervals and
buckets (by overlap alpha) can be formed after the fact.

bits-per-byte = total next-token NLL (in bits) / UTF-8 bytes the scored targets stand for, from
the tokenizer's offsets (`token_bytes`): exact, whitespace included, unscored tokens excluded.
(The BERT WordPiece tokenizer is uncased, so this compares models on the same tokens; it is not
a lossless byte-level code length.) Targets the model's vocabulary maps to [UNK] are easy to
predict and carry real bytes, so bpb is also reported over the other targets, with their share.
A target belongs to the chunk it lies in: chunk u+1's targets are the ones RETRO predicts with
chunk u's neighbours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from retro_ops.model import Retro
from retro_ops.training.data import IGNORE
from retro_ops.training.trainer import TrainingData

LN2 = math.log(2)


@dataclass(frozen=True)
class ChunkScores:
    """Sums over the scored targets of each chunk (ChunkTable rows); `unk_*`: the [UNK] ones."""

    nll: np.ndarray  # (N,) float64, nats
    bytes: np.ndarray  # (N,) int64
    tokens: np.ndarray  # (N,) int64
    unk_nll: np.ndarray
    unk_bytes: np.ndarray
    unk_tokens: np.ndarray

    @classmethod
    def zeros(cls, n: int) -> "ChunkScores":
        return cls(np.zeros(n), np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n),
                   np.zeros(n, np.int64), np.zeros(n, np.int64))

    def bits_per_byte(self, rows: np.ndarray | None = None, *, known_only: bool = False) -> float:
        """bpb over the chosen chunks (default all); nan when they hold no bytes."""
        take = slice(None) if rows is None else rows
        nll, n_bytes = self.nll[take].sum(), self.bytes[take].sum()
        if known_only:
            nll, n_bytes = nll - self.unk_nll[take].sum(), n_bytes - self.unk_bytes[take].sum()
        return float(nll / LN2 / n_bytes) if n_bytes > 0 else float("nan")


@dataclass(frozen=True)
class EvalResult:
    name: str
    bits_per_byte: float
    loss_per_token: float  # nats
    tokens: int
    bytes: int
    bits_per_byte_known: float  # over targets that are not [UNK]
    unknown_share: float  # share of scored targets that are [UNK]
    chunks: ChunkScores

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "chunks"}


@torch.inference_mode()
def evaluate(model: Retro, data: TrainingData, name: str, token_bytes: np.ndarray, unk_id: int, *,
             batch_size: int = 8) -> EvalResult:
    """NLL of every target in `data`, per chunk; neighbours are used iff `data.neighbours` is set.
    token_bytes: (N, m) bytes per token of the evaluated ChunkTable (`token_bytes.token_bytes`);
    unk_id: the model-vocabulary id of [UNK]."""
    model.eval()
    device = next(model.parameters()).device  # batches follow the model (CPU, or a GPU)
    seq = data.sequences
    m = token_bytes.shape[1]
    scores = ChunkScores.zeros(len(token_bytes))
    for start in range(0, len(seq), batch_size):
        rows = np.arange(start, min(start + batch_size, len(seq)))
        input_ids, targets, neighbours, mask = data.batch(rows, device)
        logits, _ = model(input_ids, neighbours, mask)
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                              ignore_index=IGNORE, reduction="none").view(targets.shape).double().cpu().numpy()
        target = seq.targets[rows]  # (B, T): the token at position t+1
        scored = target != IGNORE
        where = np.arange(1, target.shape[1] + 1)[None, :].repeat(len(rows), 0)  # its position
        chunk = seq.chunk_index[rows[:, None], np.minimum(where // m, seq.chunk_index.shape[1] - 1)]
        b, c = scored.nonzero()
        row, n_bytes = chunk[b, c], token_bytes[chunk[b, c], where[b, c] % m]
        unk = target[b, c] == unk_id
        np.add.at(scores.nll, row, nll[b, c])
        np.add.at(scores.bytes, row, n_bytes)
        np.add.at(scores.tokens, row, 1)
        np.add.at(scores.unk_nll, row, np.where(unk, nll[b, c], 0.0))
        np.add.at(scores.unk_bytes, row, np.where(unk, n_bytes, 0))
        np.add.at(scores.unk_tokens, row, unk.astype(np.int64))
    tokens, n_bytes = int(scores.tokens.sum()), int(scores.bytes.sum())
    return EvalResult(name, scores.bits_per_byte(), float(scores.nll.sum()) / max(tokens, 1), tokens,
                      n_bytes, scores.bits_per_byte(known_only=True),
                      int(scores.unk_tokens.sum()) / max(tokens, 1), scores)
