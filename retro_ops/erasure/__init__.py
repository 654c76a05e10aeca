"""Erasure: purge documents' text from every store under the home and rebuild what held it.

A package of its own, right after `workspace` in the layers: a purge needs the retrieval stage
(rebuild set versions and indices) and one handle on a home's stores (`Workspace`), while
`governance`, below `retrieval`, can only do the LanceDB deletions (`governance.purge`), and
`lineage`, above, reads what a purge recorded to say which models it left irreproducible.
"""
