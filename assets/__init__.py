"""The Dagster code location of retro-ops: assets, checks, resources, partitions.

Thin by design: each asset calls one library function from `retro_ops` and attaches the
metadata the UI shows. `assets.definitions.defs` is what `workspace.yaml` loads.
"""
