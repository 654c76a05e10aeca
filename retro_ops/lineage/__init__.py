"""Lineage audits over everything recorded below: backward from a model to the exact documents
and neighbours it read, forward from a document or chunk to every model, index and deployment,
diffs, verification of recorded digests, and read-only ad-hoc SQL. DuckDB is the engine: the
catalog's tables and LanceDB's tables are registered as in-memory Arrow views of one connection.
"""
