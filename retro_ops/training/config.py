"""How a model is trained, how its documents are split and how its neighbours are fetched, apart
from the trainer so that the CLI and the Dagster resource read their defaults here without torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

GroupBy = Literal["document", "stem"]


@dataclass(frozen=True)
class TrainConfig:
    """steps/batch_size: optimisation length; lr with linear warmup then cosine decay to lr/10;
    checkpoint_every: how much work a crash can lose; seed: data order and initialisation.
    self_neighbours: share of training chunks whose last neighbour is a copy of the chunk and its
    continuation (`neighbours.with_self_neighbours`), applied when the training data are built
    (`run.training_data`), never in evaluation: it teaches RETRO to read its neighbours, which a
    demo-sized retrieval set rarely gives it a reason to (README, "Learning to retrieve").
    self_neighbour_shift / self_neighbour_noise: move each such copy by up to this many tokens and
    drop or replace this share of its tokens, so it must be found by content, not by position.
    The defaults (a quarter, 32 tokens, 30%, with 40% distractors) were chosen on the validation
    documents among the variants of docs/results/retrieval.md: with the copy head, half the chunks
    given copies taught the model to trust any neighbour (an unrelated set cost 0.36 bpb against
    none on reading chunks; 0.11 with these defaults, for 0.05 bpb less gain).
    no_neighbour_share: share of training chunks whose neighbours RETRO never sees (all withheld,
    self-neighbour included), so its decoder also stands alone: a RETRO served without retrieval
    (or with none found) should be no worse than its baseline (issue #24).
    distractor_share: share of training chunks given another chunk's neighbours instead of their
    own (`neighbours.with_distractors`), so the model learns to ignore neighbours that do not
    match: without them it trusts any neighbour, and an unrelated set costs more than none.
    standalone_weight: RETRO trained from scratch adds this times the loss of the same batch
    without neighbours (one more decoder pass per step), so its decoder also stands alone: without
    it RETRO served without retrieval was 0.29 bpb worse than its baseline, with 1.0 0.04-0.05,
    with 3.0 equal in session 10 and 0.01-0.02 worse in session 12, with 6.0 -0.007, with 10.0
    +0.014 (validation, seed 0: the measure moves by about 0.01 from seed to seed;
    docs/results/retrieval.md). A RETROfit's decoder is frozen and is
    not affected. The pass shares the decoder layers below the first CCA with the main one
    (`Retro.losses`); on a part of the batch only it was cheaper but did not stand alone (+0.07
    bpb with half the rows, +0.15 with a quarter, whatever the weight: docs/results/retrieval.md)."""

    steps: int = 300
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int | None = None  # None: a tenth of the steps (`warmup`)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    checkpoint_every: int = 50
    seed: int = 0
    self_neighbours: float = 0.25
    self_neighbour_shift: int = 32  # half a chunk: the copy must be found by content
    self_neighbour_noise: float = 0.3
    no_neighbour_share: float = 0.0
    distractor_share: float = 0.4
    standalone_weight: float = 6.0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.warmup_steps is not None and self.warmup_steps < 1:
            raise ValueError(f"warmup_steps must be at least 1 (or None), got {self.warmup_steps!r}")
        if not 0.0 <= self.distractor_share <= 1.0:
            raise ValueError(f"distractor_share is a share of chunks in [0, 1], got {self.distractor_share!r}")
        if not 0.0 <= self.no_neighbour_share < 1.0:
            raise ValueError(f"no_neighbour_share is a share of chunks in [0, 1), got "
                             f"{self.no_neighbour_share!r}")
        if not 0.0 <= self.standalone_weight:
            raise ValueError(f"standalone_weight is a loss weight >= 0, got {self.standalone_weight!r}")
        if not 0.0 <= self.self_neighbours <= 1.0:
            raise ValueError(f"self_neighbours is a share of chunks in [0, 1], got {self.self_neighbours!r}")
        if self.self_neighbour_shift < 0:
            raise ValueError(f"self_neighbour_shift is a token count >= 0, got {self.self_neighbour_shift!r}")
        if not 0.0 <= self.self_neighbour_noise < 1.0:
            raise ValueError(f"self_neighbour_noise is a share of tokens in [0, 1), got "
                             f"{self.self_neighbour_noise!r}")

    @property
    def warmup(self) -> int:
        """Warmup steps in force: the field, or a tenth of the run (one step at least)."""
        return self.warmup_steps if self.warmup_steps is not None else max(1, self.steps // 10)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class NeighbourConfig:
    """k: neighbours per chunk (the paper trains with 2); depth_factor: query this many times k,
    then drop same-document and forbidden hits; pad_id: [PAD] where fewer than k are found."""

    k: int = 2
    depth_factor: int = 4
    pad_id: int = 0


@dataclass(frozen=True)
class SplitConfig:
    """heldout_fraction of document groups (at least min_heldout) are held out; of those,
    validation_share go to validation (every tuning choice and early stop reads only these) and
    the rest to test (what is reported). group_by: "document" (each its own group) or "stem"
    (the file stem of its source, so `kjv_nt/40_Matthew_05.txt` and `asv_nt/40_Matthew_05.txt`
    are one group): a held-out group is held out whole, and no document of it, in any corpus,
    is ever a training neighbour (issue #24: the ASV parallel of a held-out KJV chapter passed
    the near-duplicate filter). `legacy()` is the split of models recorded before the last two
    fields existed (a tenth held out, no validation part, one group per document)."""

    heldout_fraction: float = 0.2  # half of it validation: the test part keeps a tenth
    min_heldout: int = 1
    seed: int = 0
    validation_share: float = 0.5
    group_by: GroupBy = "stem"

    @classmethod
    def legacy(cls, **overrides) -> "SplitConfig":
        return cls(**{"heldout_fraction": 0.1, "validation_share": 0.0, "group_by": "document", **overrides})

    def __post_init__(self) -> None:
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction is a share in (0, 1), got {self.heldout_fraction!r}")
        if not 0.0 <= self.validation_share < 1.0:
            raise ValueError(f"validation_share is a share in [0, 1), got {self.validation_share!r}")
        if self.group_by not in ("document", "stem"):
            raise ValueError(f"group_by is 'document' or 'stem', got {self.group_by!r}")
