"""Token-by-token decoding of a Retro model with caches: the same logits as a full forward pass.

A full forward pass per generated token recomputes every earlier position and re-encodes the
neighbours of every completed chunk: O(T^2) work per token. Here each decoder layer keeps the
keys and values of the positions it has seen, the decoder activations at the first CCA layer are
kept for the encoder, and a chunk's neighbours are encoded once, when the token completing the
chunk arrives (the neighbours can only be retrieved then). Positions restart at 0 with `reset`,
which is what a caller sliding a window over a long text does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from retro_ops.model.layers import rotary_tables
from retro_ops.model.matching import MAX_MATCH, bigram_agreement, histories
from retro_ops.model.retro import Retro


class IncrementalDecoder:
    """Feed tokens one at a time; `step` returns the logits predicting the next token."""

    def __init__(self, model: Retro):
        self.model, self.config = model.eval(), model.config
        self.cca_layers = model.config.cca_layers() if model.encoder is not None else ()
        c = self.config
        self.device = next(model.parameters()).device
        self.rope = rotary_tables(c.seq_len, c.d_model // c.n_head, self.device)
        self.cca_rope: dict[tuple[int, int], tuple] = {}  # (k, r) -> CCA rotary tables
        self.reset()

    def reset(self) -> None:
        self.position = 0
        self.caches = [([], []) for _ in self.model.transformer.h]  # per layer: keys, values
        self.hidden: list[Tensor] = []  # (1, 1, d) at the first CCA layer, for the encoder
        self.tokens: list[int] = []  # fed so far: the chunk's own text and the match history
        # chunk -> (encoded, mask, tokens, agreement or None)
        self.encoded: dict[int, tuple[Tensor, Tensor, Tensor, Tensor | None]] = {}

    @torch.inference_mode()
    def step(self, token: int, neighbours: Tensor | None = None) -> Tensor:
        """token: the id at the next position. neighbours (k, 2m): those of the chunk this token
        completes (None: no retrieval for it; a completed chunk without them gets no CCA).
        -> log-probabilities (vocab,) of the token after it."""
        c, m, p = self.config, self.config.chunk_size, self.position
        if p >= c.seq_len:
            raise ValueError(f"position {p} is past seq_len {c.seq_len}: reset() and re-feed a window")
        completes = (p + 1) % m == 0
        if neighbours is not None and not completes:
            raise ValueError(f"token at position {p} completes no chunk: it takes no neighbours")
        self.tokens.append(int(token))
        x = self.model.transformer.wte(torch.tensor([[token]], device=self.device))  # (1, 1, d)
        rope = (self.rope[0][p:p + 1], self.rope[1][p:p + 1])
        for i, block in enumerate(self.model.transformer.h):
            x = x + block.attn.step(block.ln_1(x), rope, self.caches[i])
            if i in self.cca_layers:
                if i == self.cca_layers[0]:
                    self.hidden.append(x)
                    if completes and neighbours is not None:
                        self._encode(p // m, neighbours.to(self.device))
                x = x + self._cross_attend(block.cca, x, p)
            x = block.feed_forward(x)
        self.position += 1
        h = self.model.transformer.ln_f(x)  # (1, 1, d)
        logp = torch.log_softmax(self.model.lm_head(h), dim=-1)
        if self.model.copy is not None and p >= m - 1 and (p - m + 1) // m in self.encoded:
            encoded, valid, tokens, agreement = self.encoded[(p - m + 1) // m]
            history = None
            if agreement is not None:  # the full pass's history at this position
                recent = torch.tensor([self.tokens[-MAX_MATCH:]], device=self.device)
                history = histories(recent)[:, -1:]  # (1, 1, MAX_MATCH)
            logp = self.model.copy.mix(logp, h, encoded[0], tokens[0], valid[0], history,
                                       None if agreement is None else agreement[0])
        return logp[0, 0]

    def _encode(self, chunk: int, neighbours: Tensor) -> None:
        m, model = self.config.chunk_size, self.model
        hidden = torch.cat(self.hidden[chunk * m:(chunk + 1) * m], dim=1)  # (1, m, d): H_u
        tokens = neighbours[None, None]  # (1, 1, k, r)
        valid = tokens != self.config.pad_token_id
        agreement = None
        if self.config.match_gate:
            own = torch.tensor(self.tokens[chunk * m:(chunk + 1) * m], device=self.device)
            agreement = bigram_agreement(own[None, None], tokens, valid, self.config.pad_token_id)
        self.encoded[chunk] = (model.encoder(model.transformer.wte(tokens), hidden, valid), valid,
                               tokens, agreement)

    def _cross_attend(self, cca, x: Tensor, p: int) -> Tensor:
        """The CCA branch for the token at p: it reads the neighbours of chunk (p - m + 1) // m."""
        m = self.config.chunk_size
        if p < m - 1 or (p - m + 1) // m not in self.encoded:
            return torch.zeros_like(x)
        chunk, i = divmod(p - m + 1, m)
        encoded, valid, _, agreement = self.encoded[chunk]
        rope = None
        if cca.positions:
            shape = tuple(encoded.shape[2:4])  # (k, r)
            if shape not in self.cca_rope:
                self.cca_rope[shape] = cca.rope_tables(*shape, self.device)
            rope = self.cca_rope[shape]
        return cca.attend_one(x, encoded, valid, i, rope, agreement)
