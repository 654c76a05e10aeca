"""The generation log: every served answer kept as a feature set, with its provenance."""
