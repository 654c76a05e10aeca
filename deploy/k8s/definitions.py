"""The retro-ops code location for Kubernetes: the same assets, each step a Kubernetes Job.

`dagster definitions validate -f deploy/k8s/definitions.py -d .` (from the repo root) checks it.
"""

import dagster as dg
from dagster_k8s import k8s_job_executor

import assets.definitions as local_location

defs = dg.Definitions.merge(local_location.shared_definitions(), dg.Definitions(executor=k8s_job_executor.configured({
    "max_concurrent": 16,
    "env_vars": ["RETRO_OPS_PROFILE", "RETRO_OPS_HOME", "RETRO_OPS_ARTIFACTS_DIR"],
    "env_secrets": ["retro-ops-postgres"],
})))
