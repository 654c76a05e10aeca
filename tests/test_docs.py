"""The documentation cannot drift from the code: the site builds with every link and anchor
checked, the generated reference pages equal what the code renders now, and every `retro-ops`
line in the README and the docs parses against the real command line."""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from docs_helpers import (REPO, SCREENSHOTS, SCREENSHOTS_DIR, doc_files, fenced_blocks, parse_error, retro_ops_lines,
                          shell_commands)

from retro_ops.cli.reference import PAGES, write

REFERENCE = REPO / "docs" / "reference"


def test_generated_reference_pages_match_the_code(tmp_path: Path):
    written = {p.name: p.read_text(encoding="utf-8") for p in write(tmp_path)}
    assert sorted(written) == sorted(PAGES)
    stale = []
    for name, fresh in written.items():
        committed = (REFERENCE / name).read_text(encoding="utf-8") if (REFERENCE / name).exists() else ""
        if committed != fresh:
            diff = difflib.unified_diff(committed.splitlines(), fresh.splitlines(), f"docs/reference/{name}",
                                        "rendered from the code", lineterm="", n=1)
            stale.append("\n".join(list(diff)[:40]))
    assert not stale, "run `make reference` and commit docs/reference/:\n" + "\n".join(stale)


def test_the_site_builds_strictly(tmp_path: Path):
    """`mkdocs build --strict`: a broken link or anchor, a page missing from the nav or a bad
    config is a warning, and a warning fails the build."""
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                            str(REPO / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                           cwd=REPO, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert built.returncode == 0, built.stdout + built.stderr
    assert (tmp_path / "site" / "tutorial" / "index.html").exists()
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").exists()


def test_every_retro_ops_line_in_the_docs_parses():
    found = [(path, line, command) for path in doc_files()
             for line, command in retro_ops_lines(path.read_text(encoding="utf-8"))]
    assert len(found) > 100  # the tutorial, the how-tos and the reference name many
    errors = [f"{path.relative_to(REPO)}:{line}: {command}\n    {error}" for path, line, command in found
              if (error := parse_error(command))]
    assert errors == []


@pytest.mark.parametrize("command, error", [
    ("retro-ops train --steps two", r"^BadParameter: .*integer"),
    ("retro-ops train --step 2", r"^NoSuchOption: No such option: --step"),
    ("retro-ops corpus ad wiki wiki/", r"^UsageError: No such command 'ad'"),
    ("retro-ops retrieve 'the sea' --set", r"^BadOptionUsage: Option '--set' requires an argument"),
    ("retro-ops retrieve 'the sea'", r"^MissingParameter: Missing parameter: set_name"),
    ("retro-ops lineage model retro [--json]", r"^UsageError: Got unexpected extra argument"),
    ("retro-ops COMMAND --help", r"^UsageError: No such command '1'"),
])
def test_a_line_that_does_not_parse_is_named(command: str, error: str):
    assert re.search(error, parse_error(command) or ""), parse_error(command)


@pytest.mark.parametrize("command", [
    "retro-ops --help", "retro-ops corpus", "retro-ops eval", "retro-ops exclude chunk CHUNK_ID --reason spam",
    'RETRO_OPS_HOME=/tmp/h .venv/bin/retro-ops retrieve "$QUERY" --set whale -k 2 | head -5',
    "retro-ops serve --model retro --set whale --port 8765 > serve.log 2>&1 &",
])
def test_placeholders_references_and_shell_around_a_line_are_allowed(command: str):
    assert parse_error(command) is None


def test_blocks_and_their_comments_are_read(tmp_path: Path):
    markdown = ("Text `retro-ops corpus list` here.\n\n<!-- skip-ci: needs a browser -->\n"
                "```bash\n# a comment\nretro-ops ui \\\n  --port 3001\n```\n\n```text\nout\n```\n")
    [shell, out] = fenced_blocks(markdown)
    assert (shell.lang, shell.comment, shell.line) == ("bash", "<!-- skip-ci: needs a browser -->", 4)
    assert (out.lang, out.text, out.comment) == ("text", "out", "")
    assert retro_ops_lines(markdown) == [(4, "retro-ops ui --port 3001"), (1, "retro-ops corpus list")]


def test_the_tutorial_shows_the_screenshots_the_browser_test_takes():
    tutorial = (REPO / "docs" / "tutorial.md").read_text(encoding="utf-8")
    shown = re.findall(r"\(images/ui/([\w.-]+\.png)\)", tutorial)
    assert sorted(shown) == sorted(SCREENSHOTS)
    for name in SCREENSHOTS:  # small enough to commit
        assert (SCREENSHOTS_DIR / name).stat().st_size < 300_000, name


def _section(markdown: str, heading: str) -> str:
    """The text under a `## heading`, up to the next `## `."""
    start = markdown.index(f"\n## {heading}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start:end if end != -1 else None]


README = (REPO / "README.md").read_text(encoding="utf-8")


def test_the_readme_is_short_and_its_links_lead_somewhere():
    assert len(README.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    assert len(links) > 20
    missing = [link for link in links if not link.startswith("http") and not (REPO / link).exists()]
    assert missing == []
    assert "../" not in README and "issue #" not in README  # nothing outside the repository, no issue numbers


def test_the_readme_names_only_real_make_targets_paths_and_assets():
    from assets.definitions import ALL_ASSETS
    from assets.sharded import SHARDED_ASSETS

    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", README))
    assert named and named <= targets
    assert re.search(r"^demo:.*\n\t\$\(BIN\)/retro-ops demo$", makefile, re.M)  # "make demo runs retro-ops demo"
    assert (REPO / ".ci" / "run").read_text(encoding="utf-8").rstrip().endswith("make test")  # "what CI runs"
    assert 'testpaths = ["tests"]' in (REPO / "pyproject.toml").read_text(encoding="utf-8")  # bench/ is not run
    mocks = [p.name for p in (REPO / "tests").glob("*.py") if p.name != Path(__file__).name  # "on real parts"
             and re.search(r"unittest\.mock|MagicMock|monkeypatch\.setattr", p.read_text(encoding="utf-8"))]
    assert mocks == []
    layout = next(b.text for b in fenced_blocks(_section(README, "Layout")) if b.lang == "text")
    paths = [line.split()[0] for line in layout.splitlines() if line.strip()]
    assert [p for p in paths if not (REPO / p).exists()] == []
    assets = {a.key.to_user_string() for a in ALL_ASSETS + SHARDED_ASSETS}
    diagram = fenced_blocks(_section(README, "The flow"))[0].text
    shown = set(re.findall(r"[a-z]+(?:_[a-z]+)+|documents|chunks|exclusions|evaluation", diagram))
    assert shown <= assets, shown - assets
    assert {"documents", "chunks", "chunk_embeddings", "retrieval_set", "faiss_index", "training_neighbours",
            "retro_checkpoint", "evaluation"} <= shown
    assert diagram == fenced_blocks((REPO / "docs" / "index.md").read_text(encoding="utf-8"))[0].text


def test_the_readme_job_blocks_are_commands_the_tutorial_runs():
    """Every command of the four jobs is run, as written, by the tutorial test."""
    from tutorial_runner import steps

    run = {c for s in steps((REPO / "docs" / "tutorial.md").read_text(encoding="utf-8")) for c in s.commands}
    jobs = [c for b in fenced_blocks(_section(README, "The four jobs")) if b.lang == "bash"
            for c in shell_commands(b.text)]
    assert len(jobs) >= 10
    assert [c for c in jobs if c not in run] == []


def test_the_readme_headlines_are_on_the_pages_they_link():
    section = _section(README, "Results")
    headlines = re.findall(r"^- \[[^\]]+\]\((docs/results/[^)]+)\): (.+)$", section, re.M)
    assert len(headlines) >= 4
    for page, claim in headlines:
        text = (REPO / page).read_text(encoding="utf-8")
        numbers = re.findall(r"\d[\d,.]*\d|\d", claim)
        assert numbers and [n for n in numbers if n not in text] == [], (page, claim)


def test_the_policy_example_loads(tmp_path: Path):
    from retro_ops.governance.policy import load_policy

    page = (REPO / "docs" / "how-to" / "exclusion-policy.md").read_text(encoding="utf-8")
    [example] = [b.text for b in fenced_blocks(page) if b.lang == "toml"]
    (tmp_path / "safety.toml").write_text(example, encoding="utf-8")
    policy = load_policy(tmp_path / "safety.toml")
    assert policy.name == "safety-v1" and len(policy.rules) == 3


def test_the_library_imports_no_dagster():
    """The README's layout says so: only the code location (`assets/`) and the command line
    (`retro_ops/cli/`, which launches runs and renders the asset reference) import Dagster."""
    import ast

    found = []
    for path in sorted((REPO / "retro_ops").rglob("*.py")):
        if "cli" in path.relative_to(REPO / "retro_ops").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(REPO)}:{node.lineno}" for n in names if n.split(".")[0] == "dagster"]
    assert found == []


def test_the_readme_retrieval_numbers_are_on_the_results_page():
    """The README's paragraph on retrieval quotes only numbers its results page holds."""
    section = _section(README, "Does RETRO read its neighbours?")
    assert "(docs/results/retrieval.md)" in section
    page = (REPO / "docs" / "results" / "retrieval.md").read_text()
    numbers = re.findall(r"\d+\.\d+(?:-\d+\.\d+)?", section)
    assert len(numbers) >= 3
    assert [n for n in numbers if n not in page] == []
