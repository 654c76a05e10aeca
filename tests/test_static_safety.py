"""Static checks over the source: nothing deserializes pickles or runs code shipped with a model,
and no secret is written into a config file.

The scan reads every module under retro_ops/, assets/ and bench/ with `ast` and resolves import
aliases, so `from pickle import loads as l; l(b)`, `p = pickle.load`, `getattr(pickle, "loads")`
and `torch.load(x, weights_only=False)` are caught, not only the literal spelling.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from assets.instance import dagster_yaml
from retro_ops.settings import DAGSTER_STORAGE_ENV, Settings

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("retro_ops", "assets", "bench")

#: functions that unpickle whatever bytes they are given (any reference is refused)
UNPICKLERS = {f"{module}.{name}" for module in ("pickle", "_pickle", "cPickle", "dill", "cloudpickle")
              for name in ("load", "loads", "Unpickler")} | {
    "joblib.load", "pandas.read_pickle", "shelve.open"}
#: modules whose attributes must not be fetched by name (getattr(pickle, "loads"))
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib"}
#: keyword arguments refused wherever they are passed as True
FORBIDDEN_TRUE_KEYWORDS = {"trust_remote_code", "allow_pickle"}

#: Vetted exceptions: {("path/relative/to/repo.py", "finding kind"): "why it is safe"}.
#: An entry must name who vetted it and what makes the loaded bytes trusted (e.g. a file shipped
#: inside an installed package and checked against the package's RECORD hashes). Empty today; a
#: later issue adds one. An entry that no longer matches a finding fails the test (no stale ones).
ALLOWED: dict[tuple[str, str], str] = {
    ("retro_ops/governance/toxicity.py", "joblib.load"):
        "vetted (issue #13): loads only alt-profanity-check's own model files, located through "
        "importlib.metadata and each checked against the sha256 in the package's RECORD first",
}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    kind: str  # e.g. "pickle.loads", "torch.load without weights_only=True"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}"


class Scanner(ast.NodeVisitor):
    """Finds unsafe deserialization in one module; `aliases` maps local names to dotted names."""

    def __init__(self, path: str):
        self.path = path
        self.aliases: dict[str, str] = {}
        self.findings: list[Finding] = []
        self._torch_load_calls: set[int] = set()  # ids of Attribute/Name nodes that are call targets

    def scan(self, tree: ast.AST) -> list[Finding]:
        for node in ast.walk(tree):  # imports anywhere in the file, before resolving names
            if isinstance(node, ast.Import):
                for alias in node.names:
                    local = alias.asname or alias.name.split(".")[0]
                    self.aliases[local] = alias.name if alias.asname else alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        self.visit(tree)
        return self.findings

    def qualified(self, node: ast.AST) -> str | None:
        """`np.load` -> "numpy.load" when `np` is `import numpy as np`; None if not a plain name chain."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        parts.append(self.aliases.get(node.id, node.id))
        return ".".join(reversed(parts))

    def add(self, node: ast.AST, kind: str) -> None:
        self.findings.append(Finding(self.path, node.lineno, kind))

    def visit_Call(self, node: ast.Call) -> None:
        name = self.qualified(node.func)
        if name == "torch.load":
            self._torch_load_calls.add(id(node.func))
            weights_only = [k for k in node.keywords if k.arg == "weights_only"]
            if not (weights_only and isinstance(weights_only[0].value, ast.Constant)
                    and weights_only[0].value.value is True):
                self.add(node, "torch.load without weights_only=True")
        if name == "getattr" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            target = self.qualified(node.args[0])
            if target in PICKLE_MODULES or f"{target}.{node.args[1].value}" in UNPICKLERS:
                self.add(node, f"getattr({target}, {node.args[1].value!r})")
        for keyword in node.keywords:
            if keyword.arg in FORBIDDEN_TRUE_KEYWORDS and not (
                    isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                self.add(node, f"{keyword.arg}={ast.unparse(keyword.value)}")
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:  # {"trust_remote_code": True} passed as **kwargs
        for key, value in zip(node.keys, node.values, strict=True):
            if (isinstance(key, ast.Constant) and key.value in FORBIDDEN_TRUE_KEYWORDS
                    and not (isinstance(value, ast.Constant) and value.value is False)):
                self.add(node, f"{key.value}={ast.unparse(value)}")
        self.generic_visit(node)

    def _reference(self, node: ast.Attribute | ast.Name) -> None:
        name = self.qualified(node)
        if name in UNPICKLERS:
            self.add(node, name)
        elif name == "torch.load" and id(node) not in self._torch_load_calls:
            self.add(node, "torch.load passed around (weights_only cannot be checked)")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._reference(node)  # the outermost attribute of a chain is the full name ...
        root = node.value
        while isinstance(root, ast.Attribute):
            root = root.value
        if not isinstance(root, ast.Name):  # ... but `f(pickle.loads).x` hides one inside
            self.visit(root)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in self.aliases:  # `from pickle import loads` used bare
            self._reference(node)


def scan_source(source: str, path: str = "<snippet>") -> list[Finding]:
    return Scanner(path).scan(ast.parse(source, filename=path))


def scan_tree() -> list[Finding]:
    findings = []
    for folder in SCANNED:
        for file in sorted((REPO / folder).rglob("*.py")):
            rel = str(file.relative_to(REPO))
            findings += scan_source(file.read_text(encoding="utf-8"), rel)
    return findings


@pytest.mark.parametrize("source, kind", [
    ("import pickle\npickle.load(f)", "pickle.load"),
    ("import pickle as p\nobj = p.loads(b)", "pickle.loads"),
    ("from pickle import loads as undo\nundo(b)", "pickle.loads"),
    ("import pickle\nreader = pickle.Unpickler", "pickle.Unpickler"),
    ("import pickle\nmap(pickle.loads, blobs)", "pickle.loads"),
    ("import pickle\nwrap(pickle.loads).cache_clear()", "pickle.loads"),
    ("def f():\n    import dill\n    return dill.loads(b)", "dill.loads"),
    ("import pickle\nf = getattr(pickle, 'loads')", "getattr(pickle, 'loads')"),
    ("import joblib\njoblib.load('m.joblib')", "joblib.load"),
    ("from joblib import load\nload('m.joblib')", "joblib.load"),
    ("import pandas as pd\npd.read_pickle(p)", "pandas.read_pickle"),
    ("import torch\ntorch.load(p)", "torch.load without weights_only=True"),
    ("import torch\ntorch.load(p, weights_only=False)", "torch.load without weights_only=True"),
    ("import torch\ntorch.load(p, **options)", "torch.load without weights_only=True"),
    ("from torch import load as tl\ntl(p)", "torch.load without weights_only=True"),
    ("import torch as T\nloader = T.load", "torch.load passed around (weights_only cannot be checked)"),
    ("import numpy as np\nnp.load(f, allow_pickle=True)", "allow_pickle=True"),
    ("from transformers import AutoModel\nAutoModel.from_pretrained(p, trust_remote_code=True)",
     "trust_remote_code=True"),
    ("AutoModel.from_pretrained(p, trust_remote_code=flag)", "trust_remote_code=flag"),
    ("kwargs = {'trust_remote_code': True}", "trust_remote_code=True"),
])
def test_scanner_catches_unsafe_loading(source: str, kind: str):
    assert kind in [f.kind for f in scan_source(source)]


@pytest.mark.parametrize("source", [
    "import torch\ntorch.load(p, weights_only=True)",
    "import torch as T\nT.load(p, map_location='cpu', weights_only=True)",
    "import json\njson.loads(s)",
    "import numpy as np\nnp.load(f)\nnp.load(f, allow_pickle=False)",
    "import pickle\nblob = pickle.dumps(x)",
    "self.load(x)\nstore.loads(y)",
    "AutoModel.from_pretrained(p, trust_remote_code=False)",
])
def test_scanner_passes_safe_loading(source: str):
    assert scan_source(source) == []


def test_no_unsafe_deserialization_in_the_code():
    findings = scan_tree()
    unexpected = [str(f) for f in findings if (f.path, f.kind) not in ALLOWED]
    assert unexpected == [], "unsafe loading (vet it and add it to ALLOWED with a reason):\n" + \
        "\n".join(unexpected)
    stale = sorted(set(ALLOWED) - {(f.path, f.kind) for f in findings})
    assert stale == [], f"ALLOWED entries that match nothing any more: {stale}"
    assert len(list((REPO / "retro_ops").rglob("*.py"))) > 40  # the scan saw the package


def test_dagster_yaml_names_the_env_var_not_the_password(home: Settings):
    """A Postgres URL's password would sit in plain text in $DAGSTER_HOME/dagster.yaml; the file
    names the environment variable instead (dagster resolves `{env: VAR}` when it opens)."""
    settings = replace(home, dagster_storage_url="postgresql://dagster:s3cr3t-pw@db.internal:5432/dg")
    written = dagster_yaml(settings)
    assert "s3cr3t-pw" not in written and "db.internal" not in written
    assert f"postgres_url:\n      env: {DAGSTER_STORAGE_ENV}\n" in written
