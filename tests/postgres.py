"""The Postgres at RETRO_OPS_TEST_PG_URL for tests: CI must reach it, elsewhere a test may skip."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

PG_URL = os.environ.get("RETRO_OPS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def admin_engine(**kwargs) -> sa.Engine:
    engine = sa.create_engine(PG_URL, **kwargs)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        engine.dispose()
        if os.environ.get("CI") == "true":
            pytest.fail(f"Postgres unreachable at {PG_URL} under CI: {exc}")
        pytest.skip(f"Postgres unreachable at {PG_URL}")
    return engine


def throwaway_database(prefix: str) -> Iterator[str]:
    """A new database for a library that makes its own tables (Dagster, MLflow); yields its URL
    for psycopg2 (what dagster-postgres and MLflow use) and drops it afterwards."""
    admin = admin_engine(isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.make_url(PG_URL).set(drivername="postgresql+psycopg2", database=name).render_as_string(
        hide_password=False)
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def throwaway_schema(prefix: str) -> Iterator[str]:
    """A new, empty schema in the test database; yields its name and drops it afterwards."""
    admin = admin_engine()
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield schema
    with admin.begin() as connection:
        connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()
