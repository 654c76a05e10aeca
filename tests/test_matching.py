"""Exact token evidence (`model.matching`), checked against hand-counted cases, and the model's
use of it: without evidence for a neighbour, neither CCA nor the copy head can be told apart
from a neighbour that matches, and shuffled neighbours then cost bits (issue #24)."""

from __future__ import annotations

import torch

from retro_ops.model import Retro, RetroConfig
from retro_ops.model.matching import MAX_MATCH, NO_TOKEN, bigram_agreement, histories, match_lengths


def test_bigram_agreement_counts_the_chunks_bigrams_found_in_valid_neighbours():
    chunks = torch.tensor([[[5, 6, 7, 8, 0]]])  # bigrams 5-6, 6-7, 7-8 (8-0 is padding)
    neighbours = torch.tensor([[[[9, 5, 6, 9, 7, 8], [6, 7, 1, 1, 1, 1]]]])  # 5-6 and 7-8; 6-7
    valid = torch.ones_like(neighbours, dtype=torch.bool)
    assert bigram_agreement(chunks, neighbours, valid, pad_id=0).tolist() == [[1.0]]
    valid[0, 0, 1] = False  # the neighbour holding 6-7 is masked
    assert torch.allclose(bigram_agreement(chunks, neighbours, valid, pad_id=0), torch.tensor([[2 / 3]]))
    swapped = torch.tensor([[[[8, 7, 6, 5, 1, 1], [1, 1, 1, 1, 1, 1]]]])  # reversed: no bigram in order
    assert bigram_agreement(chunks, swapped, torch.ones_like(swapped, dtype=torch.bool), 0).tolist() == [[0.0]]


def test_histories_hold_the_last_tokens_newest_first():
    h = histories(torch.tensor([[3, 4, 5]]))
    assert h.shape == (1, 3, MAX_MATCH)
    assert h[0, 0].tolist() == [3] + [NO_TOKEN] * (MAX_MATCH - 1)
    assert h[0, 2].tolist()[:3] == [5, 4, 3]


def test_match_length_is_the_run_of_equal_tokens_before_each_key():
    # neighbour 10 11 12 13 14; query history ... 11 12 (newest 12): the key emitting 13 has
    # 12 == token before it and 11 == the one before that: length 2; the key emitting 12 sees
    # 11 vs 12: length 0; the key emitting 11 sees 10 vs 12: 0.
    tokens = torch.tensor([[[10, 11, 12, 13, 14]]])
    valid = torch.ones_like(tokens, dtype=torch.bool)
    history = torch.tensor([[[12, 11, 99, 98]]])  # (N=1, Tq=1, MAX_MATCH)
    lengths = match_lengths(history, tokens, valid)[0, 0].tolist()  # keys emit 11, 12, 13, 14
    assert lengths == [0, 0, 2, 0]
    history = torch.tensor([[[12, 11, 10, NO_TOKEN]]])
    assert match_lengths(history, tokens, valid)[0, 0].tolist() == [0, 0, 3, 0]
    valid[0, 0, 1] = False  # token 11 is padding: the run stops there
    assert match_lengths(history, tokens, valid)[0, 0].tolist() == [0, 0, 1, 0]
    long = torch.tensor([[[7] * 8]])
    assert match_lengths(torch.full((1, 1, MAX_MATCH), 7), long, torch.ones_like(long, dtype=torch.bool)
                         )[0, 0].tolist() == [1, 2, 3, 4, 4, 4, 4]  # capped at MAX_MATCH


def test_evidence_moves_the_copy_gate_and_the_cca_branch():
    """With the evidence weights set, the same neighbours read differently when they agree with
    their chunk than when they do not; old checkpoints (no match_gate) have no such weights."""
    torch.manual_seed(0)
    config = RetroConfig.tiny()
    model = Retro(config).eval()
    m = config.chunk_size
    ids = torch.randint(1, config.vocab_size, (1, 4 * m))
    agreeing = torch.cat([ids[:, :2 * m].reshape(1, 1, 1, 2 * m)] * 2, dim=2)  # chunk 0 + its continuation
    agreeing = torch.cat([agreeing, torch.randint(1, 99, (1, 3, 2, 2 * m))], dim=1)
    unrelated = torch.randint(1, config.vocab_size, agreeing.shape)
    with torch.no_grad():
        for block in model.transformer.h:
            if block.cca is not None:
                block.cca.trust.copy_(torch.tensor([-2.0, 4.0]))  # shut unless the chunk agrees
        model.copy.length_gate.fill_(-2.0)  # copy only where the chunk agrees
        model.copy.agreement_gate.fill_(4.0)
        with_agreeing, _ = model(ids, agreeing)
        with_unrelated, _ = model(ids, unrelated)
        plain, _ = model(ids)
    reading = slice(m - 1, 2 * m - 1)  # the positions that read chunk 0's neighbours
    assert (with_agreeing[0, reading] - plain[0, reading]).abs().max() > 0.1
    assert (with_unrelated[0, reading] - plain[0, reading]).abs().max() < 0.01
    assert RetroConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "match_gate"}
                                 ).match_gate is False
