"""RETRO (Borgeaud et al. 2021): a GPT-style decoder that reads retrieved neighbours through
chunked cross-attention (CCA), and the neighbour encoder that feeds it.

Read top to bottom: decoder block, CCA, encoder block, encoder, copy head, model. With retrieval
off (or no neighbours) the model is exactly the baseline decoder: same parameter names, same ops.
The model returns log-probabilities (normalised logits): with a copy head the output is a mixture
of two distributions, which has no logits of its own; softmax, argmax and cross-entropy read
log-probabilities exactly as they read logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retro_ops.model.config import RetroConfig
from retro_ops.model.layers import MLP, CrossAttention, Rope, SelfAttention, layer_norm, rotary_tables
from retro_ops.model.matching import MAX_MATCH, NO_TOKEN, bigram_agreement, histories, match_lengths

IGNORE_INDEX = -100


class DecoderBlock(nn.Module):
    """Causal self-attention, then (in a CCA layer of a RETRO model) chunked cross-attention,
    then MLP. The steps are separate methods because the encoder runs between the first two."""

    def __init__(self, config: RetroConfig, with_cca: bool):
        super().__init__()
        self.ln_1 = layer_norm(config.d_model)
        self.attn = SelfAttention(config.d_model, config.n_head, config.dropout, causal=True)
        self.cca = ChunkedCrossAttention(config) if with_cca else None
        self.ln_2 = layer_norm(config.d_model)
        self.mlp = MLP(config.d_model, config.d_ff, config.dropout)

    def attend(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        return x + self.attn(self.ln_1(x), rope)  # (B, T, d)

    def feed_forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.ln_2(x))  # (B, T, d)


class ChunkedCrossAttention(nn.Module):
    """CCA as in the paper: the sequence is shifted left by m-1, so the m tokens from the last
    token of chunk u to the second-to-last of chunk u+1 attend to chunk u's encoded neighbours.
    Neighbours of chunk u are retrieved from chunk u itself, so no token may see them before the
    chunk is complete: the first m-1 tokens get nothing. Returns the residual branch only."""

    def __init__(self, config: RetroConfig):
        super().__init__()
        self.chunk_size = config.chunk_size
        self.head_dim = config.d_model // config.n_head
        self.positions = config.cca_positions
        self.ln = layer_norm(config.d_model)
        self.attn = CrossAttention(config.d_model, config.enc_d_model, config.n_head,
                                   config.dropout)
        # with match_gate, the branch of group u is scaled by sigmoid(gain (a + b agreement_u)):
        # a neighbour that shares none of its chunk's bigrams can be shut out (starts at 0.88)
        self.gain = config.evidence_gain
        self.trust = nn.Parameter(torch.tensor([2.0 / self.gain, 0.0])) if config.match_gate else None

    def scale(self, agreement: Tensor | None) -> Tensor | None:
        """agreement (...) -> the branch's scale (...), or None without match_gate."""
        if self.trust is None or agreement is None:
            return None
        return torch.sigmoid(self.gain * (self.trust[0] + self.trust[1] * agreement))

    def forward(self, x: Tensor, encoded: Tensor, token_mask: Tensor,
                agreement: Tensor | None = None) -> Tensor:
        """x (B, T, d), encoded (B, l, k, r, d_enc), token_mask (B, l, k, r), agreement (B, l)
        -> (B, T, d)."""
        B, T, C = x.shape
        _, nc, k, r, C_enc = encoded.shape  # nc: l in the paper, chunks
        m = self.chunk_size
        h = self.ln(x)[:, m - 1:m - 1 + nc * m]  # (B, attending, d): positions u*m + m-1 + i
        attending = h.shape[1]
        h = F.pad(h, (0, 0, 0, nc * m - attending))  # (B, l*m, d): the last group is partial
        y = self.attn(h.reshape(B * nc, m, C),  # (B*l, m, d): queries of chunk u
                      encoded.reshape(B * nc, k * r, C_enc),  # (B*l, k*r, d_enc): its neighbours
                      token_mask.reshape(B * nc, k * r),
                      self.rope_tables(k, r, x.device) if self.positions else None)  # (B*l, m, d)
        scale = self.scale(agreement)
        if scale is not None:
            y = y * scale.reshape(B * nc, 1, 1)
        y = y.view(B, nc * m, C)[:, :attending]  # (B, attending, d)
        return F.pad(y, (0, 0, m - 1, T - (m - 1) - attending))  # (B, T, d): zero elsewhere

    def attend_one(self, x: Tensor, encoded: Tensor, token_mask: Tensor, i: int,
                   rope: tuple[Rope, Rope] | None, agreement: Tensor | None = None) -> Tensor:
        """The branch for one token, the i-th (0..m-1) of the group reading chunk u's
        neighbours: x (1, 1, d), encoded (1, 1, k, r, d_enc), token_mask (1, 1, k, r), rope
        from `rope_tables` (None without positions), agreement (1, 1) -> (1, 1, d)."""
        _, _, k, r, width = encoded.shape
        if rope is not None:
            (cos, sin), keys = rope
            rope = ((cos[i:i + 1], sin[i:i + 1]), keys)
        y = self.attn(self.ln(x), encoded.reshape(1, k * r, width), token_mask.reshape(1, k * r), rope)
        scale = self.scale(agreement)
        return y if scale is None else y * scale.reshape(1, 1, 1)

    def rope_tables(self, k: int, r: int, device: torch.device) -> tuple[Rope, Rope]:
        """Query i of group u is token m-1+i counted from chunk u's start; neighbour token j is
        at j (its chunk aligns with chunk u, its continuation with chunk u+1), for each of k."""
        m = self.chunk_size
        cos, sin = rotary_tables(max(r, 2 * m), self.head_dim, device)
        queries = torch.arange(m - 1, 2 * m - 1, device=device)
        keys = torch.arange(r, device=device).repeat(k)
        return (cos[queries], sin[queries]), (cos[keys], sin[keys])


class EncoderBlock(nn.Module):
    """Bidirectional self-attention within each neighbour, cross-attention from its tokens to
    the decoder activations of the chunk that retrieved it, MLP."""

    def __init__(self, config: RetroConfig):
        super().__init__()
        width = config.enc_d_model
        self.ln_1 = layer_norm(width)
        self.attn = SelfAttention(width, config.enc_n_head, config.dropout, causal=False)
        self.ln_2 = layer_norm(width)
        self.ca = CrossAttention(width, config.d_model, config.enc_n_head, config.dropout)
        self.ln_3 = layer_norm(width)
        self.mlp = MLP(width, config.enc_d_ff, config.dropout)

    def forward(self, e: Tensor, chunks: Tensor, rope: Rope, attn_mask: Tensor,
                chunk_rope: tuple[Rope, Rope] | None = None) -> Tensor:
        """e (N, k, r, w) with N = B*l; chunks (N, m, d); attn_mask (N*k, 1, r, r);
        chunk_rope: positions of the k*r neighbour tokens and of the m chunk tokens -> e."""
        N, k, r, w = e.shape
        e = e + self.attn(self.ln_1(e).view(N * k, r, w), rope, attn_mask).view(N, k, r, w)
        # cross-attention is per query token, so the k neighbours of a chunk share one call
        e = e + self.ca(self.ln_2(e).view(N, k * r, w), chunks, None, chunk_rope).view(N, k, r, w)
        return e + self.mlp(self.ln_3(e))  # (N, k, r, w)


class NeighbourEncoder(nn.Module):
    """Encodes each neighbour (2m tokens) conditioned on the decoder's activations of its chunk,
    taken at the first CCA layer (not on the input embeddings)."""

    def __init__(self, config: RetroConfig):
        super().__init__()
        self.chunk_size, self.head_dim = config.chunk_size, config.enc_d_model // config.enc_n_head
        self.positions = config.cca_positions
        # neighbours are embedded by the decoder's table; bridge the widths if they differ
        self.proj_in: nn.Module = (nn.Identity() if config.enc_d_model == config.d_model else
                                   nn.Linear(config.d_model, config.enc_d_model, bias=False))
        self.ln_h = layer_norm(config.d_model)  # the decoder's residual stream is unnormalized
        self.h = nn.ModuleList(EncoderBlock(config) for _ in range(config.enc_n_layer))
        self.ln_f = layer_norm(config.enc_d_model)

    def forward(self, embedded: Tensor, hidden: Tensor, token_valid: Tensor) -> Tensor:
        """embedded (B, l, k, r, d), hidden (B, T, d), token_valid (B, l, k, r) bool
        -> (B, l, k, r, d_enc)."""
        B, nc, k, r, d = embedded.shape  # nc: l in the paper, chunks
        m = self.chunk_size
        chunks = self.ln_h(hidden[:, :nc * m]).reshape(B * nc, m, d)  # (B*l, m, d): H_u
        e = self.proj_in(embedded).reshape(B * nc, k, r, -1)  # (B*l, k, r, d_enc)
        eye = torch.eye(r, dtype=torch.bool, device=e.device)
        # padded keys are hidden; every token still sees itself, so no row is empty
        attn_mask = token_valid.reshape(B * nc * k, 1, 1, r) | eye  # (B*l*k, 1, r, r)
        rope = rotary_tables(max(r, m), self.head_dim, e.device)
        chunk_rope = None
        if self.positions:  # neighbour token j at j, chunk token i at i: aligned texts align
            keys = torch.arange(r, device=e.device).repeat(k)
            chunk_rope = ((rope[0][keys], rope[1][keys]), (rope[0][:m], rope[1][:m]))
        rope = (rope[0][:r], rope[1][:r])
        for block in self.h:
            e = block(e, chunks, rope, attn_mask, chunk_rope)
        return self.ln_f(e).view(B, nc, k, r, -1)


def per_length(weights: Tensor, length: Tensor) -> Tensor:
    """weights[length] as a sum of masks: the backward of an indexed read accumulates with
    index_put, whose order on CPU threads is not fixed, and a resumed training run must be bit
    for bit the run it continues (tests/test_artifact_integrity.py)."""
    out = torch.zeros(length.shape, dtype=weights.dtype, device=weights.device)
    for value in range(weights.shape[0]):
        out = out + (length == value).to(weights.dtype) * weights[value]
    return out


class NeighbourCopy(nn.Module):
    """A pointer over the neighbour tokens (See et al. 2017's copy mechanism over retrieved text):
    p(next) = (1 - g) softmax(logits) + g sum_j a_j [v_j = next], where a attends from the
    decoder's final state at the current position to the neighbour tokens, and the key of token
    v_j is the encoding of the token before it (a "smeared" key, Olsson et al. 2022): matching
    the current token against v_{j-1} and emitting v_j is one head's work, whatever the offset of
    the copy, where CCA must route a copied value through later layers into the right logit.
    The gate g reads the state and the best match score, so an unmatched neighbour is ignored.
    With match_gate, exact token evidence (`matching`) joins in: each key's score gains a learned
    weight of its match length, and the gate one of the longest match and of the chunk's bigram
    agreement with its neighbours, so a neighbour of other text is not copied from.
    Groups and causality are CCA's: the m tokens from chunk u's last read chunk u's neighbours."""

    def __init__(self, config: RetroConfig):
        super().__init__()
        self.chunk_size, self.width = config.chunk_size, config.d_model
        self.q = nn.Linear(config.d_model, config.d_model, bias=False)
        self.k = nn.Linear(config.enc_d_model, config.d_model, bias=False)
        self.gate = nn.Linear(config.d_model, 1)
        self.gate_match = nn.Parameter(torch.zeros(1))
        nn.init.constant_(self.gate.bias, config.copy_gate_init)
        self.matching = config.match_gate
        self.min_match = config.copy_min_match
        self.gain = config.evidence_gain
        if self.matching:  # in units of the gain; a matched token starts worth 2 in a score
            self.length_score = nn.Parameter(2.0 / self.gain * torch.arange(MAX_MATCH + 1, dtype=torch.float))
            self.length_gate = nn.Parameter(torch.zeros(MAX_MATCH + 1))
            self.agreement_gate = nn.Parameter(torch.zeros(1))

    def forward(self, logp: Tensor, h: Tensor, encoded: Tensor, tokens: Tensor,
                token_mask: Tensor, history: Tensor | None = None,
                agreement: Tensor | None = None) -> Tensor:
        """logp (B, T, V) log-softmax of the decoder, h (B, T, d) its final normalised state,
        encoded (B, l, k, r, d_enc), tokens (B, l, k, r) model ids, token_mask (B, l, k, r);
        with match_gate, history (B, T, MAX_MATCH) from `matching.histories` and agreement (B, l)
        -> (B, T, V) log-probabilities of the mixture; unchanged before any neighbour is read.
        The pointer is computed per group of m queries (small: K = k(r-1) keys each) and laid
        back on the T positions, so the vocabulary-sized work is one add and a sparse update."""
        laid = self.on_positions(h, encoded, tokens, token_mask, history, agreement)
        return logp if laid is None else self.apply_pointer(logp, *laid)

    def at_targets(self, logp_target: Tensor, h: Tensor, encoded: Tensor, tokens: Tensor,
                   token_mask: Tensor, targets: Tensor, history: Tensor | None = None,
                   agreement: Tensor | None = None) -> Tensor:
        """The mixture's log-probability of each target alone: logp_target (B, T) the decoder's
        log-probability of the target, targets (B, T) model ids (any value where ignored), the
        rest as `forward` -> (B, T). Equal to `forward(...)` read at the targets, without the
        vocabulary-sized tensors: training needs nothing else, and those were most of the copy
        head's cost per step (issue #24: at most 1.5x the cost per token before it)."""
        laid = self.on_positions(h, encoded, tokens, token_mask, history, agreement)
        if laid is None:
            return logp_target
        z, mass, index, first = laid
        kept = logp_target + F.logsigmoid(-z)  # (B, T): (1 - g) p_vocab(target)
        hit = (index == targets[..., None]) & first  # (B, T, K): the target's one key entry
        copy = (mass * hit).sum(dim=-1)  # (B, T): its copy mass
        copied = torch.logaddexp(kept, F.logsigmoid(z) + copy.clamp_min(1e-30).log())
        return torch.where(hit.any(dim=-1), copied, kept)

    def on_positions(self, h: Tensor, encoded: Tensor, tokens: Tensor, token_mask: Tensor,
                     history: Tensor | None, agreement: Tensor | None):
        """The pointer of every group laid back on the T positions: gate logits z (B, T), copy
        mass (B, T, K), key tokens (B, T, K) and first occurrences (B, T, K); None when no
        position reads neighbours."""
        B, T, _ = h.shape
        nc, m = encoded.shape[1], self.chunk_size
        attending = min(T - (m - 1), nc * m)  # positions u*m + m-1 + i
        if attending <= 0:
            return None
        queries = h[:, m - 1:m - 1 + attending]
        queries = F.pad(queries, (0, 0, 0, nc * m - attending)).reshape(B * nc, m, -1)
        if history is not None:
            history = F.pad(history[:, m - 1:m - 1 + attending], (0, 0, 0, nc * m - attending),
                            value=NO_TOKEN).reshape(B * nc, m, -1)
        z, mass, values, first = self.pointer(queries, encoded.flatten(0, 1), tokens.flatten(0, 1),
                                              token_mask.flatten(0, 1), history,
                                              None if agreement is None else agreement.flatten())

        def laid(t: Tensor, fill: float | bool) -> Tensor:  # (B*l, m, ...) -> (B, T, ...)
            t = t.reshape(B, nc * m, *t.shape[2:])[:, :attending]
            pad = [0, 0] * (t.dim() - 2) + [m - 1, T - (m - 1) - attending]
            return F.pad(t, pad, value=fill)

        K = values.shape[-1]
        return (laid(z, self.NO_COPY), laid(mass, 0.0), laid(values[:, None, :].expand(-1, m, K), 0),
                laid(first[:, None, :].expand(-1, m, K), False))

    NO_COPY = -1e4  # a gate logit whose g is 0 and 1 - g is 1 exactly in float32

    def pointer(self, h: Tensor, encoded: Tensor, tokens: Tensor, token_mask: Tensor,
                history: Tensor | None = None, agreement: Tensor | None = None):
        """One group per row: h (N, Tq, d), encoded (N, k, r, d_enc), tokens and token_mask
        (N, k, r), history (N, Tq, MAX_MATCH), agreement (N,) -> gate logits z (N, Tq), copy
        mass of each key's token (N, Tq, K), the key's token (N, K), and whether the key is its
        token's first valid occurrence (N, K). history and agreement are needed with match_gate."""
        if self.matching and (history is None or agreement is None):
            raise ValueError("a copy head with match_gate needs the history and the agreement")
        keys = self.k(encoded[:, :, :-1]).flatten(1, 2)  # (N, K, w): token j-1 keys value j
        values = tokens[:, :, 1:].flatten(1)  # (N, K)
        valid = (token_mask[:, :, 1:] & token_mask[:, :, :-1]).flatten(1)  # (N, K)
        anything = valid.any(dim=1)  # (N,): a group with nothing to copy keeps logp exactly
        scores = self.q(h) @ keys.transpose(1, 2) / math.sqrt(self.width)  # (N, Tq, K)
        z = self.gate(h).squeeze(-1)  # (N, Tq)
        copying = anything[:, None].expand_as(z)  # (N, Tq): where the gate may open
        if self.matching:
            length = match_lengths(history, tokens, token_mask)  # (N, Tq, K)
            scores = scores + self.gain * per_length(self.length_score, length)
            longest = length.masked_fill(~valid[:, None, :], 0).amax(dim=-1)  # (N, Tq)
            z = z + self.gain * (per_length(self.length_gate, longest) + self.agreement_gate * agreement[:, None])
            copying = copying & (longest >= self.min_match)  # nothing a copy could continue: shut
        scores = scores.masked_fill(~(valid | ~anything[:, None])[:, None, :], float("-inf"))
        attn = scores.softmax(dim=-1)  # (N, Tq, K)
        z = z + self.gate_match * scores.amax(dim=-1)  # (N, Tq)
        z = torch.where(copying, z, torch.full_like(z, self.NO_COPY))
        same = (values[:, :, None] == values[:, None, :]) & valid[:, None, :] & valid[:, :, None]
        mass = attn @ same.to(attn.dtype)  # (N, Tq, K): copy mass of each key's token
        first = ~torch.tril(same, diagonal=-1).any(dim=2) & valid  # one entry per distinct token
        return z, mass, values, first

    @staticmethod
    def apply_pointer(logp: Tensor, z: Tensor, mass: Tensor, index: Tensor, first: Tensor) -> Tensor:
        """log((1 - g) p + g copy) with g = sigmoid(z): every entry scaled by 1 - g, then the
        copied tokens' entries raised (duplicates and masked keys add exactly 0).
        logp (..., V), z (...), mass, index, first (..., K)."""
        kept = logp + F.logsigmoid(-z)[..., None]  # (..., V): (1 - g) p_vocab
        at_values = kept.gather(-1, index)  # (..., K)
        copied = torch.logaddexp(at_values, F.logsigmoid(z)[..., None] + mass.clamp_min(1e-30).log())
        delta = torch.where(first, copied - at_values, torch.zeros_like(copied))
        return kept.scatter_add(-1, index, delta)

    def mix(self, logp: Tensor, h: Tensor, encoded: Tensor, tokens: Tensor, token_mask: Tensor,
            history: Tensor | None = None, agreement: Tensor | None = None) -> Tensor:
        """The mixture for groups given directly (token-by-token decoding): logp (N, Tq, V),
        h (N, Tq, d), encoded (N, k, r, d_enc), tokens and token_mask (N, k, r), history
        (N, Tq, MAX_MATCH), agreement (N,) -> (N, Tq, V)."""
        z, mass, values, first = self.pointer(h, encoded, tokens, token_mask, history, agreement)
        Tq, K = h.shape[1], values.shape[-1]
        return self.apply_pointer(logp, z, mass, values[:, None, :].expand(-1, Tq, K),
                                  first[:, None, :].expand(-1, Tq, K))


class Retro(nn.Module):
    """The RETRO language model; `RetroConfig(retrieval=False)` makes the baseline decoder."""

    def __init__(self, config: RetroConfig):
        super().__init__()
        self.config = config
        cca = set(config.cca_layers())
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.d_model),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(DecoderBlock(config, i in cca) for i in range(config.n_layer)),
            ln_f=layer_norm(config.d_model),
        ))
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying
        self.encoder = NeighbourEncoder(config) if config.retrieval else None
        self.copy = NeighbourCopy(config) if config.retrieval and config.copy_head else None
        self.apply(_init_weights)
        if self.copy is not None:  # _init_weights draws every Linear: restore the gate's start
            nn.init.constant_(self.copy.gate.bias, config.copy_gate_init)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # scaled init of residual projections (GPT-2)
                encoder = name.startswith("encoder.")
                branches = 3 * config.enc_n_layer if encoder else 2 * config.n_layer
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(branches))

    def forward(self, input_ids: Tensor, neighbours: Tensor | None = None,
                neighbour_mask: Tensor | None = None,
                targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """input_ids (B, T) with T <= seq_len; neighbours (B, T//m, k, 2m); neighbour_mask
        (B, T//m, k) bool, False = ignore; targets (B, T), -100 = ignore.
        -> log-probabilities (B, T, vocab), mean cross-entropy or None.
        Neighbours are ignored by a baseline (retrieval=False)."""
        self._check_inputs(input_ids, neighbours, neighbour_mask, targets)
        h, read, _ = self._trunk(input_ids, neighbours, neighbour_mask)
        logits = F.log_softmax(self.lm_head(h), dim=-1)  # (B, T, vocab)
        if read is not None:
            logits = self.copy(logits, h, *read)
        loss = None
        if targets is not None:
            loss = F.nll_loss(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                              ignore_index=IGNORE_INDEX)  # logits are log-probabilities
        return logits, loss

    def loss(self, input_ids: Tensor, neighbours: Tensor | None, neighbour_mask: Tensor | None,
             targets: Tensor) -> Tensor:
        """`forward`'s loss without its (B, T, vocab) output: the copy head's mixture is read
        at the targets only (`NeighbourCopy.at_targets`). What training calls."""
        self._check_inputs(input_ids, neighbours, neighbour_mask, targets)
        h, read, _ = self._trunk(input_ids, neighbours, neighbour_mask)
        return self._loss_at(h, read, targets)

    def losses(self, input_ids: Tensor, neighbours: Tensor, neighbour_mask: Tensor | None,
               targets: Tensor) -> tuple[Tensor, Tensor]:
        """(the loss with the neighbours, the loss without them) in one pass: below the first
        CCA layer the decoder does not depend on the neighbours, so both share those layers and
        part ways there. The same values and gradients as `loss` called twice (with dropout,
        one mask below the fork), for about a third less of the second call's work."""
        self._check_inputs(input_ids, neighbours, neighbour_mask, targets)
        h, read, alone = self._trunk(input_ids, neighbours, neighbour_mask, fork=True)
        return self._loss_at(h, read, targets), self._loss_at(alone if alone is not None else h, None, targets)

    def _loss_at(self, h: Tensor, read: tuple | None, targets: Tensor) -> Tensor:
        logits = self.lm_head(h)  # (B, T, vocab)
        if read is None:
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        scored = targets != IGNORE_INDEX
        nll = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                              ignore_index=IGNORE_INDEX, reduction="none").view(targets.shape)
        mixed = self.copy.at_targets(-nll, h, *read[:3], targets.masked_fill(~scored, 0), *read[3:])
        return -(mixed * scored).sum() / scored.sum()

    def _trunk(self, input_ids: Tensor, neighbours: Tensor | None, neighbour_mask: Tensor | None,
               fork: bool = False):
        """The decoder's final normalised state h (B, T, d); what the copy head reads (encoded,
        neighbour tokens, token mask, match history, agreement), None without it; with `fork`,
        the final state of the same decoder reading nothing (None if nothing was read)."""
        cfg = self.config
        B, T = input_ids.shape
        rope = rotary_tables(T, cfg.d_model // cfg.n_head, input_ids.device)
        x = self.transformer.drop(self.transformer.wte(input_ids))  # (B, T, d)
        retrieve = self.encoder is not None and neighbours is not None and neighbours.shape[1] > 0
        encoded = token_mask = agreement = alone = None
        for block in self.transformer.h:
            x = block.attend(x, rope)
            if alone is not None:
                alone = block.attend(alone, rope)
            if retrieve and block.cca is not None:
                if encoded is None:  # the first CCA layer: condition the encoder on H here
                    alone = x if fork else None  # the decoder without neighbours goes on from here
                    token_valid = neighbours != cfg.pad_token_id  # (B, l, k, r)
                    encoded = self.encoder(self.transformer.wte(neighbours), x, token_valid)
                    token_mask = token_valid if neighbour_mask is None else (
                        token_valid & neighbour_mask[..., None])  # (B, l, k, r)
                    if cfg.match_gate:
                        nc, m = neighbours.shape[1], cfg.chunk_size
                        agreement = bigram_agreement(input_ids[:, :nc * m].reshape(B, nc, m),
                                                     neighbours, token_mask, cfg.pad_token_id)
                x = x + block.cca(x, encoded, token_mask, agreement)
            x = block.feed_forward(x)
            if alone is not None:
                alone = block.feed_forward(alone)
        h = self.transformer.ln_f(x)
        alone = None if alone is None else self.transformer.ln_f(alone)
        if encoded is None or self.copy is None:
            return h, None, alone
        return h, (encoded, neighbours, token_mask,
                   histories(input_ids) if cfg.match_gate else None, agreement), alone

    def retrieval_modules(self) -> list[nn.Module]:
        """The encoder and every CCA: what a RETROfitted baseline has to learn."""
        modules: list[nn.Module] = [b.cca for b in self.transformer.h if b.cca is not None]
        return modules + [m for m in (self.encoder, self.copy) if m is not None]

    def retrieval_parameters(self) -> list[nn.Parameter]:
        return [p for module in self.retrieval_modules() for p in module.parameters()]

    def decoder_parameter_names(self) -> list[str]:
        """Names a baseline checkpoint provides (the tied LM head appears as the embedding)."""
        retrieval = {id(p) for p in self.retrieval_parameters()}
        return [name for name, p in self.named_parameters() if id(p) not in retrieval]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights counted once

    def _check_inputs(self, input_ids: Tensor, neighbours: Tensor | None,
                      neighbour_mask: Tensor | None, targets: Tensor | None) -> None:
        cfg = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if T > cfg.seq_len:
            raise ValueError(f"input length {T} exceeds seq_len {cfg.seq_len}")
        if targets is not None and targets.shape != input_ids.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} differs from input_ids "
                             f"shape {tuple(input_ids.shape)}")
        if neighbours is None:
            if neighbour_mask is not None:
                raise ValueError("neighbour_mask given without neighbours")
            return
        expected = (B, T // cfg.chunk_size, neighbours.shape[2] if neighbours.dim() == 4 else -1,
                    cfg.neighbour_len)
        if tuple(neighbours.shape) != expected or expected[2] < 1:
            raise ValueError(f"neighbours must be (B, T//chunk_size, k, 2*chunk_size) = "
                             f"({B}, {T // cfg.chunk_size}, k, {cfg.neighbour_len}), "
                             f"got {tuple(neighbours.shape)}")
        if neighbour_mask is not None and (neighbour_mask.shape != neighbours.shape[:3]
                                           or neighbour_mask.dtype != torch.bool):
            raise ValueError(f"neighbour_mask must be bool of shape {tuple(neighbours.shape[:3])}, "
                             f"got {neighbour_mask.dtype} {tuple(neighbour_mask.shape)}")


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
