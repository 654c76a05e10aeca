"""`retro-ops audit sql`: ad-hoc questions over the same views the audits use, read-only.

Two locks, so one slip is not enough: every statement is parsed by DuckDB first and only a
single SELECT runs (DELETE, DROP, ATTACH, COPY, INSTALL, SET... are refused by their statement
type, before anything executes); and the connection it runs on holds only in-memory Arrow
views, with external access off and its configuration locked, so even a SELECT cannot read
or write a file (`read_csv`, `COPY ... TO`) or load an extension.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from retro_ops.errors import AuditQueryError, ReadOnlyQueryError
from retro_ops.lineage.views import AuditDB

ALLOWED = {duckdb.StatementType.SELECT}


def check_read_only(sql: str) -> str:
    """The one SELECT statement in `sql`, or ReadOnlyQueryError naming what was refused."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ReadOnlyQueryError(f"audit sql: cannot parse {sql[:80]!r}: {exc}") from exc
    if len(statements) != 1:
        raise ReadOnlyQueryError(f"audit sql: exactly one statement, got {len(statements)} in {sql[:80]!r}")
    statement = statements[0]
    if statement.type not in ALLOWED:
        kind = statement.type.name
        raise ReadOnlyQueryError(f"audit sql: {kind} statements are refused (read-only; only "
                                 f"SELECT runs): {sql[:80]!r}")
    return statement.query


def run_sql(db: AuditDB, sql: str) -> pa.Table:
    """Run one read-only SELECT over every catalog and LanceDB view."""
    query = check_read_only(sql)
    db.register_all()
    db.seal()
    try:
        return db.arrow(query)
    except duckdb.Error as exc:
        raise AuditQueryError(f"audit sql: {exc}") from exc
