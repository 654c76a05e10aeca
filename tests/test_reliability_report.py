"""docs/reliability.md cannot drift from the suite: every row is well formed and every test it
names exists (found by parsing the test files with `ast`, no pytest collection needed)."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "docs" / "reliability.md"
HEADER = ["fault or input", "test", "what happens", "what is lost"]
#: tests/file.py::test_name, optionally Class::test_name and a parametrize id in [...]
TEST_ID = re.compile(r"`?(?P<file>tests/[\w/]+\.py)::(?P<name>(?:Test\w+::)?test_\w+)(?P<param>\[[^\]]+\])?`?")


@cache
def defined_tests(file: Path) -> frozenset[str]:
    """`test_x` and `TestY::test_x` names defined in a test file (sync or async)."""
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names |= {f"{node.name}::{f.name}" for f in node.body
                      if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                      and f.name.startswith("test_")}
    return frozenset(names)


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def problems(markdown: str, repo: Path = REPO) -> tuple[list[str], int]:
    """What is wrong with the report's table (each naming the line), and how many rows it has."""
    lines = [(n, line) for n, line in enumerate(markdown.splitlines(), 1) if line.lstrip().startswith("|")]
    if len(lines) < 2 or cells(lines[0][1]) != HEADER:
        return [f"the table must start with | {' | '.join(HEADER)} |"], 0
    if not all(re.fullmatch(r":?-{3,}:?", c) for c in cells(lines[1][1])) or len(cells(lines[1][1])) != 4:
        return [f"line {lines[1][0]}: the header's separator row must be |---|---|---|---|"], 0
    found, seen, n_rows = [], set(), 0
    for n, line in lines[2:]:
        row = cells(line)
        if row == HEADER or (len(row) == 4 and all(re.fullmatch(r":?-{3,}:?", c) for c in row)):
            continue  # a section's own table repeats the header
        n_rows += 1
        if len(row) != 4 or not all(row):
            found.append(f"line {n}: a row needs 4 non-empty cells, got {len(row)}: {line.strip()}")
            continue
        ids = [part.strip() for part in row[1].split("<br>")]
        for test_id in ids:
            match = TEST_ID.fullmatch(test_id)
            if match is None:
                found.append(f"line {n}: {test_id!r} is not tests/file.py::test_name")
                continue
            file = repo / match["file"]
            if not file.is_file():
                found.append(f"line {n}: {match['file']} does not exist")
            elif match["name"] not in defined_tests(file):
                found.append(f"line {n}: {match['file']} has no test {match['name']}")
        if row[0] in seen:
            found.append(f"line {n}: the fault {row[0]!r} has a row already")
        seen.add(row[0])
    return found, n_rows


def test_every_row_names_an_existing_test():
    found, rows = problems(REPORT.read_text(encoding="utf-8"))
    assert found == []
    assert rows >= 30


GOOD = "| fault or input | test | what happens | what is lost |\n|---|---|---|---|\n"


@pytest.mark.parametrize("row, message", [
    ("| crash | tests/test_index.py::test_no_such_test | x | nothing |",
     r"tests/test_index.py has no test test_no_such_test"),
    ("| crash | tests/test_nowhere.py::test_x | x | nothing |", r"tests/test_nowhere.py does not exist"),
    ("| crash | test_index.py::test_sha256_mismatch_is_refused | x | nothing |",
     r"'test_index.py::test_sha256_mismatch_is_refused' is not tests/file.py::test_name"),
    ("| crash | tests/test_index.py::test_sha256_mismatch_is_refused | x |", r"4 non-empty cells, got 3"),
    ("| crash | tests/test_index.py::test_sha256_mismatch_is_refused | x |  |", r"4 non-empty cells, got 4"),
    ("| a | tests/test_index.py::test_sha256_mismatch_is_refused<br>tests/test_index.py::test_gone | x | y |",
     r"has no test test_gone"),
])
def test_a_bad_row_is_reported_with_its_line(row: str, message: str):
    found, _ = problems(GOOD + row + "\n")
    assert len(found) == 1
    assert re.search(r"^line 3: .*" + message, found[0]), found


def test_parametrized_ids_class_tests_and_header_are_checked(tmp_path: Path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "import pytest\n\n@pytest.mark.parametrize('a', [1])\ndef test_p(a):\n    pass\n\n"
        "class TestC:\n    def test_m(self):\n        pass\n\nasync def test_a():\n    pass\n")
    rows = ("| p | tests/test_x.py::test_p[1] | x | y |\n| m | `tests/test_x.py::TestC::test_m` | x | y |\n"
            "| a | tests/test_x.py::test_a | x | y |\n")
    assert problems(GOOD + rows, tmp_path) == ([], 3)
    found, _ = problems(GOOD + rows + "| p | tests/test_x.py::test_m | x | y |\n", tmp_path)
    assert found == ["line 6: tests/test_x.py has no test test_m", "line 6: the fault 'p' has a row already"]
    assert problems("| fault | test | what |\n|---|---|---|\n")[0] == [
        "the table must start with | fault or input | test | what happens | what is lost |"]
