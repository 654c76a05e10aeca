"""The documented cluster path (deploy/): the Kubernetes and Celery code locations pass
`dagster definitions validate` with their executors, and each example dagster.yaml passes
Dagster's own instance-config validation, its run launcher's config schema included."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTERS = {"k8s": "k8s", "celery": "celery"}  # folder -> the executor name Dagster reports


def test_cluster_code_locations_validate():
    command = [sys.executable, "-m", "dagster", "definitions", "validate", "-d", "."]
    for folder in CLUSTERS:
        command += ["-f", f"deploy/{folder}/definitions.py"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "All code locations passed validation" in result.stdout + result.stderr


@pytest.mark.parametrize("folder", sorted(CLUSTERS))
def test_cluster_executor_and_instance_config(folder: str, monkeypatch: pytest.MonkeyPatch):
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._serdes.config_class import class_from_code_pointer  # as the instance loads them

    monkeypatch.syspath_prepend(str(REPO / "deploy" / folder))
    module = importlib.import_module("definitions")
    try:
        executor = module.defs.resolve_job_def("__ASSET_JOB").executor_def
        assert executor.name == CLUSTERS[folder]
    finally:
        sys.modules.pop("definitions", None)

    monkeypatch.setenv("RETRO_OPS_DAGSTER_STORAGE_URL", "postgresql://dagster@db.internal:5432/retro_ops_dagster")
    monkeypatch.setenv("RETRO_OPS_IMAGE", "registry.internal/retro-ops:1")
    config, _ = dagster_instance_config(str(REPO / "deploy" / folder))  # raises on a bad file
    assert config["telemetry"] == {"enabled": False} and "postgres" in config["storage"]
    for section in ("run_coordinator", "run_launcher"):  # the classes load, their config fits
        spec = config[section]
        cls = class_from_code_pointer(spec["module"], spec["class"])
        checked = process_config(cls.config_type(), spec.get("config", {}))
        assert checked.success, (section, [e.message for e in checked.errors])
    raw = yaml.safe_load((REPO / "deploy" / folder / "dagster.yaml").read_text())
    launcher = raw["run_launcher"]
    bad = {**launcher.get("config", {}), "no_such_field": 1}
    assert not process_config(class_from_code_pointer(launcher["module"], launcher["class"]).config_type(),
                              bad).success  # the check bites


def test_celery_workers_and_runs_read_one_config(monkeypatch: pytest.MonkeyPatch):
    """deploy/celery/celery.yaml passes the check `dagster-celery worker start -y` makes, and the
    code location's executor takes the same block, sending steps to RETRO_OPS_CELERY_QUEUE."""
    from dagster_celery.cli import get_validated_config

    from assets.cluster import CELERY_YAML, QUEUE_ENV, executor_config, worker_command

    monkeypatch.setenv("DAGSTER_CELERY_BROKER_URL", "pyamqp://guest@broker.internal//")
    worker = get_validated_config(str(CELERY_YAML))
    assert worker["broker"] == "pyamqp://guest@broker.internal//" and worker["backend"] == "rpc://"
    assert worker["config_source"]["task_acks_late"] is True  # a killed worker's step is redelivered
    monkeypatch.setenv(QUEUE_ENV, "retro_ops_q1")
    runs = executor_config()
    assert runs["config_source"] == {**worker["config_source"], "task_default_queue": "retro_ops_q1"}
    command = worker_command("retro_ops_q1", "w1")
    assert command[command.index("-y") + 1] == "deploy/celery/celery.yaml"
    assert command[command.index("-q") + 1] == "retro_ops_q1"
    assert command[command.index("-i") + 1] == "assets.definitions"  # the stack imported before the pool forks


def test_readme_celery_commands_are_the_built_ones():
    """deploy/README.md's worker and `dagster asset materialize` lines are what
    `assets.cluster.worker_command` and `materialize_command` build (the commands the Celery
    tests and `assets.launch.launch_runs` run), so the README cannot drift from them."""
    import shlex

    from assets.cluster import materialize_command, worker_command

    text = (REPO / "deploy" / "README.md").read_text().replace("\\\n", " ")
    location = shlex.split(re.search(r'^L="(.*)"$', text, re.MULTILINE).group(1))
    runs = [shlex.split(line.removesuffix("&")) for line in text.splitlines() if line.startswith("dagster asset")]
    assert len(runs) == 6
    for args in runs:
        args = [part for arg in args for part in (location if arg == "$L" else [arg])]
        partition = args[args.index("--partition") + 1] if "--partition" in args else None
        assert args == materialize_command(args[args.index("--select") + 1], partition)
    [worker] = [shlex.split(line) for line in text.splitlines() if line.startswith("dagster-celery worker start")]
    queue, name = worker[worker.index("-q") + 1], worker[worker.index("-n") + 1]
    assert worker == worker_command(queue, name)
