"""The retro-ops code location for Celery: the same assets, each step a task on a worker.

`dagster definitions validate -f deploy/celery/definitions.py -d .` (from the repo root) checks it.
The broker URL comes from the environment (DAGSTER_CELERY_BROKER_URL), never from code.
"""

import dagster as dg
from dagster_celery import celery_executor

import assets.definitions as local_location

defs = dg.Definitions.merge(local_location.defs, dg.Definitions(executor=celery_executor.configured({
    "broker": {"env": "DAGSTER_CELERY_BROKER_URL"},
    "backend": {"env": "DAGSTER_CELERY_BACKEND_URL"},
})))
