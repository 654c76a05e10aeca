"""Exact token matches between the text being predicted and its neighbours: the evidence that a
neighbour is the right one, and where in it the copy continues.

The copy head and CCA learn to read neighbours; what they cannot learn well in a few hundred
steps is when *not* to read them. Shuffled or unrelated neighbours cost 0.10-0.18 bpb against
none with a learned gate alone (docs/results/retrieval.md). Two counts over token ids, which no
amount of training has to discover, tell the two cases apart:

- agreement (per chunk): the share of a chunk's bigrams found in the neighbours it retrieved.
  The neighbours of chunk u are read only after chunk u is complete, so this is causal.
- match length (per query and neighbour token): how many tokens before the query equal the
  tokens before that neighbour position; a long match marks the place where a copy continues.
"""

from __future__ import annotations

import torch
from torch import Tensor

from retro_ops.model.config import MAX_MATCH

NO_TOKEN = -1  # history before the sequence start: matches nothing


def bigram_agreement(chunks: Tensor, neighbours: Tensor, valid: Tensor, pad_id: int) -> Tensor:
    """chunks (B, l, m), neighbours and valid (B, l, k, r) -> (B, l) in [0, 1]: the share of the
    chunk's non-padding bigrams that occur among its valid neighbours' bigrams (0 without any)."""
    B, nc, m = chunks.shape
    width = int(max(int(chunks.max()), int(neighbours.max()), 0)) + 2

    def bigrams(t: Tensor, ok: Tensor) -> tuple[Tensor, Tensor]:
        return t[..., :-1] * width + t[..., 1:], ok[..., :-1] & ok[..., 1:]

    c, c_ok = bigrams(chunks, chunks != pad_id)  # (B, l, m-1)
    n, n_ok = bigrams(neighbours, valid)  # (B, l, k, r-1)
    n = torch.where(n_ok, n, torch.full_like(n, -1)).flatten(2)  # (B, l, K)
    found = (c[..., :, None] == n[..., None, :]).any(dim=-1) & c_ok  # (B, l, m-1)
    return found.sum(-1).float() / c_ok.sum(-1).clamp_min(1).float()


def histories(input_ids: Tensor) -> Tensor:
    """(B, T) -> (B, T, MAX_MATCH): at position p, the tokens at p, p-1, ..., NO_TOKEN before 0."""
    padded = torch.nn.functional.pad(input_ids, (MAX_MATCH - 1, 0), value=NO_TOKEN)
    return padded.unfold(1, MAX_MATCH, 1).flip(-1)  # (B, T, MAX_MATCH)


def match_lengths(history: Tensor, tokens: Tensor, valid: Tensor) -> Tensor:
    """history (N, Tq, MAX_MATCH) from `histories`; tokens and valid (N, k, r) -> (N, Tq, K)
    with K = k(r-1): for the key that emits neighbour token j (j = 1..r-1 of each neighbour),
    the number of consecutive tokens, from the query's own backwards, equal to tokens j-1,
    j-2, ... of that neighbour (0..MAX_MATCH)."""
    N, k, r = tokens.shape
    marked = torch.where(valid, tokens, torch.full_like(tokens, -2))  # padding matches nothing
    before = torch.nn.functional.pad(marked, (MAX_MATCH - 1, 0), value=-2)  # (N, k, r+M-1)
    length = torch.zeros(N, history.shape[1], k * (r - 1), dtype=torch.long, device=tokens.device)
    running = torch.ones_like(length, dtype=torch.bool)
    for back in range(MAX_MATCH):  # key j compares neighbour token j-1-back with history[back]
        shifted = before[:, :, MAX_MATCH - 1 - back:MAX_MATCH - 1 - back + r - 1].flatten(1)  # (N, K)
        running = running & (history[:, :, back, None] == shifted[:, None, :])
        length = length + running.long()
    return length
