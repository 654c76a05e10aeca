"""What a purge must leave behind, read from storage (helpers of tests/test_purge.py, no fixtures).

LanceDB is read structurally, not only by bytes (its strings are compressed): every remaining
version of every table is checked out and searched for the purged rows; every data file and
index folder on disk must belong to a remaining version (so no copy escapes that reading); no
deletion file may remain (a fragment with one still holds the deleted rows' bytes); and no index
built while the rows were there may survive. Dagster is run the way the CLI runs it, and its
sensor the way its daemon ticks it."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from lancedb.expr import col, lit

from retro_ops.erasure.store import KEEP_TABLES
from retro_ops.features.store import FeatureStore

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PurgedRows:
    """How the purged document's rows are found in any table: by its id, its chunks' ids, or
    its chunks' texts (content hashes: vectors and scores are keyed by them)."""

    doc_id: str
    chunk_ids: list[int]
    content_hashes: list[str]

    def where(self, columns: list[str]) -> str | None:
        found = ([(col("doc_id") == lit(self.doc_id)).to_sql()] if "doc_id" in columns else []) + (
            [col("chunk_id").isin(self.chunk_ids).to_sql()] if "chunk_id" in columns else []) + (
            [col("content_hash").isin(self.content_hashes).to_sql()] if "content_hash" in columns else [])
        return " OR ".join(f"({f})" for f in found) or None


def _tables(store: FeatureStore) -> list[str]:
    return sorted(set(store.db.list_tables().tables) - KEEP_TABLES)


def _versions(table) -> list[dict]:
    return sorted(table.list_versions(), key=lambda v: v["version"])


def lance_holdings(store: FeatureStore, rows: PurgedRows) -> list[str]:
    """'table vN: k rows' for every remaining version of every table that holds purged rows."""
    found = []
    for name in _tables(store):
        table = store.db.open_table(name)
        where = rows.where(table.schema.names)
        for version in _versions(table) if where else []:
            table.checkout(version["version"])
            if n := table.count_rows(where):
                found.append(f"{name} v{version['version']}: {n} rows")
    return found


def index_uuids(store: FeatureStore) -> dict[str, set[str]]:
    """table -> the ids of the indices its remaining versions list."""
    found: dict[str, set[str]] = {}
    for name in _tables(store):
        table = store.db.open_table(name)
        for version in _versions(table):
            table.checkout(version["version"])
            found.setdefault(name, set()).update(i.index_uuid for i in table.list_indices())
    return found


def lance_leftovers(store: FeatureStore, tables: set[str], indices_before: dict[str, set[str]]) -> list[str]:
    """What in these tables' folders could still hold rows erased from them: a data file or index
    folder no remaining version names (its bytes escape `lance_holdings`), a deletion file, a
    version recording deletion files, an index that was there before the erasure."""
    found = []
    for name in sorted(tables):
        folder = Path(store.uri) / f"{name}.lance"
        manifests = b"".join(p.read_bytes() for p in (folder / "_versions").glob("*.manifest"))
        found += [f"{name}: data file {p.name} is in no remaining version"
                  for p in sorted((folder / "data").glob("*")) if p.name.encode() not in manifests]
        found += [f"{name}: index folder {p.name} is in no remaining version"
                  for p in sorted((folder / "_indices").glob("*")) if uuid.UUID(p.name).bytes not in manifests]
        found += [f"{name}: deletion file {p.name}" for p in sorted((folder / "_deletions").glob("*"))]
        found += [f"{name} v{v['version']}: {v['metadata'].get('total_deletion_files')} deletion files"
                  for v in _versions(store.db.open_table(name))
                  if v["metadata"].get("total_deletion_files", "0") != "0"]
        kept = indices_before.get(name, set()) & index_uuids(store).get(name, set())
        found += [f"{name}: index {i} was built while the rows were there" for i in sorted(kept)]
    return found


def found_in_files(root: Path, needles: dict[str, str]) -> dict[str, set[str]]:
    """label -> files under `root` (relative) whose bytes contain that label's needle."""
    found: dict[str, set[str]] = {label: set() for label in needles}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for label, needle in needles.items():
                if needle.encode() in data:
                    found[label].add(str(path.relative_to(root)))
    return found


def sensor_tick(instance, sensor_name: str) -> list:
    """One tick of a sensor as the sensor daemon runs it (the code location loaded in-process,
    the sensor started, one iteration of the daemon's loop): its tick is stored in the instance."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._daemon.sensor import execute_sensor_iteration

    origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="assets.definitions",
                                                              working_directory=str(REPO)))
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as context:
        [entry] = context.create_request_context().get_code_location_entries().values()
        assert entry.code_location is not None, entry.load_error
        [repository] = entry.code_location.get_repositories().values()
        sensor = repository.get_sensor(sensor_name)
        instance.start_sensor(sensor)
        list(execute_sensor_iteration(context, logging.getLogger("sensor_daemon"), None, None))
        return instance.get_ticks(sensor.get_remote_origin_id(), sensor.selector_id)
