"""Where retro-ops keeps its state: one home folder, every location overridable.

All paths hang off `RETRO_OPS_HOME` (default `./.retro_ops`) so a demo never writes outside it;
each backend URL can be pointed elsewhere (e.g. the catalog at Postgres) by environment.
One setting puts a whole deployment on Postgres: `RETRO_OPS_PROFILE=prod` (or `retro-ops
--profile prod`) with `RETRO_OPS_PG_URL` naming a server (and a database-name prefix) derives the
catalog, Dagster storage and MLflow databases from it, so the three can never drift apart.
Nothing absolute is derived once and kept: the URLs below are computed from the home each time a
process starts, and the catalog records paths relative to the home (`stored_path`), so a home
copied to another folder or machine reads its own files, never the original's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from retro_ops.errors import SettingsError

HOME_ENV = "RETRO_OPS_HOME"  # the home every store hangs off (default ./.retro_ops)
CATALOG_URL_ENV = "RETRO_OPS_CATALOG_URL"  # the catalog database (SQLAlchemy URL; default SQLite under the home)
LANCEDB_URI_ENV = "RETRO_OPS_LANCEDB_URI"  # the LanceDB feature store (default <home>/lancedb)
EMBEDDER_PATH_ENV = "RETRO_OPS_EMBEDDER_PATH"  # a local Hugging Face model folder (default: the packaged MiniLM)
EMBEDDER_PRECISION_ENV = "RETRO_OPS_EMBEDDER_PRECISION"  # fp32 | bf16 | int8, each its own embedding space
EMBEDDER_STREAMS_ENV = "RETRO_OPS_EMBEDDER_STREAMS"  # batches embedded at once, one torch thread each (default 1)
MLFLOW_URI_ENV = "RETRO_OPS_MLFLOW_URI"  # MLflow tracking + registry (default SQLite under <home>/mlflow)
#: Postgres for Dagster's runs, event log and schedules (default SQLite under <home>/dagster);
#: dagster.yaml names this variable, never the URL
DAGSTER_STORAGE_ENV = "RETRO_OPS_DAGSTER_STORAGE_URL"
PROFILE_ENV = "RETRO_OPS_PROFILE"  # local | prod (prod: the databases derive from RETRO_OPS_PG_URL)
PG_URL_ENV = "RETRO_OPS_PG_URL"  # the prod profile's Postgres server; its database part is the name prefix
ARTIFACTS_DIR_ENV = "RETRO_OPS_ARTIFACTS_DIR"  # MLflow artifacts (default <home>/mlflow/artifacts)
DEFAULT_HOME = ".retro_ops"
PROFILES = ("local", "prod")
DEFAULT_PG_PREFIX = "retro_ops"
DB_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,50}$")


def profile_urls(pg_url: str) -> dict[str, str]:
    """The prod profile's databases on the server `pg_url` names: `<db>_catalog` (psycopg 3, the
    catalog's driver), `<db>_dagster` and `<db>_mlflow` (psycopg2, what dagster-postgres and
    MLflow use); `<db>` is the URL's database (default `retro_ops`). Three databases, not one:
    Dagster and MLflow would both create a table called `runs`."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(pg_url)
    except ArgumentError:
        raise SettingsError(f"{PG_URL_ENV}={pg_url!r} is not a database URL "
                            "(e.g. postgresql://user@127.0.0.1:5432/retro_ops)") from None
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise SettingsError(f"{PG_URL_ENV} must name a Postgres server, not {url.get_backend_name()!r}")
    prefix = url.database or DEFAULT_PG_PREFIX
    if not DB_NAME_PATTERN.match(prefix):
        raise SettingsError(f"{PG_URL_ENV}: database prefix {prefix!r} must be letters, digits and _")

    def database(suffix: str, driver: str) -> str:
        return url.set(drivername=f"postgresql+{driver}", database=f"{prefix}_{suffix}").render_as_string(
            hide_password=False)

    return {"catalog": database("catalog", "psycopg"), "dagster": database("dagster", "psycopg2"),
            "mlflow": database("mlflow", "psycopg2")}


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def stored_path(path: str | Path, home: Path, *, within: Path | None = None) -> str:
    """How the catalog records `path`: relative to `home` when it lies under `within` (default:
    the home itself), so copying the home (or the folder holding it) carries it along; a path
    elsewhere (a shared data disk) stays absolute, because it does not move with the home."""
    text = str(path)
    if not text:
        return text
    absolute = os.path.abspath(os.path.expanduser(text))
    base = Path(within or home)
    if base.parent == base:  # never "relative to /": that would be absolute in disguise
        base = Path(home)
    if _inside(absolute, os.path.abspath(base)):
        return os.path.relpath(absolute, home)
    return absolute


def resolve_stored(stored: str, home: Path) -> str:
    """A recorded path made absolute again against the home reading it; a value that is already
    absolute (recorded by an older retro-ops) is returned as it was."""
    if not stored or os.path.isabs(stored):
        return stored
    return os.path.normpath(os.path.join(home, stored))


def home_from_env(env: Mapping[str, str]) -> Path:
    """The home `Settings.from_env(env)` names, absolute and without links: one path per home,
    which a local worker's socket and record are keyed by (the `retro-ops` front asks for it
    before it imports anything else)."""
    return Path(env.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()


def _streams(raw: str) -> int:
    """RETRO_OPS_EMBEDDER_STREAMS: a whole number >= 1 ("" = 1)."""
    if not raw.strip():
        return 1
    if not raw.strip().isdigit() or int(raw) < 1:
        raise SettingsError(f"{EMBEDDER_STREAMS_ENV}={raw!r}: expected a whole number of streams, at least 1")
    return int(raw)


@dataclass(frozen=True)
class Settings:
    """Resolved locations of every store. Build with `Settings.from_env()` or directly in tests."""

    home: Path  # every location below hangs off it unless set on its own
    catalog_url: str = ""  # SQLAlchemy URL; "" = SQLite at <home>/catalog.db
    lancedb_uri: str = ""  # "" = <home>/lancedb
    embedder_path: str = ""  # a local Hugging Face model folder; "" = the packaged MiniLM
    embedder_precision: str = "fp32"  # fp32 | bf16 | int8: each its own embedding space
    embedder_streams: int = 1  # batches embedded at once, one torch thread each (torch paths)
    mlflow_uri: str = ""  # MLflow tracking + registry store; "" = SQLite under the home
    dagster_storage_url: str = ""  # postgresql://... for Dagster's runs/events/schedules; "" = SQLite
    artifacts_dir: str = ""  # MLflow artifacts (checkpoints); "" = `<home>/mlflow/artifacts`
    profile: str = "local"  # "prod": the databases above derive from RETRO_OPS_PG_URL
    extra: Mapping[str, str] = field(default_factory=dict)  # free-form; retro-ops itself reads none of it

    def __post_init__(self) -> None:
        home = Path(self.home).expanduser().resolve()
        object.__setattr__(self, "home", home)
        if not self.catalog_url:
            object.__setattr__(self, "catalog_url", f"sqlite:///{home / 'catalog.db'}")
        if not self.lancedb_uri:
            object.__setattr__(self, "lancedb_uri", str(home / "lancedb"))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Explicit URLs win; under the prod profile the rest come from RETRO_OPS_PG_URL."""
        env = os.environ if env is None else env
        profile = env.get(PROFILE_ENV) or "local"
        if profile not in PROFILES:
            raise SettingsError(f"{PROFILE_ENV}={profile!r}: choose one of {', '.join(PROFILES)}")
        derived: dict[str, str] = {}
        if profile == "prod":
            if not env.get(PG_URL_ENV):
                raise SettingsError(f"the prod profile needs {PG_URL_ENV} "
                                    "(e.g. postgresql://user@127.0.0.1:5432/retro_ops)")
            derived = profile_urls(env[PG_URL_ENV])
        return cls(
            home=Path(env.get(HOME_ENV) or DEFAULT_HOME),
            catalog_url=env.get(CATALOG_URL_ENV) or derived.get("catalog", ""),
            lancedb_uri=env.get(LANCEDB_URI_ENV, ""),
            embedder_path=env.get(EMBEDDER_PATH_ENV, ""),
            embedder_precision=env.get(EMBEDDER_PRECISION_ENV) or "fp32",
            embedder_streams=_streams(env.get(EMBEDDER_STREAMS_ENV, "")),
            mlflow_uri=env.get(MLFLOW_URI_ENV) or derived.get("mlflow", ""),
            dagster_storage_url=env.get(DAGSTER_STORAGE_ENV) or derived.get("dagster", ""),
            artifacts_dir=env.get(ARTIFACTS_DIR_ENV, ""),
            profile=profile,
        )

    def with_home(self, home: Path) -> Settings:
        return replace(self, home=home, catalog_url="", lancedb_uri="", mlflow_uri="",
                       dagster_storage_url="")

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        """Where MLflow puts run artifacts: a folder (a shared mount in a cluster)."""
        return Path(self.artifacts_dir).expanduser().resolve() if self.artifacts_dir else \
            self.mlflow_dir / "artifacts"

    @property
    def checkpoints_dir(self) -> Path:
        return self.home / "checkpoints"

    @property
    def neighbours_dir(self) -> Path:
        return self.home / "neighbours"

    @property
    def indices_dir(self) -> Path:
        return self.home / "indices"

    def ensure_dirs(self) -> None:
        for path in (self.home, self.dagster_home, self.mlflow_dir, self.indices_dir):
            path.mkdir(parents=True, exist_ok=True)
