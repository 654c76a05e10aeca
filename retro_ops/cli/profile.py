"""`retro-ops --profile prod` and `retro-ops db init`: one setting puts a deployment on Postgres.

The profile is exported to the environment of this process, so everything it starts (Dagster
runs, `dagster dev`, its code server) resolves the same stores; the Dagster storage URL is
exported too, because the `dagster.yaml` retro-ops writes names that variable, never the URL.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from retro_ops.cli.common import JsonOpt, emit_json, fail, out
from retro_ops.errors import SettingsError
from retro_ops.settings import DAGSTER_STORAGE_ENV, PROFILE_ENV, PROFILES, Settings

db_app = typer.Typer(no_args_is_help=True, help="The databases of a deployment (prod profile: Postgres).")

ProfileOpt = Annotated[str | None, typer.Option(
    "--profile", envvar=PROFILE_ENV, show_envvar=True,
    help=f"Where state lives: {' | '.join(PROFILES)}. `prod` puts the catalog, Dagster's runs, "
         "events and schedules, and MLflow tracking + registry on the Postgres server that "
         "RETRO_OPS_PG_URL names (databases <db>_catalog, <db>_dagster, <db>_mlflow); LanceDB, "
         "indices and MLflow artifacts stay in folders (RETRO_OPS_ARTIFACTS_DIR).")]


def use_profile(profile: str | None) -> Settings:
    """Validate the profile (one-line error) and export what child processes need."""
    if profile:
        os.environ[PROFILE_ENV] = profile
    try:
        resolved = Settings.from_env()
    except SettingsError as exc:
        fail(str(exc))
    if resolved.dagster_storage_url:
        os.environ[DAGSTER_STORAGE_ENV] = resolved.dagster_storage_url
    return resolved


@db_app.command("init")
def init_command(json_out: JsonOpt = False) -> None:
    """Create the Postgres databases the settings name (when missing) and their schemas: the
    catalog migrated to head, Dagster's run/event/schedule storage, MLflow's tracking and registry
    store. Safe to run again. Needs a role that may CREATE DATABASE, or databases made by hand."""
    import sqlalchemy as sa

    from assets.instance import dagster_instance
    from retro_ops.catalog import Catalog
    from retro_ops.catalog.databases import create_databases, postgres_databases
    from retro_ops.catalog.mlflow_runs import Tracking

    resolved = use_profile(None)
    resolved.ensure_dirs()
    try:
        created = {d.store for d in create_databases(resolved)}
        Catalog.open(resolved.catalog_url, home=resolved.home).close()
        dagster_instance(resolved).dispose()
        Tracking(resolved)
    except (SettingsError, sa.exc.OperationalError) as exc:
        fail(str(exc).splitlines()[0])
    rows = [{"store": d.store, "database": d.shown, "created": d.store in created}
            for d in postgres_databases(resolved)]
    if json_out:
        emit_json({"profile": resolved.profile, "databases": rows,
                   "artifacts": str(resolved.mlflow_artifacts_dir)})
        return
    for row in rows:
        out.print(f"{row['store']:8} {row['database']}  {'created' if row['created'] else 'exists'}")
    if not rows:
        out.print(f"profile {resolved.profile}: every store is local under {resolved.home}")
    out.print(f"artifacts {resolved.mlflow_artifacts_dir}")
