"""The library is laid out the way the data flows, and no stage imports a later one.

The allowed order is written once, in LAYERS: a module may import its own layer and any layer
before it, never one after. A package whose parts are ordered too names them as sub-layers
(`retrieval.index`): the index route builds from retrieval sets and the retriever serves what it
publishes, never the reverse. Imports under `if TYPE_CHECKING:` are type hints only (they never
run), so they are not dependencies. `assets` (Dagster) and `cli` sit above the whole library.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LAYERS: tuple[tuple[str, ...], ...] = (
    ("retro_ops", "errors", "ids", "settings", "durable"),  # identity, errors, where things live, durable files
    ("corpus",),            # files -> documents
    ("catalog",),           # the records every stage writes: SQL catalog + MLflow runs
    ("features",),          # documents -> chunks -> embeddings (LanceDB)
    ("governance",),        # chunk texts -> scores (LanceDB) -> policies -> exclusions
    ("retrieval", "retrieval.sets"),  # embeddings -> retrieval sets (pinned versions of chunks)
    ("retrieval.index",),   # a retrieval-set version -> a published FAISS index
    ("retrieval.retriever",),  # the published index -> neighbours of a query (serving side)
    ("workspace",),         # one handle on a home's stores
    ("erasure",),           # purges: delete text from every store, rebuild the sets that held it
    ("model",),             # the RETRO network
    ("training",),          # chunks + neighbours -> checkpoints
    ("evaluation",),        # checkpoints -> bits per byte
    ("generations",),       # served generations -> the generation log (LanceDB + MLflow traces)
    ("lineage",),           # audits over everything recorded below
    ("serving",),           # checkpoints + a retrieval set -> generated text
    ("default_corpora",),   # what the demo ships
    ("assets",),            # the Dagster code location
    ("cli",),               # the command line
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def unit_of(module: str) -> str:
    """`retro_ops.features.store` -> `features`; `assets.training` -> `assets`; a sub-layer
    where LAYERS names one: `retro_ops.retrieval.index.route` -> `retrieval.index`."""
    parts = module.split(".")
    if parts[0] == "assets":
        return "assets"
    sub = ".".join(parts[1:3])
    return sub if sub in RANK else parts[1] if len(parts) > 1 else "retro_ops"


def _imported(module: str, name: str) -> str:
    """What `from module import name` depends on: `module.name` where that is a sub-layer of its
    own (`from retro_ops.retrieval import retriever`), else `module`."""
    named = f"{module}.{name}"
    return named if unit_of(named) in RANK and unit_of(named) != unit_of(module) else module


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(tree: ast.AST, packages: tuple[str, ...] = ("retro_ops", "assets")) -> list[tuple[int, str]]:
    """(line, module) of every run-time import of `packages`, lazy ones included."""
    found: list[tuple[int, str]] = []
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "retro_ops":  # `from retro_ops import features` names a unit
                found += [(node.lineno, "retro_ops" if a.name.startswith("__") else f"retro_ops.{a.name}")
                          for a in node.names]
            else:
                found += sorted({(node.lineno, _imported(node.module, a.name)) for a in node.names})
    return sorted((line, mod) for line, mod in found if mod.split(".")[0] in packages)


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def upward_imports(root: Path) -> list[str]:
    """Every import in `root`'s retro_ops/ and assets/ that reaches a later layer."""
    problems = []
    for package in ("retro_ops", "assets"):
        for path in sorted((root / package).rglob("*.py")):
            importer = unit_of(module_name(path, root))
            if importer not in RANK:
                problems.append(f"{path.relative_to(root)}: unit {importer!r} is not in LAYERS")
                continue
            for line, target in imported_modules(ast.parse(path.read_text(), str(path))):
                imported = unit_of(target)
                if imported not in RANK:
                    problems.append(f"{path.relative_to(root)}:{line}: imports unknown unit {target}")
                elif RANK[imported] > RANK[importer]:
                    problems.append(f"{path.relative_to(root)}:{line}: {importer} imports {target} "
                                    f"(a later layer: {imported})")
    return problems


def dagster_imports(root: Path) -> list[str]:
    """Every run-time import of Dagster (or of a dagster-* package) by a stage of the library:
    only the command line (`cli`), above every stage, may launch runs."""
    problems = []
    for path in sorted((root / "retro_ops").rglob("*.py")):
        if unit_of(module_name(path, root)) == "cli":
            continue
        tree = ast.parse(path.read_text(), str(path))
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        dagster = tuple(n.split(".")[0] for n in names if n.split(".")[0].startswith("dagster"))
        problems += [f"{path.relative_to(root)}:{line}: imports {mod}"
                     for line, mod in imported_modules(tree, dagster)]
    return problems


def plant(root: Path, sources: dict[str, str]) -> Path:
    """A tree to check under `root`: each `sources` path holds its text, every folder above it
    is a package, and `assets/` exists (as `upward_imports` expects)."""
    (root / "assets").mkdir(exist_ok=True)
    for rel, text in sources.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in [path.parent, *path.parent.parents]:
            if folder == root:
                break
            (folder / "__init__.py").touch()
        path.write_text(text)
    return root


def test_no_stage_imports_a_later_stage():
    assert upward_imports(REPO) == []


def test_every_unit_of_the_package_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in (REPO / "retro_ops").iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").exists()) and p.name != "__pycache__"}
    units = {"retro_ops" if u == "__init__" else u for u in units}
    assert units - RANK.keys() == set()


def test_an_upward_import_is_caught(tmp_path):
    """The checker itself can fail: a features module importing training is reported, lazy or
    not, while the same import under TYPE_CHECKING and a downward import are not."""
    plant(tmp_path, {"retro_ops/features/store.py": (
        "from typing import TYPE_CHECKING\n"
        "from retro_ops.corpus import Document\n"
        "if TYPE_CHECKING:\n    from retro_ops.serving.app import create_app\n"
        "def f():\n    from retro_ops.training.run import train_model\n"
        "import assets.definitions\n")})
    problems = upward_imports(tmp_path)
    assert problems == [
        "retro_ops/features/store.py:6: features imports retro_ops.training.run (a later layer: training)",
        "retro_ops/features/store.py:7: features imports assets.definitions (a later layer: assets)",
    ]


def test_no_stage_imports_dagster():
    """What README's layout says: Dagster is imported by `assets/` and the command line only."""
    assert dagster_imports(REPO) == []


def test_an_upward_import_into_a_moved_module_is_caught(tmp_path):
    """The modules issue #26 moved are checked like the rest: the purge records in `catalog`
    reaching up to `erasure`, the generation log's records reaching up to the generator they
    once duck-typed, and a stage importing Dagster are all reported."""
    plant(tmp_path, {
        "retro_ops/catalog/purges.py":
            "from retro_ops.catalog import tables as m\nfrom retro_ops.erasure.store import erase_documents\n",
        "retro_ops/generations/records.py":
            "def record_of(result):\n    from retro_ops.serving.generator import Generation\n",
        "retro_ops/erasure/store.py": "from retro_ops.features.store import FeatureStore\nimport dagster as dg\n",
    })
    assert upward_imports(tmp_path) == [
        "retro_ops/catalog/purges.py:2: catalog imports retro_ops.erasure.store (a later layer: erasure)",
        "retro_ops/generations/records.py:2: generations imports retro_ops.serving.generator "
        "(a later layer: serving)",
    ]
    assert dagster_imports(tmp_path) == ["retro_ops/erasure/store.py:2: imports dagster"]


def test_an_upward_import_into_the_index_route_is_caught(tmp_path):
    """The index route is a sub-layer: retrieval sets (below it) and features may not import it,
    it may not import the retriever (above it) however the import is spelled, and it may import
    retrieval sets."""
    plant(tmp_path, {
        "retro_ops/features/store.py": "from retro_ops.retrieval.index.publish import index_root\n",
        "retro_ops/retrieval/sets.py": "from retro_ops.retrieval.index import route\n",
        "retro_ops/retrieval/index/route.py": (
            "from retro_ops.retrieval.sets import retrieval_set_vectors\n"
            "from retro_ops.retrieval.index.build import IndexConfig\n"
            "from retro_ops.retrieval import retriever\n"
            "def f():\n    from retro_ops.retrieval.retriever import Retriever\n"),
    })
    assert upward_imports(tmp_path) == [
        "retro_ops/features/store.py:1: features imports retro_ops.retrieval.index.publish "
        "(a later layer: retrieval.index)",
        "retro_ops/retrieval/index/route.py:3: retrieval.index imports retro_ops.retrieval.retriever "
        "(a later layer: retrieval.retriever)",
        "retro_ops/retrieval/index/route.py:5: retrieval.index imports retro_ops.retrieval.retriever "
        "(a later layer: retrieval.retriever)",
        "retro_ops/retrieval/sets.py:1: retrieval.sets imports retro_ops.retrieval.index "
        "(a later layer: retrieval.index)",
    ]


#: What the code location must load without: each costs seconds in every process that loads it
#: (the UI's code server, the daemon, `dagster definitions validate`); the asset bodies import them.
HEAVY_PACKAGES = ("torch", "transformers", "lancedb", "mlflow", "datasketch", "sklearn", "onnxruntime")


def test_the_code_location_loads_without_the_heavy_packages():
    import subprocess
    import sys

    probe = ("import sys, assets.definitions; "
             f"print(' '.join(p for p in {HEAVY_PACKAGES!r} if p in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [], f"loading assets.definitions imported {done.stdout.strip()}"
