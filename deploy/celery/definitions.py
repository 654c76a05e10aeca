"""The retro-ops code location for Celery: the same assets, each step a task on a worker.

`dagster definitions validate -f deploy/celery/definitions.py -d .` (from the repo root) checks it.
The executor takes its config from deploy/celery/celery.yaml, the file every worker starts with;
the broker URL from the environment (DAGSTER_CELERY_BROKER_URL), never from code; the queue its
steps go to from RETRO_OPS_CELERY_QUEUE (default "dagster"). A run whose broker does not answer
fails at once with one line naming it (`assets.cluster.check_broker`), before any step is sent.
"""

import dagster as dg
from dagster_celery import celery_executor
from dagster_celery.defaults import broker_url
from dagster_celery.executor import CELERY_CONFIG

import assets.definitions as local_location
from assets.cluster import check_broker, executor_config


@dg.executor(name="celery", config_schema=CELERY_CONFIG, requirements=dg.multiple_process_executor_requirements())
def checked_celery_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """dagster-celery's executor, after a bounded check that its broker answers (Celery itself
    would retry the first publish, then fail the run with a long trace)."""
    check_broker(init_context.executor_config.get("broker") or broker_url)
    return celery_executor.executor_creation_fn(init_context)


defs = dg.Definitions.merge(local_location.shared_definitions(), dg.Definitions(
    executor=checked_celery_executor.configured(executor_config())))
