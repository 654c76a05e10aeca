"""The tutorial runs: its command blocks in order, in one shell, on a fresh home (a new working
folder holding only a link to the shipped corpora), each block's stated output checked loosely
(tests/tutorial_runner.py says how). The page cannot rot: a changed command, option or output
line fails here. Tiny settings (a few short chapters, two training steps) keep it to minutes."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from docs_helpers import REPO
from helpers import free_port
from tutorial_runner import Shell, failed_checks, loose, steps, unmatched

TUTORIAL = REPO / "docs" / "tutorial.md"
PORT = "8765"  # the tutorial's server port; the test serves on a free one
COMMAND_TIMEOUT = 300.0


def _fresh_env(home_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRO_OPS_") and k != "DAGSTER_HOME"}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", COLUMNS="120",
               TERM="dumb", HOME=str(home_dir))
    return env


def test_the_tutorial_runs_on_a_fresh_home(tmp_path: Path, capsys):
    assert shutil.which("curl"), "the tutorial calls its server with curl: apt-get install curl (.ci/run does)"
    work = tmp_path / "clone"
    work.mkdir()
    (work / "corpora").symlink_to(REPO / "corpora")  # what a fresh clone has beside the reader
    (tmp_path / "user").mkdir()
    shell, port, timings = Shell(work, _fresh_env(tmp_path / "user")), str(free_port()), []
    page = steps(TUTORIAL.read_text(encoding="utf-8"))
    assert len(page) >= 8 and sum(len(s.commands) for s in page) >= 15
    try:
        for step in page:
            output = []
            for command in step.commands:
                started = time.monotonic()
                code, printed = shell.run(command.replace(PORT, port), COMMAND_TIMEOUT)
                timings.append((time.monotonic() - started, command))
                assert code == 0, f"tutorial.md:{step.line}: `{command}` exited {code}:\n{printed}"
                output.append(printed)
            printed = "".join(output)
            for stated in step.stated:
                missing = unmatched(stated, printed)
                assert not missing, (f"tutorial.md:{step.line}: stated output not printed:\n"
                                     + "\n".join(missing) + f"\n--- printed:\n{printed}")
            problems = failed_checks(step.checks, printed)
            assert not problems, f"tutorial.md:{step.line}: {problems}\n--- printed:\n{printed}"
    finally:
        shell.close()
    assert not (work / ".retro_ops").is_symlink() and (work / ".retro_ops" / "catalog.db").exists()
    with capsys.disabled():
        slowest = sorted(timings, reverse=True)[:5]
        print(f"\ntutorial: {len(timings)} commands in {sum(t for t, _ in timings):.0f} s; slowest: "
              + "; ".join(f"{t:.0f} s {c[:40]}" for t, c in slowest))


def test_stated_output_matches_loosely():
    assert loose("whale chunks: done after 0.6 s (chunking documents 11/11, 21.2/s)").search(
        "12:35:26 whale chunks: done after 12.0 s (chunking documents 11/11, 1,021.2/s)")
    assert not loose("whale chunks: done").search("whale chunk_embeddings: done")
    assert unmatched(["run 1/2: a", "...", "│ chunks │ 155 │ …"],
                     "run 1/2: a\nx\n│ chunks     │ 160  │ 160 │ 3 │\n") == []
    assert unmatched(["second", "first"], "first\nsecond\n") == ["first"]  # order counts
    assert failed_checks([(r"embedding chunks (\d+)/", 100, 250)], "embedding chunks 155/155") == []
    assert failed_checks([(r"embedding chunks (\d+)/", 100, 250)], "embedding chunks 33/33") == [
        "check 'embedding chunks (\\\\d+)/': 33 outside [100, 250]"]


def test_blocks_skip_and_checks_are_read():
    page = steps("<!-- skip-ci: installs -->\n```bash\nmake install\n```\n\n```bash\nretro-ops corpus list\n```\n"
                 "```text\nname\n```\n<!-- check: (\\d+) files in 1..20 -->\n")
    assert [(s.commands, s.stated, s.checks) for s in page] == [
        (["retro-ops corpus list"], [["name"]], [(r"(\d+) files", 1.0, 20.0)])]
