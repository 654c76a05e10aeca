"""Corpora are dynamic partitions: `retro-ops corpus add` adds one, and each corpus
materializes (and can be re-run, backfilled or scaled out) on its own."""

import dagster as dg

CORPUS_PARTITIONS = "corpus"
corpus_partitions = dg.DynamicPartitionsDefinition(name=CORPUS_PARTITIONS)

RETRIEVAL_SET_PARTITIONS = "retrieval_set"
retrieval_set_partitions = dg.DynamicPartitionsDefinition(name=RETRIEVAL_SET_PARTITIONS)

TRAINING_SPEC_PARTITIONS = "training_spec"
#: one partition per training spec (`assets/specs.py`): models of two specs stand side by side
training_spec_partitions = dg.DynamicPartitionsDefinition(name=TRAINING_SPEC_PARTITIONS)
