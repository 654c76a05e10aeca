"""Create the Postgres databases a deployment names, before anything opens them.

The catalog migrates itself, dagster-postgres and MLflow make their own tables, but none of them
creates the database it is pointed at. `create_databases` does that once for every store the
settings put on Postgres (the prod profile's three), so `retro-ops --profile prod db init` is the
whole set-up. Only a role allowed to CREATE DATABASE can run it; an operator may create the
databases by hand instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from retro_ops.errors import SettingsError
from retro_ops.settings import DB_NAME_PATTERN, Settings


@dataclass(frozen=True)
class Database:
    store: str  # catalog | dagster | mlflow
    url: str  # with the password, for connecting; never print it (use `shown`)

    @property
    def name(self) -> str:
        return sa.make_url(self.url).database or ""

    @property
    def shown(self) -> str:
        return sa.make_url(self.url).render_as_string(hide_password=True)


def postgres_databases(settings: Settings) -> list[Database]:
    """The stores of these settings that live on Postgres, in a fixed order."""
    urls = {"catalog": settings.catalog_url, "dagster": settings.dagster_storage_url,
            "mlflow": settings.mlflow_uri}
    return [Database(store, url) for store, url in urls.items()
            if url and sa.make_url(url).get_backend_name() == "postgresql"]


def _server(url: str) -> sa.Engine:
    """The server's maintenance database, in autocommit (CREATE DATABASE refuses a transaction)."""
    server = sa.make_url(url).set(drivername="postgresql+psycopg", database="postgres")
    return sa.create_engine(server, isolation_level="AUTOCOMMIT")


def create_databases(settings: Settings) -> list[Database]:
    """Create every Postgres database of these settings that does not exist yet; returns those
    created. A second run (or a concurrent one that loses the race) creates nothing."""
    created = []
    for database in postgres_databases(settings):
        if not DB_NAME_PATTERN.match(database.name):
            raise SettingsError(f"{database.store} database name {database.name!r} must be letters, "
                                "digits and _")
        engine = _server(database.url)
        try:
            with engine.connect() as connection:
                exists = connection.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                            {"n": database.name}).first()
                if exists is None:
                    try:
                        connection.execute(sa.text(f'CREATE DATABASE "{database.name}"'))
                        created.append(database)
                    except sa.exc.ProgrammingError as exc:  # created by another process meanwhile
                        if "already exists" not in str(exc):
                            raise
        finally:
            engine.dispose()
    return created
