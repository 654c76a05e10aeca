"""Training: chunks + a retrieval set's neighbours -> RETRO, baseline and RETROfit checkpoints.

Takes the feature store's chunks and a `Retriever` (from `retrieval`), gives safetensors
checkpoints registered in the catalog and in MLflow (with every input version as lineage).
"""
