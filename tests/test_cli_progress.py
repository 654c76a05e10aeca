"""Progress where no terminal is: plain lines per run and step, periodic lines within long steps
(done/total, elapsed, rate, time left), and a piped `retro-ops demo` that shows every step."""

from __future__ import annotations

import io
import re
import shutil
import time
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from retro_ops.cli.progress import BarProgress, LineProgress, progress_for
from retro_ops.default_corpora import CORPORA_DIR
from retro_ops.settings import Settings

STAMP = re.compile(r"^\d\d:\d\d:\d\d ")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lines(console: Console) -> list[str]:
    text = console.file.getvalue().splitlines()
    assert all(STAMP.match(line) for line in text), text
    return [STAMP.sub("", line) for line in text]


def _console() -> Console:
    return Console(file=io.StringIO(), width=200)


def test_a_line_per_run_and_step_and_per_tenth_of_long_work():
    clock, console = Clock(), _console()
    progress = LineProgress(console, clock=clock)  # not entered: no heartbeat thread
    progress.run(1, 2, "kjv_nt", ["chunks", "chunk_embeddings"])
    progress.step("kjv_nt", "chunk_embeddings", "started")
    report = progress.tracker("kjv_nt", "chunk_embeddings", "embedding chunks")
    for done in range(101):  # a chunk a second
        clock.now = float(done)
        report(done, 100)
    clock.now = 101.0
    progress.step("kjv_nt", "chunk_embeddings", "done")
    timing = {10: ("10 s", "1:30"), 20: ("20 s", "1:20"), 30: ("30 s", "1:10"), 40: ("40 s", "1:00"),
              50: ("50 s", "50 s"), 60: ("1:00", "40 s"), 70: ("1:10", "30 s"), 80: ("1:20", "20 s"),
              90: ("1:30", "10 s")}
    assert _lines(console) == [
        "run 1/2: kjv_nt (chunks, chunk_embeddings)",
        "kjv_nt chunk_embeddings: started",
        *(f"kjv_nt chunk_embeddings: embedding chunks {p}/100 ({p}%), {elapsed} elapsed, 1/s, ~{left} left"
          for p, (elapsed, left) in timing.items()),
        "kjv_nt chunk_embeddings: done after 1:41 (embedding chunks 100/100, 0.99/s)",
    ]


def test_fast_work_is_throttled_and_quiet_steps_get_a_heartbeat():
    """Ten percent done in a burst prints nothing (the last line is younger than 5 s); a step
    that says nothing for 30 s gets a line, with its progress when it has any. A resumed run's
    rate counts only the work done since it resumed."""
    clock, console = Clock(), _console()
    progress = LineProgress(console, clock=clock)
    progress.step("models", "evaluation", "started")
    progress.step("models", "retro_checkpoint", "started")
    report = progress.tracker("models", "retro_checkpoint", "training retro")
    for done in range(150, 181):  # resumed at step 150 of 300: 30 steps at once, then quiet
        report(done, 300)
    clock.now = 29.0
    progress.beat()
    clock.now = 30.0
    progress.beat()
    report(181, 300)  # 60% was just said
    clock.now = 61.0
    progress.beat()
    assert _lines(console) == [
        "models evaluation: started",
        "models retro_checkpoint: started",
        "models evaluation: running, 30 s elapsed",
        "models retro_checkpoint: training retro 180/300 (60%), 30 s elapsed, 1/s, ~2:00 left",
        "models evaluation: running, 1:01 elapsed",
        "models retro_checkpoint: training retro 181/300 (60%), 1:01 elapsed, 0.508/s, ~3:54 left",
    ]


def test_the_heartbeat_thread_speaks_while_a_step_runs_and_stops_with_the_block():
    console = _console()
    with LineProgress(console, heartbeat_s=0.05) as progress:
        progress.step("", "near_duplicates", "started")
        deadline = time.monotonic() + 10
        while "running" not in console.file.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
        progress.step("", "near_duplicates", "failed")
    assert not progress._thread.is_alive()
    lines = _lines(console)
    assert lines[0] == "near_duplicates: started" and lines[1].startswith("near_duplicates: running, ")
    assert lines[-1].startswith("near_duplicates: failed after ")


def test_bars_on_a_terminal_lines_elsewhere():
    terminal = Console(file=io.StringIO(), force_terminal=True, width=100)
    assert isinstance(progress_for(terminal, transient=False), BarProgress)
    assert isinstance(progress_for(_console(), transient=False), LineProgress)
    with progress_for(terminal, transient=False) as bars:
        bars.step("kjv_nt", "chunks", "started")
        bars.tracker("kjv_nt", "chunks", "chunking documents")(3, 4)
        bars.step("kjv_nt", "chunks", "done")
    assert "kjv_nt chunks: chunking documents" in terminal.file.getvalue()


def test_assets_report_through_dagster_to_the_cli(home: Settings, small_corpus: Path):
    """A tracker an asset asks for reaches the CLI's renderer: Dagster rebuilds a configurable
    resource from its fields, which once dropped the renderer and with it every bar."""
    from assets.launch import ReportedProgress, materialize_partition
    from assets.instance import dagster_instance
    from assets.partitions import CORPUS_PARTITIONS
    from retro_ops.catalog import Catalog

    catalog = Catalog.open(home.catalog_url, home=home.home)
    catalog.add_corpus("small", str(small_corpus))
    catalog.close()
    console = _console()
    progress = LineProgress(console, min_gap_s=0.0)
    outcome = materialize_partition(dagster_instance(home), CORPUS_PARTITIONS, "small",
                                    selection=["documents", "chunks"], on_step=progress.step,
                                    progress=ReportedProgress().attach(progress))
    assert outcome.success, outcome.error
    lines = _lines(console)
    assert lines[0] == "small documents: started" and lines[1].startswith("small documents: done after ")
    assert re.fullmatch(r"small chunks: done after \d+\.\d s \(chunking documents 6/6, [\d.]+/s\)", lines[-1])


#: the demo's corpora, tiny: ten short KJV chapters and their ASV parallels (two held out, one
#: of them the test document), two short Moby-Dick chapters as the unrelated set
DEMO_CHAPTERS = ["47_2_Corinthians_13.txt", "46_1_Corinthians_08.txt", "64_3_John_01.txt",
                 "52_1_Thessalonians_03.txt", "53_2_Thessalonians_01.txt", "63_2_John_01.txt",
                 "56_Titus_02.txt", "46_1_Corinthians_13.txt", "54_1_Timothy_02.txt",
                 "66_Revelation_15.txt"]


def _tiny_demo_corpora(root: Path) -> Path:
    for corpus in ("kjv_nt", "asv_nt"):
        (root / corpus).mkdir(parents=True)
        for name in DEMO_CHAPTERS:
            shutil.copy(CORPORA_DIR / corpus / name, root / corpus / name)
    (root / "moby_dick").mkdir()
    for name in ("chapter_120.txt", "chapter_97.txt"):
        shutil.copy(CORPORA_DIR / "moby_dick" / name, root / "moby_dick" / name)
    return root


def test_piped_demo_prints_a_line_per_step_and_each_table_once(home: Settings, tmp_path: Path):
    """`retro-ops demo > log`: every step of every run has its started and done lines on
    stderr; stdout has the run tables, one short summary and the name of the file with the
    full evaluation tables (printed nowhere else)."""
    from assets.launch import ASSETS_BY_PARTITION, WHOLE
    from assets.partitions import CORPUS_PARTITIONS, RETRIEVAL_SET_PARTITIONS
    from retro_ops.cli.main import DEMO_MODEL_ASSETS, app

    corpora = _tiny_demo_corpora(tmp_path / "corpora")
    result = CliRunner().invoke(app, ["demo", "--corpora", str(corpora), "--steps", "1"])
    lines = [STAMP.sub("", line) for line in result.stderr.splitlines() if STAMP.match(line)]
    names = ("kjv_nt", "asv_nt", "moby_dick")
    steps = [(c, a) for c in names for a in ASSETS_BY_PARTITION[CORPUS_PARTITIONS]]
    steps += [("", a) for a in ASSETS_BY_PARTITION[WHOLE]]
    steps += [(s, a) for s in names for a in ASSETS_BY_PARTITION[RETRIEVAL_SET_PARTITIONS]]
    assert [line for line in lines if line.startswith("run ")] == [
        *(f"run {i}/7: {p} ({', '.join(ASSETS_BY_PARTITION[d])})" for i, (d, p) in enumerate(
            [(CORPUS_PARTITIONS, n) for n in names] + [(WHOLE, "all corpora")]
            + [(RETRIEVAL_SET_PARTITIONS, n) for n in names], start=1)),
        f"run 1/1: models ({', '.join(DEMO_MODEL_ASSETS)})"]
    _each_started_and_done(steps, lines)
    assert result.exit_code == 0, result.output
    spec = next(line.split()[0] for line in lines if line.endswith("training_neighbours: started"))
    _each_started_and_done([(spec, a) for a in DEMO_MODEL_ASSETS], lines)
    assert "BetaWarning" not in result.stderr
    assert result.stdout.count("summary: bits per byte on") == 1
    assert "paired differences" not in result.stdout and "by overlap alpha" not in result.stdout
    [report] = (home.home / "reports").glob("demo-*.txt")
    assert f"Full tables (alpha buckets and deciles, controls, every paired difference): {report}" in result.stdout
    full = report.read_text()
    assert "paired differences" in full and "control: oracle" in full and "\x1b[" not in full


def _each_started_and_done(steps: list[tuple[str, str]], lines: list[str]) -> None:
    for partition, asset in steps:
        where = f"{partition} {asset}" if partition else asset
        assert f"{where}: started" in lines, (where, lines)
        assert any(line.startswith(f"{where}: done after ") for line in lines), (where, lines)
