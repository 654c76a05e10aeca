"""Serving: a registered model + a retrieval set (swappable at run time) -> generated text.

Takes checkpoints and retrievers, gives the HTTP app with hot swap, the generator, and the
MLflow pyfunc's run-time half.
"""
