"""The `retro-ops` command line: the top layer, above the library and the Dagster assets.

It launches materializations through `assets/` and answers what Dagster does not (retrieval,
generation, serving, evaluation). Library modules never import it.
"""
