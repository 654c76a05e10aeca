"""Retrieval: chunk embeddings -> retrieval sets -> FAISS indices -> neighbours of a query.

Takes the feature store's chunks and embeddings and gives versioned retrieval sets, their
published indices (built, checked for recall, swapped in atomically) and the `Retriever`.
"""
