"""What an embedder's output space is, without the embedder: its identity (`EmbeddingSpace`),
the precisions and the space-id suffix each adds. Torch-free, so the catalog, the index route and
processes that only record spaces need not import torch to name one."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Pooling = Literal["mean", "cls"]
Precision = Literal["fp32", "bf16", "int8"]
METHODS: dict[str, str] = {"fp32": "", "bf16": "bf16w", "int8": "int8ort"}  # space-id suffixes


@dataclass(frozen=True)
class EmbeddingSpace:
    """Identity of an embedder's output space; `space_id` keys its feature set."""

    space_id: str
    model_name: str
    model_path: str
    weights_digest: str
    pooling: Pooling
    normalize: bool
    dim: int
    max_tokens: int

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def precision(self) -> Precision:
        return precision_of(self.space_id)


def precision_of(space_id: str) -> Precision:
    """Read back from the id's suffix, so the catalog needs no new column for it."""
    suffix = space_id.rpartition("_")[2] if "_" in space_id else ""
    return next((p for p, m in METHODS.items() if m and m == suffix), "fp32")  # type: ignore[return-value]
