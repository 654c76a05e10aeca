"""The index route: a retrieval-set version's vectors -> a published, trusted FAISS index.

`build` chooses the structure and builds it (`disk_refine`: the exact re-rank read from disk),
`incremental` reuses the published index when the set only lost chunks, `quality` measures
recall and latency, `tuning` deepens the search until recall passes the gate, `shards` trains
once, fills per shard and merges, `publish` writes builds atomically and loads only trusted
ones, and `route` ties them together: every route, single-process or sharded, ends in its
`publish_build`. Serving reads what this publishes (`retrieval.retriever`), never the reverse.
"""
