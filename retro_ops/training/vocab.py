"""The model's output vocabulary: the WordPiece ids that occur in the feature store.

The frozen BERT vocabulary has 30,522 entries, and at CPU scale its softmax is most of the
model's compute (a 30k x d projection per token). A model trained on a few corpora only ever
sees the ids occurring in them, so the vocabulary is trimmed to those ids (plus the special
tokens) at training time; any other id maps to [UNK]. The kept ids are saved with the checkpoint
and their digest is part of the model's lineage, so encoding is exactly reproducible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retro_ops.ids import sha256_hex

PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103  # bert-base-uncased special ids
VOCAB_FILE = "vocab.json"


@dataclass(frozen=True)
class Vocabulary:
    token_ids: np.ndarray  # (V,) sorted source-tokenizer ids; model id = position

    def __post_init__(self) -> None:
        ids = self.token_ids
        if ids[0] != PAD or UNK not in ids or np.any(np.diff(ids) <= 0):
            raise ValueError("a vocabulary is sorted, unique, starts with [PAD] and holds [UNK]")

    @classmethod
    def from_ids(cls, used: np.ndarray) -> "Vocabulary":
        return cls(np.unique(np.r_[np.asarray(used, dtype=np.int64), [PAD, UNK, CLS, SEP, MASK]]))

    @property
    def size(self) -> int:
        return len(self.token_ids)

    @property
    def digest(self) -> str:
        return sha256_hex(self.token_ids.astype(np.int64).tobytes())[:16]

    def encode(self, source_ids: np.ndarray) -> np.ndarray:
        """Source-tokenizer ids -> model ids (unknown ids -> [UNK])."""
        source_ids = np.asarray(source_ids, dtype=np.int64)
        position = np.clip(np.searchsorted(self.token_ids, source_ids), 0, self.size - 1)
        found = self.token_ids[position] == source_ids
        return np.where(found, position, int(np.searchsorted(self.token_ids, UNK)))

    def decode(self, model_ids: np.ndarray) -> np.ndarray:
        return self.token_ids[np.asarray(model_ids, dtype=np.int64)]

    def unknown_rate(self, source_ids: np.ndarray) -> float:
        ids = np.asarray(source_ids).ravel()
        ids = ids[ids != PAD]
        return float((~np.isin(ids, self.token_ids)).mean()) if len(ids) else 0.0

    def to_json(self) -> str:
        return json.dumps(self.token_ids.tolist())

    @classmethod
    def load(cls, folder: Path) -> "Vocabulary":
        return cls(np.asarray(json.loads((folder / VOCAB_FILE).read_text()), dtype=np.int64))
