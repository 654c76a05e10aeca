"""Governance: score chunk texts (toxicity, blocklist, PII) and turn policies into exclusions.

Sits above `features` (it reads chunks and writes the `chunk_scores` feature set) and below
`retrieval`: the retriever's query-time filter reads exclusions from `catalog`, never from here.
"""
