"""How long the Dagster code location takes to load in a fresh process, for this checkout and,
in the same run, another one (`--baseline TREE`, e.g. `git worktree add /tmp/before <commit>`),
measured alternately so that both see the same machine:

- `import assets.definitions`: what each code server of the UI and of the automation daemon,
  `dagster definitions validate` and every launched run pay before their first step;
- with `--ui`: `retro-ops ui` on a fresh home, from start to the asset graph served (the
  webserver, the daemon and the code servers started and the location loaded).

    python bench/location_load.py --runs 5
    python bench/location_load.py --baseline /tmp/before --runs 5 --ui

Each row: the best and the median of `--runs`, wall and CPU seconds (the process and its
children), and which of the heavy packages the import left loaded.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO_ROOT, Column, base_parser, environment, free_port, log, report

from retro_ops.cli.ui import stop_group

HEAVY = ("torch", "transformers", "lancedb", "mlflow", "datasketch")
PROBE = ("import sys, assets.definitions; "
         f"print(' '.join(p for p in {HEAVY!r} if p in sys.modules))")
ASSET_NODES = "{ assetNodes { assetKey { path } } }"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _env(tree: Path, home: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRO_OPS_")}
    env["PYTHONPATH"] = str(tree)
    if home is not None:
        env["RETRO_OPS_HOME"] = str(home)
    return env


def time_import(tree: Path) -> dict:
    cpu, start = _children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=tree, env=_env(tree), capture_output=True,
                          text=True, timeout=300, check=True)
    return {"wall_s": time.perf_counter() - start, "cpu_s": _children_cpu() - cpu, "loaded": done.stdout.strip()}


def _graph_served(port: int) -> bool:
    import requests

    try:
        answer = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": ASSET_NODES}, timeout=10)
        return bool(answer.ok and answer.json().get("data", {}).get("assetNodes"))
    except (requests.RequestException, ValueError):
        return False


def time_ui(tree: Path, timeout: float = 300.0) -> dict:
    """`retro-ops ui` (this tree's code: PYTHONPATH) on a fresh home until the graph is served;
    CPU is not measured (the UI's processes are still running then)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="location-load-") as folder:
        command = [sys.executable, "-m", "retro_ops.cli.main", "ui", "--port", str(port)]
        start = time.perf_counter()
        with open(Path(folder) / "ui.log", "wb") as sink:
            process = subprocess.Popen(command, cwd=tree, env=_env(tree, Path(folder) / "home"), stdout=sink,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while not _graph_served(port):
                if process.poll() is not None or time.perf_counter() - start > timeout:
                    raise RuntimeError(f"retro-ops ui ({tree}) did not serve the graph: "
                                       f"{(Path(folder) / 'ui.log').read_text(errors='replace')[-1500:]}")
                time.sleep(0.25)
            wall = time.perf_counter() - start
        finally:
            stop_group(process)
    return {"wall_s": wall, "cpu_s": None, "loaded": None}


def _row(tree_label: str, measure: str, samples: list[dict]) -> dict:
    """Best and median; CPU and the loaded packages where the measure has them (not the UI's)."""
    walls, cpus, loaded = [s["wall_s"] for s in samples], [s["cpu_s"] for s in samples], samples[-1]["loaded"]
    return {"tree": tree_label, "measure": measure, "runs": len(samples),
            "best_wall_s": min(walls), "median_wall_s": statistics.median(walls),
            "median_cpu_s": None if None in cpus else statistics.median(cpus),
            "heavy_loaded": None if loaded is None else loaded or "none"}


def main() -> None:
    parser = base_parser(__doc__, "unused: each measurement makes its own home")
    parser.add_argument("--baseline", type=Path, help="another checkout to measure alongside (e.g. a worktree "
                                                      "of the commit before a change)")
    parser.add_argument("--runs", type=int, default=5, help="measurements per tree and measure (default 5)")
    parser.add_argument("--ui", action="store_true", help="also time `retro-ops ui` until the asset graph is served")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs {args.runs}: at least 1")
    trees = {"this checkout": REPO_ROOT}
    if args.baseline is not None:
        if not (args.baseline / "assets" / "definitions.py").is_file():
            parser.error(f"--baseline {args.baseline}: no assets/definitions.py there (a checkout of this repository?)")
        trees["baseline"] = args.baseline.resolve()
    measures = {"import assets.definitions": time_import, **({"retro-ops ui to graph": time_ui} if args.ui else {})}
    samples: dict[tuple[str, str], list[dict]] = {(t, m): [] for t in trees for m in measures}
    for i in range(args.runs):
        for measure, fn in measures.items():
            for label, tree in trees.items():  # alternate: both trees see the same load
                samples[(label, measure)].append(fn(tree))
                log(f"run {i + 1}/{args.runs} {measure} ({label}): {samples[(label, measure)][-1]['wall_s']:.2f} s")
    rows = [_row(t, m, s) for (t, m), s in samples.items()]
    notes = []
    if "baseline" in trees:
        for measure in measures:
            ours, base = (samples[(t, measure)] for t in ("this checkout", "baseline"))
            ratio = statistics.median(s["wall_s"] for s in ours) / statistics.median(s["wall_s"] for s in base)
            notes.append(f"{measure}: this checkout / baseline = {ratio:.2f} (median wall)")
    meta = {**environment(), "trees": {k: str(v) for k, v in trees.items()}, "runs": args.runs}
    report("location_load", [Column("tree", "tree"), Column("measure", "measure"), Column("runs", "runs"),
                             Column("best_wall_s", "best wall s", "{:.2f}"),
                             Column("median_wall_s", "median wall s", "{:.2f}"),
                             Column("median_cpu_s", "median CPU s", "{:.2f}"),
                             Column("heavy_loaded", "heavy packages loaded")], rows, meta, notes)


if __name__ == "__main__":
    main()
