"""The Postgres at RETRO_OPS_TEST_PG_URL for tests: CI must reach it, elsewhere a test may skip."""

from __future__ import annotations

import os

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
