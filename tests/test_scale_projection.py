"""bench/scale_projection.py's arithmetic on a real measurement: tests/data/scale_celery_small.json
is the results file of `bench/scale.py --chapters 3 --celery` (199 chunks, 2 shards, one worker
then two at 1 thread each, on a shared 2-core AMD EPYC), so a change to how the projection reads
or scales the measured figures shows as a failure here, not as a quietly different table."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "tests" / "data" / "scale_celery_small.json"
DEPLOYED = ["--max-concurrent-runs", "8", "--pool-limit", "32"]  # deploy/celery/dagster.yaml's


@pytest.fixture(scope="module")
def projection():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import scale_projection

        yield scale_projection
    finally:
        sys.path.remove(str(REPO / "bench"))


def _run(projection, *options: str):
    args = projection.parse_args(["--results", str(RESULTS), *DEPLOYED, *options])
    return projection.run(json.loads(RESULTS.read_text()), args)


def test_measured_figures_come_from_the_two_worker_runs(projection):
    m, _ = _run(projection)
    assert (m.workers, m.threads_per_worker, m.chunks, m.steps_per_shard) == (2, 1, 199, 2)
    # 199 chunks over the chunk + embed library seconds of both shard runs (0.428 + 6.529 + 0.256 + 7.28)
    assert m.chunks_per_s_per_worker == pytest.approx(199 / 14.493)
    # each run's wall (32.15 s, 33.47 s) less its steps' library seconds, averaged over the runs
    assert m.per_shard_overhead_s == pytest.approx(((32.145211 - 6.957) + (33.472829 - 7.536)) / 2, rel=1e-6)
    assert (m.events_per_step, m.events_per_run) == (11.0, 4.0)
    assert m.embedding_bytes_per_chunk == pytest.approx(313930 / 199)
    assert m.index_bytes_per_vector == pytest.approx((123659 + 199315) / 199)
    assert m.merge_s_per_vector == pytest.approx(0.006 / 199)


def test_projection_at_10_100_1000_workers(projection):
    m, rows = _run(projection)
    shard_s = 100_000 / m.chunks_per_s_per_worker + m.per_shard_overhead_s
    assert [r["workers"] for r in rows] == [10, 100, 1000]
    assert [r["shards"] for r in rows] == [58_000] * 3
    expected = [math.ceil(58_000 / w) * shard_s / 3600 for w in (10, 100, 1000)]
    assert [r["wall_h"] for r in rows] == pytest.approx(expected)
    assert rows[0]["wall_h"] == pytest.approx(11774.7686, rel=1e-6)
    assert [r["steps_at_once"] for r in rows] == [8, 8, 8]  # the run slots cap every worker count
    assert rows[2]["wall_as_deployed_h"] == pytest.approx(14718.4608, rel=1e-6)
    assert rows[0]["merge_bytes"] == pytest.approx(5.8e9 * 1622.98492, rel=1e-6)
    parts = {p["part"]: p for p in rows[2]["parts"]}
    assert parts["broker (RabbitMQ)"]["demand"] == pytest.approx(1000 * 2 * 2 / shard_s)
    assert parts["event log (Postgres)"]["demand"] == pytest.approx(1000 / shard_s * (2 * 11 + 4))
    assert parts["shared filesystem"]["demand"] == pytest.approx(28_650_491.0, rel=1e-6)
    assert parts["LanceDB writer lock (busiest table)"]["utilization"] == pytest.approx(1.38470743, rel=1e-6)
    assert [r["breaks_first"] for r in rows] == ["FAISS merge host RAM", "FAISS merge host RAM", "Dagster run slots"]


def test_capacities_are_options(projection):
    """With the deploy limits lifted and a PQ-sized index (72 B per vector), 10 workers break
    nothing and 1,000 break the LanceDB writer lock first."""
    _, rows = _run(projection, "--max-concurrent-runs", "0", "--pool-limit", "0", "--index-bytes-per-vector", "72")
    assert [r["steps_at_once"] for r in rows] == [10, 100, 1000]
    assert rows[2]["wall_as_deployed_h"] == rows[2]["wall_h"]
    assert rows[0]["over_capacity"] == "none; nearest FAISS merge host RAM (82%)"  # 5.8e9 * 72 B of 512 GB
    assert rows[2]["breaks_first"] == "LanceDB writer lock (busiest table)"
