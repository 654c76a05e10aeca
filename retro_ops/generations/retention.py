"""Retention: generations older than a cutoff are pruned, and their text leaves the disk.

"Prune", not "purge": a purge (`retro_ops.erasure`) erases one document's text from every store;
pruning keeps the generation log to a retention age.

A LanceDB delete only marks rows deleted; their bytes stay in the data files (and in every old
version) until compaction rewrites the fragment and cleanup removes the old files. Compaction
through LanceDB's Python API rewrites a fragment only when more than 10% of it is deleted
(measured: 1 old row among 50 kept its text after delete + optimize). So pruning rewrites the
rows it keeps as a new version and then removes every older version's files: the deleted text
is provably gone (a test greps every file under the table's folder). It costs a rewrite of the
kept rows, which is why it runs at writer start and on command, not per request. It holds the
table's writer lock throughout, so no writer of this home is mid-commit when files are removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from lancedb.expr import col, lit

from retro_ops.errors import GenerationLogError
from retro_ops.features.store import FeatureStore
from retro_ops.generations.records import GENERATIONS


@dataclass(frozen=True)
class PruneReport:
    cutoff: datetime
    deleted: int
    kept: int
    version: int  # the table's version after pruning (0: no table)
    traces_deleted: int = 0


def cutoff_days(days: float, now: datetime | None = None) -> datetime:
    if days <= 0:
        raise GenerationLogError(f"a retention period must be > 0 days, got {days}")
    return (now or datetime.now(timezone.utc)) - timedelta(days=days)


def prune_older_than(store: FeatureStore, cutoff: datetime, *, settings=None) -> PruneReport:
    """Delete generations created before `cutoff` (UTC) and remove them from storage; with
    `settings`, also delete the home's MLflow traces of generations older than it."""
    if cutoff.tzinfo is None:
        raise GenerationLogError(f"cutoff {cutoff} has no time zone: give a UTC time")
    traces = 0
    if settings is not None:
        from retro_ops.generations.traces import delete_traces_before

        traces = delete_traces_before(settings, cutoff)
    if GENERATIONS not in set(store.db.list_tables().tables):
        return PruneReport(cutoff, 0, 0, 0, traces)
    old = (col("created_at") < lit(cutoff.astimezone(timezone.utc).replace(tzinfo=None))).to_sql()
    with store.lock(GENERATIONS):
        table = store.db.open_table(GENERATIONS)
        doomed = table.count_rows(old)
        if doomed == 0:
            return PruneReport(cutoff, 0, table.count_rows(), table.version, traces)
        keep = (col("created_at") >= lit(cutoff.astimezone(timezone.utc).replace(tzinfo=None))).to_sql()
        kept = table.search().where(keep).limit(None).to_arrow().cast(table.schema)
        table.add(kept, mode="overwrite")  # one commit: the kept rows in fresh files
    store.erase_old_versions(GENERATIONS)  # the older versions' files held the deleted text
    return PruneReport(cutoff, doomed, kept.num_rows, store.db.open_table(GENERATIONS).version, traces)
