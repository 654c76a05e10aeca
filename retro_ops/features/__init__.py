"""Features: documents -> 64-token chunks -> frozen-BERT embeddings, stored in LanceDB.

Takes a corpus version's documents (from `corpus`) and gives the `chunks` table and one
embeddings table per embedding space, with checks that each is complete and well formed.
"""
