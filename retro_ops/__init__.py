"""retro-ops: datasets, features, indices and RETRO models managed together, with lineage.

The library is plain Python (no Dagster import): each piece is usable and testable alone.
The Dagster layer lives in the top-level `assets` package and only wires these pieces.
"""

__version__ = "0.1.0"
