"""Corpora are dynamic partitions: `retro-ops corpus add` adds one, and each corpus
materializes (and can be re-run, backfilled or scaled out) on its own."""

import dagster as dg

CORPUS_PARTITIONS = "corpus"
corpus_partitions = dg.DynamicPartitionsDefinition(name=CORPUS_PARTITIONS)

RETRIEVAL_SET_PARTITIONS = "retrieval_set"
retrieval_set_partitions = dg.DynamicPartitionsDefinition(name=RETRIEVAL_SET_PARTITIONS)
