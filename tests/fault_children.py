"""What fault-injection tests run in a child process that they then SIGKILL: kept free of heavy
imports (no LanceDB, FAISS or transformers) so a child starts in the time torch takes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from retro_ops.model import RetroConfig
from retro_ops.training.data import Sequences
from retro_ops.training.neighbours import Neighbours
from retro_ops.training.trainer import TrainConfig, TrainingData, seeded_model, train
from helpers import TINY

CONFIG = RetroConfig.from_dict({**TINY.to_dict(), "vocab_size": 97})
SPEC = TrainConfig(steps=10, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=4)


def synthetic_data(seed: int = 0, n_sequences: int = 12) -> TrainingData:
    """Seeded token sequences and neighbours in the shapes training reads (2 chunks of 64)."""
    rng = np.random.default_rng(seed)
    m, k, chunks = CONFIG.chunk_size, CONFIG.n_neighbours, CONFIG.seq_len // CONFIG.chunk_size
    tokens = rng.integers(1, CONFIG.vocab_size, (n_sequences, CONFIG.seq_len + 1))
    rows = n_sequences * chunks
    sequences = Sequences(tokens[:, :-1].copy(), tokens[:, 1:].copy(),
                          np.arange(rows).reshape(n_sequences, chunks), np.full(n_sequences, 512))
    neighbours = Neighbours(np.arange(rows), rng.integers(0, rows, (rows, k)),
                            np.ones((rows, k), np.float32),
                            rng.integers(1, CONFIG.vocab_size, (rows, k, 2 * m)),
                            np.ones((rows, k), bool))
    return TrainingData(sequences, neighbours)


def train_until_killed(folder: str, step: str, point: str) -> None:
    """Train SPEC from seed 0 into `folder`; SIGKILL before `step` ("mid_step") or inside the
    first checkpoint save after it, at `point`."""
    train(seeded_model(CONFIG, 0), synthetic_data(), Path(folder), SPEC, crash_at_step=int(step),
          crash_in_save=None if point == "mid_step" else point, crash_mode="kill")


if __name__ == "__main__":
    train_until_killed(*sys.argv[1:])
