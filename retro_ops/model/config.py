"""The one config of a RETRO model (and of its no-retrieval baseline), carried by every checkpoint.

Names follow Borgeaud et al. 2021: n = seq_len, m = chunk_size, k = n_neighbours, and a
neighbour is a retrieved chunk plus its continuation, 2m tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

BERT_WORDPIECE_VOCAB = 30522  # the frozen BERT's tokenizer, which the chunker uses
MAX_MATCH = 4  # exact matches are counted up to this many tokens (`matching`); longer add little


@dataclass(frozen=True)
class RetroConfig:
    """Every default is explained here; `validate` runs on construction.

    vocab_size: the BERT WordPiece vocabulary, so chunk token ids feed the model unchanged.
    seq_len: n, the training context; a multiple of chunk_size so it splits into n/m chunks.
    chunk_size: m = 64 in the paper and in the project's chunker.
    n_neighbours: k neighbours retrieved per chunk (2 in the paper's training runs).
    d_model, n_layer, n_head, d_ff: the decoder (GPT-2-small-like defaults).
    enc_*: the neighbour encoder; the paper uses 2 layers whatever the decoder's size.
        enc_d_model may differ from d_model: projections bridge the two widths.
    dropout: on attention weights and on every residual branch (0 = off, the default for
        small-data runs).
    cca_start_layer: 1-based layer of the first chunked cross-attention; CCA then runs in every
        third layer. None picks the Megatron rule (6 if n_layer <= 15 else 9), lowered to
        n_layer so a shallow model still gets one CCA layer.
    retrieval: False builds the baseline, the very same decoder with no encoder and no CCA;
        its parameter names are a subset of the RETRO model's, so one loads into the other.
    pad_token_id: [PAD] of BERT's vocabulary; padded neighbour tokens are never attended to.
    cca_positions: relative (rotary) positions in the cross-attentions between a chunk and its
        neighbours, as the paper's CCA has. Without them a model given the very text it must
        predict as a neighbour gained 0.008 bpb in 600 steps (README, "Learning to retrieve");
        checkpoints written before this field existed load with False.
    copy_head: a pointer over neighbour tokens beside the softmax (`retro.NeighbourCopy`): the
        next token is a gated mix of the vocabulary distribution and a copy of the neighbour
        token that follows the one matching the current position. CCA alone gained a few
        thousandths of a bit per byte where most of a chunk sat in its neighbour (issue #24);
        the pointer makes copying a single attention head. Older checkpoints load with False.
    match_gate: exact token evidence (`matching`) weighs what is read: the copy head's scores and
        gate see match lengths and the chunk's bigram agreement with its neighbours, and each
        CCA branch is scaled by a learned function of that agreement. With learned gates alone,
        shuffled or unrelated neighbours cost 0.10-0.18 bpb against none (issue #24). Older
        checkpoints load with False.
    evidence_gain: the evidence weights are scalars multiplied by this gain. AdamW moves a
        weight by about lr per step whatever its gradient, so at lr 2e-3 a plain scalar travels
        at most 0.6 in 300 steps; a gate needs several units of logit to shut.
    copy_gate_init: the copy gate's starting bias (a logit): g = 0.047 at -3. Where the gate
        may open and nothing is copied, every token loses -log(1 - g); from -6 an unrelated set
        cost less (+0.0057 against +0.0097 bpb on validation) until copy_min_match shut the gate
        where nothing matches, after which -3 and -6 were alike (docs/results/retrieval.md).
        Only initialises: checkpoints load their own bias.
    copy_min_match: the copy gate is shut exactly (g = 0) at a position whose longest exact match
        with a neighbour (`matching.match_lengths`: the current token, then the ones before it)
        is shorter than this. A copy continues a match, and a learned gate that stays slightly
        open elsewhere leaks -log(1 - g) into every token there: the unrelated-set control's
        cost (issue #24). 2 (a bigram) took an unrelated set from +0.0054 (1) to +0.0033-0.0043
        bpb against none on validation, for 0.07 bpb of the reading chunks' gain of 0.82. 0
        never shuts it (checkpoints before this field). Without match_gate it has no effect.
    """

    vocab_size: int = BERT_WORDPIECE_VOCAB
    seq_len: int = 2048
    chunk_size: int = 64
    n_neighbours: int = 2
    d_model: int = 768
    n_layer: int = 12
    n_head: int = 12
    d_ff: int = 3072
    enc_d_model: int = 768
    enc_n_layer: int = 2
    enc_n_head: int = 12
    enc_d_ff: int = 3072
    dropout: float = 0.0
    cca_start_layer: int | None = None
    retrieval: bool = True
    pad_token_id: int = 0
    cca_positions: bool = True
    copy_head: bool = True
    match_gate: bool = True
    evidence_gain: float = 16.0
    copy_gate_init: float = -3.0
    copy_min_match: int = 2

    def __post_init__(self) -> None:
        self.validate()

    @property
    def neighbour_len(self) -> int:
        """2m: a retrieved chunk followed by its continuation."""
        return 2 * self.chunk_size

    @property
    def n_chunks(self) -> int:
        return self.seq_len // self.chunk_size

    @property
    def first_cca_layer(self) -> int:
        """1-based, after applying the Megatron default when cca_start_layer is None."""
        if self.cca_start_layer is not None:
            return self.cca_start_layer
        return min(6 if self.n_layer <= 15 else 9, self.n_layer)

    def cca_layers(self) -> tuple[int, ...]:
        """0-based indices of the decoder layers with chunked cross-attention (none if baseline)."""
        if not self.retrieval:
            return ()
        return tuple(range(self.first_cca_layer - 1, self.n_layer, 3))

    def validate(self) -> None:
        positive = ("vocab_size", "seq_len", "chunk_size", "n_neighbours", "d_model", "n_layer",
                    "n_head", "d_ff", "enc_d_model", "enc_n_layer", "enc_n_head", "enc_d_ff")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.seq_len % self.chunk_size:
            raise ValueError(f"seq_len ({self.seq_len}) must be a multiple of chunk_size "
                             f"({self.chunk_size})")
        for width, heads in (("d_model", "n_head"), ("enc_d_model", "enc_n_head")):
            d, h = getattr(self, width), getattr(self, heads)
            if d % h:
                raise ValueError(f"{width} ({d}) must be divisible by {heads} ({h})")
            if (d // h) % 2:  # rotary embeddings rotate pairs of channels
                raise ValueError(f"{width} / {heads} = {d // h} must be even for rotary "
                                 f"position embeddings")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.cca_start_layer is not None and not 1 <= self.cca_start_layer <= self.n_layer:
            raise ValueError(f"cca_start_layer ({self.cca_start_layer}) must be between 1 and "
                             f"n_layer ({self.n_layer}); it is 1-based")
        for flag in ("cca_positions", "copy_head", "match_gate", "retrieval"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be a bool, got {getattr(self, flag)!r}")
        if not isinstance(self.copy_min_match, int) or isinstance(self.copy_min_match, bool) \
                or not 0 <= self.copy_min_match <= MAX_MATCH:
            raise ValueError(f"copy_min_match must be an integer in [0, {MAX_MATCH}], got {self.copy_min_match!r}")
        if not self.evidence_gain > 0:
            raise ValueError(f"evidence_gain must be positive, got {self.evidence_gain!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id ({self.pad_token_id}) must be a token id below "
                             f"vocab_size ({self.vocab_size})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields, as stored in checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetroConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RetroConfig fields: {', '.join(unknown)}")
        older = {"cca_positions": False, "copy_head": False, "match_gate": False,  # before these fields
                 "copy_min_match": 0}
        return cls(**{**older, **data})

    @classmethod
    def tiny(cls, **overrides: Any) -> RetroConfig:
        """For tests: runs a forward pass in milliseconds. A small vocabulary keeps logits cheap;
        the encoder is narrower than the decoder so the width-bridging projections are exercised,
        and CCA sits in the first and the last layer (0 and 3)."""
        base = cls(vocab_size=512, seq_len=128, chunk_size=16, n_neighbours=2, d_model=64,
                   n_layer=4, n_head=4, d_ff=256, enc_d_model=32, enc_n_layer=2, enc_n_head=2,
                   enc_d_ff=128, cca_start_layer=1)
        return replace(base, **overrides)

    @classmethod
    def demo(cls, **overrides: Any) -> RetroConfig:
        """Trains in minutes on 2 CPU cores with the real BERT vocabulary and m = 64; CCA in
        layers 3 and 6 (the Megatron default would leave only the last layer)."""
        base = cls(seq_len=512, chunk_size=64, n_neighbours=2, d_model=256, n_layer=6,
                   n_head=4, d_ff=1024, enc_d_model=256, enc_n_layer=2, enc_n_head=4,
                   enc_d_ff=1024, cca_start_layer=3)
        return replace(base, **overrides)
