"""How a model is trained, apart from the trainer so that the CLI can show its defaults
without importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
    The defaults (half, 32 tokens, 30%) beat the earlier exact quarter in retrieval's gain over
    three seeds (README, "A demo where retrieval pays off")."""

    steps: int = 300
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    checkpoint_every: int = 50
    seed: int = 0
    self_neighbours: float = 0.5
    self_neighbour_shift: int = 32  # half a chunk (README, "A demo where retrieval pays off")
    self_neighbour_noise: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.self_neighbours <= 1.0:
            raise ValueError(f"self_neighbours is a share of chunks in [0, 1], got {self.self_neighbours!r}")
        if self.self_neighbour_shift < 0:
            raise ValueError(f"self_neighbour_shift is a token count >= 0, got {self.self_neighbour_shift!r}")
        if not 0.0 <= self.self_neighbour_noise < 1.0:
            raise ValueError(f"self_neighbour_noise is a share of tokens in [0, 1), got "
                             f"{self.self_neighbour_noise!r}")

    def as_dict(self) -> dict:
        return asdict(self)
