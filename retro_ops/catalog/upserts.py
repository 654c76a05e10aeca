"""Inserts that keep the row another process stored first.

A check-then-insert (`select`, then `add` when absent) races across processes: both see nothing,
both insert, and the second fails on the unique key or, where there is none, stores a twin.
`insert ... on conflict do nothing` in the dialect at hand (Postgres, SQLite) lets the database
decide: one row is stored, the loser's statement does nothing and it reads the winner's row.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from retro_ops.catalog import tables as m
from retro_ops.errors import CatalogError

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def insert_or_skip(session: Session, table: type[m.Base]):
    """`insert into table ... on conflict do nothing` for the session's database."""
    dialect = session.get_bind().dialect.name
    if dialect not in _INSERTS:
        raise CatalogError(f"catalog database {dialect!r} is not supported (use Postgres or SQLite)")
    return _INSERTS[dialect](table).on_conflict_do_nothing()


def insert_missing(session: Session, table: type[m.Base], rows: Sequence[dict], *, batch: int = 1000) -> None:
    """Insert `rows` (column -> value dicts), skipping any whose unique key is already stored,
    by this process or another one. Rows go in the order given: callers sort them by key, so two
    writers lock the same keys in the same order and never deadlock."""
    for start in range(0, len(rows), batch):
        session.execute(insert_or_skip(session, table), list(rows[start:start + batch]))
