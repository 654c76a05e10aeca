"""Parallel MLflow logging to a home's default SQLite store loses no metric: real processes open
the store at once (a fresh one, so they race on creating its schema and the experiment) and
log into it together; every point they logged reads back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from retro_ops.catalog.mlflow_runs import EXPERIMENT, Tracking
from retro_ops.settings import Settings

# One worker: open the home's store, log `steps` points of `loss` (steps offset by the worker
# number, so workers sharing a run never write the same step) and a curve, print the run id.
WORKER = """
import sys
from pathlib import Path
from retro_ops.catalog.mlflow_runs import Tracking
from retro_ops.settings import Settings

home, worker, steps, run_id = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
tracking = Tracking(Settings(home=home))
run_id = run_id or tracking.start_run(f"worker-{worker}", {"worker": str(worker)})
for step in range(steps):
    tracking.log_metrics(run_id, {"loss": worker + step / 1000, f"w{worker}": step},
                         step=worker * steps + step)
tracking.log_curve(run_id, f"curve{worker}", [(s, s / 7) for s in range(1000)])  # 2 batches
print(run_id)
"""


def run_workers(home: Path, workers: int, steps: int, run_id: str = "") -> list[str]:
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(home), str(w), str(steps), run_id],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(workers)]
    run_ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        assert "database is locked" not in err, err[-3000:]
        run_ids.append(out.strip())
    return run_ids


def test_parallel_processes_on_a_fresh_store_lose_no_metric(tmp_path: Path):
    """Without a lock around MLflow's schema creation, processes opening a fresh SQLite store
    together die with "duplicate column name" or an alembic revision error."""
    settings = Settings(home=tmp_path / "home")
    settings.ensure_dirs()
    run_ids = run_workers(settings.home, workers=3, steps=30)
    tracking = Tracking(settings)
    [experiment] = [e for e in tracking.client.search_experiments() if e.name == EXPERIMENT]
    runs = tracking.client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids) and len(set(run_ids)) == 3
    for worker, run_id in enumerate(run_ids):
        history = tracking.client.get_metric_history(run_id, "loss")
        assert sorted(m.step for m in history) == list(range(worker * 30, worker * 30 + 30))
        assert len(tracking.client.get_metric_history(run_id, f"curve{worker}")) == 1000


@pytest.mark.slow  # ~40 s on 2 busy cores; the fresh-store test above is the fast one
def test_parallel_processes_logging_into_one_run_lose_no_metric(tmp_path: Path):
    settings = Settings(home=tmp_path / "home")
    settings.ensure_dirs()
    tracking = Tracking(settings)
    run_id = tracking.start_run("shared", {})
    assert run_workers(settings.home, workers=3, steps=60, run_id=run_id) == [run_id] * 3
    loss = tracking.client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in loss) == list(range(180))
    assert sorted({round(m.value) for m in loss}) == [0, 1, 2]
    for worker in range(3):
        assert len(tracking.client.get_metric_history(run_id, f"w{worker}")) == 60
        assert len(tracking.client.get_metric_history(run_id, f"curve{worker}")) == 1000
