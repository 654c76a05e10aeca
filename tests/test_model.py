"""RETRO model: shapes, learning, causality of the decoder and of chunked cross-attention,
encoder conditioning, neighbour masking, baseline equivalence, config validation."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import Tensor

from retro_ops.model import Retro, RetroConfig

TINY = RetroConfig.tiny()  # n=128, m=16 -> 8 chunks, k=2 neighbours of 32 tokens, CCA in 0 and 3
M = TINY.chunk_size


def make_model(config: RetroConfig = TINY, seed: int = 0) -> Retro:
    torch.manual_seed(seed)
    return Retro(config).eval()


def make_batch(config: RetroConfig = TINY, batch: int = 2, seed: int = 1) -> tuple[Tensor, Tensor]:
    """Token ids avoid the pad id so every neighbour token is attended to."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, config.vocab_size, (batch, config.seq_len), generator=g)
    neighbours = torch.randint(1, config.vocab_size, (batch, config.n_chunks, config.n_neighbours,
                                                      config.neighbour_len), generator=g)
    return ids, neighbours


def first_position_seeing(chunk: int) -> int:
    """The last token of chunk u is the first that may read u's neighbours."""
    return chunk * M + M - 1


@contextmanager
def capture(module: torch.nn.Module, *, inputs: bool) -> Iterator[list[Tensor]]:
    """Records the first positional input (or the output) of each call of `module`."""
    seen: list[Tensor] = []
    if inputs:
        handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    else:
        handle = module.register_forward_hook(lambda _m, _a, out: seen.append(out))
    try:
        yield seen
    finally:
        handle.remove()


def test_shapes_and_loss():
    model = make_model()
    ids, neighbours = make_batch()
    targets = torch.randint(0, TINY.vocab_size, ids.shape,
                            generator=torch.Generator().manual_seed(2))
    logits, loss = model(ids, neighbours, targets=targets)
    assert logits.shape == (2, TINY.seq_len, TINY.vocab_size)
    assert loss.shape == () and torch.isfinite(loss)
    assert abs(loss.item() - math.log(TINY.vocab_size)) < 0.3  # small init: near uniform
    no_loss_logits, no_loss = model(ids, neighbours)
    assert no_loss is None and torch.equal(no_loss_logits, logits)

    targets[:, 64:] = -100  # ignored positions do not count
    _, partial = model(ids, neighbours, targets=targets)
    expected = torch.nn.functional.cross_entropy(logits[:, :64].reshape(-1, TINY.vocab_size),
                                                 targets[:, :64].reshape(-1))
    torch.testing.assert_close(partial, expected)


def test_shorter_input_than_seq_len():
    model = make_model()
    ids, neighbours = make_batch()
    T = 5 * M + 3  # 5 complete chunks and a partial one, as during generation
    logits, _ = model(ids[:, :T], neighbours[:, :T // M])
    full, _ = model(ids, neighbours)
    assert logits.shape == (2, T, TINY.vocab_size)
    torch.testing.assert_close(logits, full[:, :T], rtol=1e-5, atol=1e-5)


def test_overfits_a_tiny_batch():
    config = RetroConfig.tiny(seq_len=64)
    model = make_model(config).train()
    ids, neighbours = make_batch(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -100  # next-token prediction; the last token has no target
    losses = []
    for _ in range(30):
        _, loss = model(ids, neighbours, targets=targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("retrieval", [False, True])
def test_decoder_is_causal(retrieval: bool):
    model = make_model(RetroConfig.tiny(retrieval=retrieval))
    ids, neighbours = make_batch()
    t = 50
    changed = ids.clone()
    changed[:, t] = (changed[:, t] + 7) % TINY.vocab_size
    with torch.no_grad():
        before, _ = model(ids, neighbours)
        after, _ = model(changed, neighbours)
    assert torch.equal(before[:, :t], after[:, :t])
    assert not torch.allclose(before[:, t], after[:, t])


@pytest.mark.parametrize("chunk", [0, 3, TINY.n_chunks - 1])
def test_neighbours_of_a_chunk_affect_only_its_last_token_and_later(chunk: int):
    model = make_model()
    ids, neighbours = make_batch()
    changed = neighbours.clone()
    changed[:, chunk] = torch.randint(1, TINY.vocab_size, changed[:, chunk].shape,
                                      generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        before, _ = model(ids, neighbours)
        after, _ = model(ids, changed)
    first = first_position_seeing(chunk)
    assert torch.equal(before[:, :first], after[:, :first])
    differs = (before[:, first:] - after[:, first:]).abs().amax(dim=(0, 2))  # per position
    assert bool((differs > 0).all()), "every position from the chunk's last token on must see it"


@pytest.mark.parametrize("chunk", [0, 3, TINY.n_chunks - 1])
def test_neighbour_gradient_is_zero_before_the_chunk_is_complete(chunk: int):
    model = make_model()
    ids, neighbours = make_batch()
    with capture(model.encoder, inputs=True) as embedded:
        logits, _ = model(ids, neighbours)
    [emb] = embedded  # (B, l, k, r, d): neighbour embeddings entering the encoder
    first = first_position_seeing(chunk)
    if first > 0:
        (early,) = torch.autograd.grad(logits[:, :first].sum(), emb, retain_graph=True)
        assert torch.count_nonzero(early[:, chunk:]) == 0
    (at_last_token,) = torch.autograd.grad(logits[:, first].sum(), emb)
    assert at_last_token[:, chunk].abs().sum() > 0
    assert torch.count_nonzero(at_last_token[:, chunk + 1:]) == 0


def test_encoder_is_conditioned_on_decoder_activations_of_its_chunk():
    model = make_model()
    ids, neighbours = make_batch()
    chunk = 3
    changed = ids.clone()
    changed[:, chunk * M] = (changed[:, chunk * M] + 11) % TINY.vocab_size  # first token of chunk
    with torch.no_grad(), capture(model.encoder, inputs=False) as encoded:
        model(ids, neighbours)
        model(changed, neighbours)
    before, after = encoded  # (B, l, k, r, d_enc) each
    assert torch.equal(before[:, :chunk], after[:, :chunk])  # earlier chunks cannot see it
    assert not torch.allclose(before[:, chunk], after[:, chunk])
    # chunk u+1's activations attend to chunk u's tokens: true only if the encoder reads decoder
    # activations, not the input embeddings of its own chunk
    assert not torch.allclose(before[:, chunk + 1], after[:, chunk + 1])


def test_masked_neighbours_are_ignored():
    model = make_model()
    ids, neighbours = make_batch()
    mask = torch.ones(neighbours.shape[:3], dtype=torch.bool)
    mask[:, 2] = False  # every neighbour of chunk 2
    mask[:, 5, 0] = False  # one neighbour of chunk 5
    other = neighbours.clone()
    other[:, 2] = torch.randint(0, TINY.vocab_size, other[:, 2].shape)
    other[:, 5, 0] = TINY.pad_token_id
    with torch.no_grad():
        logits, _ = model(ids, neighbours, mask)
        replaced, _ = model(ids, other, mask)
        unmasked, _ = model(ids, neighbours)
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, replaced)
    assert not torch.allclose(logits, unmasked)


def test_all_masked_or_all_padding_contributes_nothing():
    model = make_model()
    ids, neighbours = make_batch()
    with torch.no_grad():
        baseline, _ = model(ids)
        all_masked, _ = model(ids, neighbours, torch.zeros(neighbours.shape[:3], dtype=torch.bool))
        all_padding, _ = model(ids, torch.full_like(neighbours, TINY.pad_token_id))
    assert torch.equal(all_masked, baseline)
    assert torch.equal(all_padding, baseline)


def test_baseline_weights_load_into_retro_and_give_identical_logits():
    torch.manual_seed(0)
    baseline = Retro(RetroConfig.tiny(retrieval=False)).eval()
    retro = Retro(RetroConfig.tiny()).eval()
    missing, unexpected = retro.load_state_dict(baseline.state_dict(), strict=False)
    retrieval_names = {name for name, p in retro.named_parameters()
                       if any(p is q for q in retro.retrieval_parameters())}
    assert unexpected == [] and set(missing) == retrieval_names
    assert retro.decoder_parameter_names() == baseline.decoder_parameter_names()
    assert baseline.retrieval_parameters() == [] and baseline.encoder is None
    ids, neighbours = make_batch()
    with torch.no_grad():
        base_logits, _ = baseline(ids)
        retro_logits, _ = retro(ids)
        ignored, _ = baseline(ids, neighbours)  # a baseline ignores neighbours
    assert torch.equal(base_logits, retro_logits)
    assert torch.equal(base_logits, ignored)


def test_retrieval_parameters_are_disjoint_from_the_decoder_and_a_small_share():
    retro = make_model()
    retrieval = {id(p) for p in retro.retrieval_parameters()}
    decoder = {id(p) for n, p in retro.named_parameters() if n in retro.decoder_parameter_names()}
    assert retrieval and decoder and not retrieval & decoder
    assert len(retrieval) + len(decoder) == len(list(retro.parameters()))
    with torch.device("meta"):  # sizes only: no memory, no init cost
        demo = Retro(RetroConfig.demo())
    share = sum(p.numel() for p in demo.retrieval_parameters()) / demo.num_parameters()
    assert 0 < share < 0.5


def test_weights_are_tied_and_counted_once():
    model = make_model()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.num_parameters() == sum(p.numel() for _, p in model.named_parameters())


def test_same_seed_same_model_and_logits():
    a, b = make_model(seed=3), make_model(seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(),
                                                     strict=True))
    ids, neighbours = make_batch()
    with torch.no_grad():
        assert torch.equal(a(ids, neighbours)[0], b(ids, neighbours)[0])
    c = make_model(seed=4)
    assert not torch.equal(a.transformer.wte.weight, c.transformer.wte.weight)


def test_cca_layers_follow_the_paper_and_megatron():
    assert RetroConfig(n_layer=12).cca_layers() == (5, 8, 11)  # layers 6, 9, 12 (1-based)
    assert RetroConfig(n_layer=24, n_head=12).cca_layers() == tuple(range(8, 24, 3))
    assert RetroConfig(n_layer=4).cca_layers() == (3,)  # clamped: still one CCA layer
    assert RetroConfig(n_layer=12, cca_start_layer=2).cca_layers() == (1, 4, 7, 10)
    assert RetroConfig(retrieval=False).cca_layers() == ()
    assert RetroConfig.tiny().cca_layers() == (0, 3) and RetroConfig.demo().cca_layers() == (2, 5)


@pytest.mark.parametrize("overrides, message", [
    ({"seq_len": 100}, r"seq_len \(100\) must be a multiple of chunk_size \(16\)"),
    ({"d_model": 66}, r"d_model \(66\) must be divisible by n_head \(4\)"),
    ({"enc_d_model": 33}, r"enc_d_model \(33\) must be divisible by enc_n_head \(2\)"),
    ({"d_model": 12, "n_head": 4}, r"d_model / n_head = 3 must be even"),
    ({"n_layer": 0}, r"n_layer must be a positive integer, got 0"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
    ({"cca_start_layer": 5}, r"cca_start_layer \(5\) must be between 1 and n_layer \(4\)"),
    ({"pad_token_id": 512}, r"pad_token_id \(512\) must be a token id below vocab_size \(512\)"),
])
def test_config_rejects_bad_values(overrides: dict, message: str):
    with pytest.raises(ValueError, match=message):
        RetroConfig.tiny(**overrides)


def test_config_round_trips_through_json():
    for config in (RetroConfig(), RetroConfig.tiny(), RetroConfig.demo(retrieval=False)):
        assert RetroConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown RetroConfig fields: n_embd"):
        RetroConfig.from_dict({**TINY.to_dict(), "n_embd": 64})
    assert TINY.neighbour_len == 2 * TINY.chunk_size and TINY.vocab_size == 512
    assert RetroConfig().vocab_size == 30522


def test_forward_rejects_bad_inputs():
    model = make_model()
    ids, neighbours = make_batch()
    with pytest.raises(ValueError, match="neighbours must be"):
        model(ids, neighbours[:, :-1])
    with pytest.raises(ValueError, match="neighbours must be"):
        model(ids, neighbours[..., :M])
    with pytest.raises(ValueError, match="neighbour_mask must be bool"):
        model(ids, neighbours, torch.ones(neighbours.shape[:3]))
    with pytest.raises(ValueError, match="exceeds seq_len"):
        model(torch.cat([ids, ids], dim=1))
    with pytest.raises(ValueError, match="targets shape"):
        model(ids, targets=ids[:, :-1])


def test_cross_attention_positions_are_relative():
    """With rotary tables, shifting query and key positions alike changes nothing, and moving
    the keys against the queries changes the output: attention sees offsets, as CCA needs to
    read "the neighbour token after the one aligned with me"."""
    from retro_ops.model.layers import CrossAttention, rotary_tables

    torch.manual_seed(0)
    attn = CrossAttention(32, 24, 4, 0.0).eval()
    x, context = torch.randn(3, 5, 32), torch.randn(3, 7, 24)
    cos, sin = rotary_tables(64, 8, torch.device("cpu"))

    def run(query_start: int, key_start: int) -> Tensor:
        q, k = torch.arange(query_start, query_start + 5), torch.arange(key_start, key_start + 7)
        return attn(x, context, None, ((cos[q], sin[q]), (cos[k], sin[k])))

    torch.testing.assert_close(run(10, 3), run(30, 23))
    assert not torch.allclose(run(10, 3), run(10, 4), atol=1e-4)
    assert not torch.allclose(run(10, 3), attn(x, context), atol=1e-4)


def test_cca_positions_are_on_by_default_and_old_checkpoints_load_without():
    """Checkpoints written before the field existed were trained without CCA positions."""
    assert RetroConfig().cca_positions and TINY.cca_positions
    old = {k: v for k, v in TINY.to_dict().items() if k != "cca_positions"}
    assert RetroConfig.from_dict(old).cca_positions is False
    ids, neighbours = make_batch()
    with_positions, without = make_model(), make_model(RetroConfig.tiny(cca_positions=False))
    without.load_state_dict(with_positions.state_dict())  # no parameters: the same weights load
    with torch.no_grad():
        assert not torch.allclose(with_positions(ids, neighbours)[0], without(ids, neighbours)[0])
        torch.testing.assert_close(with_positions(ids)[0], without(ids)[0])  # decoder unchanged


@pytest.mark.parametrize("positions", [True, False])
def test_incremental_decoding_gives_the_full_forward_logits(positions: bool):
    """Token by token with cached keys/values and once-encoded neighbours == one full pass, at
    every position, whether a chunk has neighbours or not; reset() restarts positions."""
    from retro_ops.model.decoding import IncrementalDecoder

    config = RetroConfig.tiny(cca_positions=positions)
    model = make_model(config)
    ids, neighbours = make_batch(config, batch=1)
    neighbours[0, 2] = 0  # chunk 2 retrieved nothing: all padding
    neighbours[0, 5, 1, 7:] = 0  # a short second neighbour
    neighbours[0, 1, 0] = ids[0, M:3 * M]  # chunk 1 and its continuation: agreement, long matches
    with torch.no_grad():  # every evidence weight away from its start
        model.copy.length_gate.copy_(torch.linspace(-1.0, 1.0, len(model.copy.length_gate)))
        model.copy.agreement_gate.fill_(1.5)
        for block in model.transformer.h:
            if block.cca is not None:
                block.cca.trust.copy_(torch.tensor([-0.5, 2.0]))
        full, _ = model(ids, neighbours)
        plain, _ = model(ids)
    decoder = IncrementalDecoder(model)
    for with_neighbours, expected in ((True, full), (False, plain)):
        decoder.reset()
        for p in range(config.seq_len):
            done = (p + 1) % M == 0
            given = neighbours[0, p // M] if (done and with_neighbours) else None
            logits = decoder.step(int(ids[0, p]), given)
            torch.testing.assert_close(logits, expected[0, p], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="past seq_len"):
        decoder.step(1)
    decoder.reset()
    with pytest.raises(ValueError, match="completes no chunk"):
        decoder.step(1, neighbours[0, 0])


def test_copy_head_is_the_gated_mixture_it_claims_and_a_distribution():
    """The pointer's sparse update equals the dense mixture (1 - g) softmax + g * scatter(attn)
    over the neighbour tokens, duplicates and masked neighbours included, and sums to one."""
    from retro_ops.model.matching import match_lengths

    model = make_model()
    with torch.no_grad():
        model.copy.gate.bias.fill_(0.5)  # copy enough to matter
        model.copy.length_gate.copy_(torch.linspace(-0.5, 0.5, len(model.copy.length_gate)))
        model.copy.agreement_gate.fill_(0.3)  # every evidence weight away from its start
    ids, _ = make_batch()
    neighbours = torch.randint(1, 20, (2, TINY.n_chunks, 2, TINY.neighbour_len),
                               generator=torch.Generator().manual_seed(5))  # many repeated tokens
    neighbours[0, 1, 1, 5:] = 0
    mask = torch.ones(neighbours.shape[:3], dtype=torch.bool)
    mask[1, 3], mask[0, 2, 0] = False, False

    def dense_forward(logp, h, encoded, tokens, token_mask, history, agreement):  # grouped, dense, laid back
        B, T, V = logp.shape
        nc, m = encoded.shape[1], M
        att = min(T - (m - 1), nc * m)

        def grouped(t, fill=0):
            return torch.nn.functional.pad(t[:, m - 1:m - 1 + att], (0, 0, 0, nc * m - att),
                                           value=fill).reshape(B * nc, m, -1)

        mixed = dense(model.copy, grouped(logp), grouped(h), encoded.flatten(0, 1), tokens.flatten(0, 1),
                      token_mask.flatten(0, 1), grouped(history, -1), agreement.flatten()
                      ).reshape(B, nc * m, V)[:, :att]
        return torch.cat([logp[:, :m - 1], mixed, logp[:, m - 1 + att:]], dim=1)

    def dense(self, logp, h, encoded, tokens, token_mask, history, agreement):
        keys, values = self.k(encoded[:, :, :-1]).flatten(1, 2), tokens[:, :, 1:].flatten(1)
        valid = (token_mask[:, :, 1:] & token_mask[:, :, :-1]).flatten(1)
        has = valid.any(1)
        length = match_lengths(history, tokens, token_mask)
        scores = (self.q(h) @ keys.transpose(1, 2) / math.sqrt(self.width)
                  + self.gain * self.length_score[length]).masked_fill(
            ~(valid | ~has[:, None])[:, None, :], float("-inf"))
        longest = length.masked_fill(~valid[:, None, :], 0).amax(-1)
        evidence = self.length_gate[longest] + self.agreement_gate * agreement[:, None]
        g = torch.sigmoid(self.gate(h).squeeze(-1) + self.gain * evidence
                          + self.gate_match * scores.amax(-1))[..., None]
        copied = torch.zeros_like(logp).scatter_add(2, values[:, None].expand(-1, logp.shape[1], -1),
                                                    scores.softmax(-1))
        copying = has[:, None] & (longest >= self.min_match)  # the gate shut where nothing matches
        return torch.where(copying[..., None], ((1 - g) * logp.exp() + g * copied).log(), logp)

    with torch.no_grad():
        sparse, _ = model(ids, neighbours, mask)
        model.copy.forward = dense_forward
        expected, _ = model(ids, neighbours, mask)
    torch.testing.assert_close(sparse, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse.exp().sum(-1), torch.ones(sparse.shape[:2]), atol=1e-5, rtol=0)
    assert RetroConfig().copy_gate_init < 0 and RetroConfig().copy_head and model.copy.min_match == 2
    old = {k: v for k, v in TINY.to_dict().items() if k != "copy_head"}
    assert RetroConfig.from_dict(old).copy_head is False  # checkpoints from before load without


def test_copy_gate_is_shut_where_no_neighbour_token_matches_the_current_one():
    """copy_min_match = 2 (the default): at a position whose token and the one before it occur
    together in none of the neighbours it reads, the output is the decoder's distribution
    exactly, however open the gate; where they do, the copy head mixes in. 0 shuts nothing."""
    model = make_model()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(100, TINY.vocab_size, (1, TINY.seq_len), generator=g)
    neighbours = torch.randint(1, 20, (1, TINY.n_chunks, 2, TINY.neighbour_len), generator=g)
    ids[0, 39:41] = neighbours[0, 1, 0, 2:4]  # 40 reads chunk (40 - 15) // 16 = 1's neighbours
    assert model.copy.min_match == 2  # so position 39, whose one token matches, stays shut
    with torch.no_grad():
        model.copy.gate.bias.fill_(20.0)  # wide open wherever it may open
        shut, _ = model(ids, neighbours)
        model.copy.min_match = 0
        unshut, _ = model(ids, neighbours)
        model.copy.forward = lambda logp, *rest: logp
        decoder, _ = model(ids, neighbours)
    equal = (shut == decoder).all(-1)[0]
    assert not equal[40]
    assert int(equal.sum()) == TINY.seq_len - 1  # every other position: the decoder's, exactly
    assert not (unshut == decoder).all(-1)[0, M - 1:].any()  # without the rule, every reading position mixes
    assert RetroConfig.from_dict({k: v for k, v in TINY.to_dict().items() if k != "copy_min_match"}
                                 ).copy_min_match == 0  # checkpoints from before keep their gate


def test_copy_head_gradients_are_finite_when_every_neighbour_is_masked():
    model = make_model().train()
    ids, neighbours = make_batch()
    mask = torch.zeros(neighbours.shape[:3], dtype=torch.bool)
    mask[0, 4] = True
    neighbours[0, 4, 0] = ids[0, 4 * M:6 * M]  # its tokens match, so the gate may open
    _, loss = model(ids, neighbours, mask, targets=torch.roll(ids, -1, 1))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.copy.q.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("overrides", [{}, {"copy_head": False}, {"retrieval": False}])
def test_training_loss_reads_the_mixture_at_the_targets_as_the_full_forward_does(overrides: dict):
    """`Retro.loss` (what training calls) skips the (B, T, vocab) mixture yet gives the loss and
    the gradients of `forward`, with repeated neighbour tokens (duplicate keys), a masked
    neighbour, ignored targets and targets no neighbour holds."""
    config = RetroConfig.from_dict({**TINY.to_dict(), **overrides})
    ids, _ = make_batch(config)
    neighbours = torch.randint(1, 20, (2, config.n_chunks, 2, config.neighbour_len),
                               generator=torch.Generator().manual_seed(5))
    mask = torch.ones(neighbours.shape[:3], dtype=torch.bool)
    mask[1, 3] = False
    targets = torch.randint(1, 40, ids.shape, generator=torch.Generator().manual_seed(6))
    targets[0, 70:90] = -100
    grads = []
    for full in (True, False):
        model = make_model(config).train()
        if model.copy is not None:
            with torch.no_grad():
                model.copy.gate.bias.fill_(0.5)  # copy enough to matter
        loss = model(ids, neighbours, mask, targets)[1] if full else model.loss(ids, neighbours, mask, targets)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (full_loss, full_grads), (loss, loss_grads) = grads
    torch.testing.assert_close(loss, full_loss, atol=1e-5, rtol=1e-5)
    assert full_grads.keys() == loss_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(loss_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_the_standalone_loss_shares_the_layers_below_the_first_cca_and_equals_two_passes():
    """`Retro.losses` forks the decoder at the first CCA layer: the loss with the neighbours and
    the loss without them equal two separate `loss` calls, and so do the gradients of their
    weighted sum (what training minimises)."""
    config = RetroConfig.from_dict({**TINY.to_dict(), "cca_start_layer": 2})  # layer 1 shared
    ids, neighbours = make_batch(config)
    targets = torch.roll(ids, -1, 1)
    results = []
    for forked in (True, False):
        model = make_model(config).train()
        if forked:
            loss, alone = model.losses(ids, neighbours, None, targets)
        else:
            loss, alone = model.loss(ids, neighbours, None, targets), model.loss(ids, None, None, targets)
        (loss + 3.0 * alone).backward()
        results.append(((loss.detach(), alone.detach()),
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (forked_losses, forked_grads), (losses, grads) = results
    torch.testing.assert_close(forked_losses, losses)
    assert forked_losses[0] != forked_losses[1]  # the neighbours matter to the first
    assert forked_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(forked_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
