"""Evaluation: trained models + held-out text + a retrieval set -> bits per byte.

Takes checkpoints (from `training`) and scores them with no retrieval, the training set or a
swapped-in set, recording each result in the catalog and MLflow.
"""
