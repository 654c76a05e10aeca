"""RETRO models: the config, the model (RETRO or its no-retrieval baseline) and its parts."""

from retro_ops.model.config import RetroConfig
from retro_ops.model.retro import ChunkedCrossAttention, NeighbourEncoder, Retro

__all__ = ["ChunkedCrossAttention", "NeighbourEncoder", "Retro", "RetroConfig"]
