"""Erasure: purge documents' text from every store under the home and rebuild what held it.

A package of its own, right after `workspace` in the layers: a purge needs the retrieval stage
(rebuild set versions and indices) and one handle on a home's stores (`Workspace`). `store` is
the feature-store half (snapshot a document, delete its LanceDB rows), `purge` the whole order of
steps; the catalog's half (purge records, VACUUM) is `catalog.purges`. `lineage`, above, reads
what a purge recorded to say which models it left irreproducible.
"""
