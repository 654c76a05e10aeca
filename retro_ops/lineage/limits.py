"""What one audit connection may use: memory, threads and time per statement (stdlib only, so
the CLI shows these defaults without importing DuckDB)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AuditLimits:
    """Bounds on the DuckDB connection the audits and `audit sql` run on; a statement past one
    fails with AuditLimitError naming it, and the connection stays usable.

    memory_limit_mib: DuckDB's memory limit (its own default is 80% of RAM: one `string_agg` of
        repeated text reached 3.3 GB). 2 GiB holds the audit views (ids and positions, never text
        or vectors) of tens of millions of chunks. Nothing spills to disk: the audit connection
        writes no file, so a query past the limit fails instead of filling a temp folder.
    threads: DuckDB's worker threads (its own default is one per core): 2 leaves the rest of a
        shared machine to training and serving, and is all a 2-core machine has.
    timeout_s: a statement still running after this many seconds is interrupted (DuckDB has no
        statement timeout of its own: a 10^10-row cross join ran 45 s on 2 cores). The audits'
        own queries take well under a second over a million chunks.
    """

    memory_limit_mib: int = 2048
    threads: int = 2
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.memory_limit_mib < 1 or self.threads < 1 or not self.timeout_s > 0:
            raise ValueError(f"invalid audit limits {self}: memory_limit_mib >= 1, threads >= 1 "
                             "and timeout_s > 0 are required")
