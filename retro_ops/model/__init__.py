"""Model: the RETRO network (or its no-retrieval baseline), its config and cached decoding.

Plain torch: takes token ids and neighbour token ids, gives logits. Imports no other stage.
"""

from retro_ops.model.config import RetroConfig
from retro_ops.model.retro import ChunkedCrossAttention, NeighbourEncoder, Retro

__all__ = ["ChunkedCrossAttention", "NeighbourEncoder", "Retro", "RetroConfig"]
