"""Where retro-ops keeps its state: one home folder, every location overridable.

All paths hang off `RETRO_OPS_HOME` (default `./.retro_ops`) so a demo never writes outside it;
each backend URL can be pointed elsewhere (e.g. the catalog at Postgres) by environment.
Nothing absolute is derived once and kept: the URLs below are computed from the home each time a
process starts, and the catalog records paths relative to the home (`stored_path`), so a home
copied to another folder or machine reads its own files, never the original's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

HOME_ENV = "RETRO_OPS_HOME"
CATALOG_URL_ENV = "RETRO_OPS_CATALOG_URL"
LANCEDB_URI_ENV = "RETRO_OPS_LANCEDB_URI"
EMBEDDER_PATH_ENV = "RETRO_OPS_EMBEDDER_PATH"
EMBEDDER_PRECISION_ENV = "RETRO_OPS_EMBEDDER_PRECISION"
MLFLOW_URI_ENV = "RETRO_OPS_MLFLOW_URI"
DAGSTER_STORAGE_ENV = "RETRO_OPS_DAGSTER_STORAGE_URL"
DEFAULT_HOME = ".retro_ops"


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


@dataclass(frozen=True)
class Settings:
    """Resolved locations of every store. Build with `Settings.from_env()` or directly in tests."""

    home: Path
    catalog_url: str = ""
    lancedb_uri: str = ""
    embedder_path: str = ""  # a local Hugging Face model folder; "" = the packaged MiniLM
    embedder_precision: str = "fp32"  # fp32 | bf16 | int8: each its own embedding space
    mlflow_uri: str = ""  # MLflow tracking + registry store; "" = SQLite under the home
    dagster_storage_url: str = ""  # postgresql://... for Dagster's runs/events/schedules; "" = SQLite
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        home = Path(self.home).expanduser().resolve()
        object.__setattr__(self, "home", home)
        if not self.catalog_url:
            object.__setattr__(self, "catalog_url", f"sqlite:///{home / 'catalog.db'}")
        if not self.lancedb_uri:
            object.__setattr__(self, "lancedb_uri", str(home / "lancedb"))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            home=Path(env.get(HOME_ENV) or DEFAULT_HOME),
            catalog_url=env.get(CATALOG_URL_ENV, ""),
            lancedb_uri=env.get(LANCEDB_URI_ENV, ""),
            embedder_path=env.get(EMBEDDER_PATH_ENV, ""),
            embedder_precision=env.get(EMBEDDER_PRECISION_ENV) or "fp32",
            mlflow_uri=env.get(MLFLOW_URI_ENV, ""),
            dagster_storage_url=env.get(DAGSTER_STORAGE_ENV, ""),
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
