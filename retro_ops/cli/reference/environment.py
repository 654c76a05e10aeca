"""The settings and environment reference: `Settings` field by field, the locations derived from
the home, and every `RETRO_OPS_*` variable the library and the code location read.

Variables are found by reading the source (no import needed): a module-level constant whose value
is `"RETRO_OPS_..."` defines one, and its description is the comment on that line or the `#:`
lines just above it. A variable named in the code that no constant defines, or a constant without
a description, is an error: the page cannot silently leave one out."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

from retro_ops.cli.reference.markdown import GENERATED, code, text
from retro_ops.settings import Settings

REPO = Path(__file__).resolve().parents[3]
SCANNED = ("retro_ops", "assets")  # the library and the Dagster code location
VARIABLE = re.compile(r"RETRO_OPS_[A-Z0-9_]+")


@dataclass(frozen=True)
class Variable:
    name: str
    constant: str  # the Python name that holds it
    module: str  # where it is defined, e.g. retro_ops/settings.py
    description: str


def _comments(source: str) -> dict[int, str]:
    """Line number -> the comment on it (without `#`, `#:` and surrounding blanks)."""
    found = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            found[tok.start[0]] = re.sub(r"^#:?\s?", "", tok.string).strip()
    return found


def _description(node: ast.stmt, lines: list[str], comments: dict[int, str]) -> str:
    trailing = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
    above, n = [], node.lineno - 1
    while n >= 1 and lines[n - 1].lstrip().startswith("#:"):
        above.insert(0, comments[n])
        n -= 1
    return " ".join(above + trailing)


def variables(repo: Path = REPO) -> list[Variable]:
    """Every RETRO_OPS_* variable defined in the scanned packages, sorted by name."""
    defined: dict[str, Variable] = {}
    named: dict[str, str] = {}  # variable -> a module that names it
    missing: list[str] = []
    for package in SCANNED:
        for path in sorted((repo / package).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            tree, lines, comments = ast.parse(source), source.splitlines(), _comments(source)
            module = path.relative_to(repo).as_posix()
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and VARIABLE.fullmatch(node.value):
                    named.setdefault(node.value, module)
            for node in tree.body:
                if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                        and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Constant)
                        and isinstance(node.value.value, str) and VARIABLE.fullmatch(node.value.value)):
                    continue
                description = _description(node, lines, comments)
                if not description:
                    missing.append(f"{module}:{node.lineno}: {node.value.value} has no description "
                                   "(a comment on its line or `#:` lines above it)")
                defined[node.value.value] = Variable(node.value.value, node.targets[0].id, module, description)
    missing += [f"{module}: {name} is read but no constant defines it (NAME = \"{name}\"  # what it does)"
                for name, module in sorted(named.items()) if name not in defined]
    if missing:
        raise ValueError("environment variables the reference cannot describe:\n" + "\n".join(missing))
    return sorted(defined.values(), key=lambda v: v.name)


def _settings_rows() -> list[str]:
    source = inspect.getsource(Settings)
    comments = _comments(source)
    tree = ast.parse(source).body[0]
    field_lines = {n.target.id: n.lineno for n in tree.body
                   if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    from_env = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "from_env")
    call = next(n for n in ast.walk(from_env) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                and n.func.id == "cls")
    constants = {v.constant: v.name for v in variables()}
    local = {n.targets[0].id: n.value for n in ast.walk(from_env)
             if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)}

    def read_by(expr: ast.expr, depth: int = 0) -> set[str]:
        """The variables an expression reads, through the local names it uses (`profile`, `derived`)."""
        found = set()
        for n in ast.walk(expr):
            if isinstance(n, ast.Name) and n.id in constants:
                found.add(constants[n.id])
            elif isinstance(n, ast.Name) and n.id in local and depth < 3:
                found |= read_by(local[n.id], depth + 1)
        return found

    env_of = {kw.arg: sorted(read_by(kw.value)) for kw in call.keywords}
    rows = ["| field | type | default | set by | meaning |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(Settings):
        default = "" if f.default is dataclasses.MISSING else repr(f.default)
        if f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        env = ", ".join(code(e) for e in env_of.get(f.name, [])) or "-"
        meaning = comments.get(field_lines.get(f.name, 0), "")
        rows.append(f"| {code(f.name)} | {code(f.type)} | {code(default) if default else '-'} | {env} | "
                    f"{text(meaning) or '-'} |")
    return rows


def _locations() -> list[str]:
    """The home's derived locations: each property of Settings with the expression it returns."""
    rows = ["| location | where | what |", "|---|---|---|"]
    tree = ast.parse(inspect.getsource(Settings)).body[0]
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list):
            returned = next(n.value for n in ast.walk(node) if isinstance(n, ast.Return))
            doc = (ast.get_docstring(node) or "").split("\n")[0]
            rows.append(f"| {code(node.name)} | {code(ast.unparse(returned))} | {text(doc) or '-'} |")
    return rows


def render() -> str:
    out = [GENERATED, "# Settings and environment", "",
           "Everything retro-ops keeps lives under one home folder, `RETRO_OPS_HOME` (default "
           "`./.retro_ops`); every store can be pointed elsewhere by the variables below. A process "
           "reads them once, as `Settings.from_env()` (`retro_ops/settings.py`).", "",
           "## Settings", "", *_settings_rows(), "",
           "## Locations under the home", "",
           "Derived from the home each time a process starts (so a copied home reads its own files).",
           "", *_locations(), "",
           "## Environment variables", "",
           "Every `RETRO_OPS_*` variable read by the library (`retro_ops/`) or the Dagster code "
           "location (`assets/`), with the module that defines it. On/off switches take "
           "`1/true/yes/on` and `0/false/no/off`.", "",
           "| variable | defined in | what it does |", "|---|---|---|"]
    out += [f"| {code(v.name)} | {code(v.module)} | {text(v.description)} |" for v in variables()]
    return "\n".join(out) + "\n"
