"""The asset reference: every asset of the Dagster code location with its group, partitions,
dependencies, automation, checks, run config and the metadata keys its materializations show.

The graph comes from the loaded definitions (the scale-out assets included); the metadata keys are
read from the asset code (`metadata=` dicts, a `metadata` variable and its updates, and the
helpers they call in the same module), so a key added to an asset shows here at once. Keys built
at run time are named by the expression that builds them."""

from __future__ import annotations

import ast
import inspect
import textwrap
import typing
from functools import cache

from retro_ops.cli.reference.markdown import GENERATED, anchor, code, text

GROUP_ORDER = ("corpora", "features", "governance", "retrieval", "models", "evaluation", "serving", "scale_out")


@cache
def _module_tree(module) -> ast.Module:
    return ast.parse(inspect.getsource(module))


def _function_node(fn) -> tuple[ast.Module, ast.FunctionDef | None]:
    tree = _module_tree(inspect.getmodule(fn))
    candidates = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == fn.__name__
                  and n.lineno >= fn.__code__.co_firstlineno]
    return tree, min(candidates, key=lambda n: n.lineno, default=None)


class _MetadataKeys:
    """Collects the keys of the metadata an asset function (and its same-module helpers) emits."""

    def __init__(self, tree: ast.Module):
        self.functions = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        self.keys: list[str] = []
        self.computed: list[str] = []
        self.seen: set[str] = set()

    def _add(self, key: str, into: list[str]) -> None:
        if key not in into:
            into.append(key)

    def _returns(self, name: str) -> None:
        if name in self.seen or name not in self.functions:
            return
        self.seen.add(name)
        for node in ast.walk(self.functions[name]):
            if isinstance(node, ast.Return) and node.value is not None:
                self.dict_keys(node.value)

    def dict_keys(self, expr: ast.expr) -> None:
        if isinstance(expr, ast.Dict):
            for key, value in zip(expr.keys, expr.values):
                if key is None:
                    self.dict_keys(value)
                elif isinstance(key, ast.Constant) and isinstance(key.value, str):
                    self._add(key.value, self.keys)
                else:
                    self._add(ast.unparse(key), self.computed)
        elif isinstance(expr, ast.DictComp):
            self._add(ast.unparse(expr.key), self.computed)
        elif isinstance(expr, ast.IfExp):
            self.dict_keys(expr.body)
            self.dict_keys(expr.orelse)
        elif isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in self.functions:
            self._returns(expr.func.id)
        elif isinstance(expr, ast.Call):
            self._add(f"keys of {ast.unparse(expr.func)}()", self.computed)

    def visit(self, fn: ast.FunctionDef) -> None:
        if fn.name in self.seen:
            return
        self.seen.add(fn.name)
        for node in ast.walk(fn):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "metadata" and not isinstance(kw.value, ast.Name):
                        self.dict_keys(kw.value)
                if (isinstance(node.func, ast.Attribute) and node.func.attr == "update"
                        and isinstance(node.func.value, ast.Name) and "metadata" in node.func.value.id):
                    self.dict_keys(node.args[0])
                if isinstance(node.func, ast.Name) and node.func.id in self.functions:
                    self.visit(self.functions[node.func.id])
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name) and "metadata" in target.id:
                    self.dict_keys(node.value)
                elif (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                      and "metadata" in target.value.id and isinstance(target.slice, ast.Constant)):
                    self._add(target.slice.value, self.keys)


def metadata_keys(fn) -> tuple[list[str], list[str]]:
    """(literal keys, descriptions of keys computed at run time) of an asset function."""
    tree, node = _function_node(fn)
    collector = _MetadataKeys(tree)
    if node is not None:
        collector.visit(node)
    return collector.keys, collector.computed


def _typed_params(fn) -> list[type]:
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):
        return []
    return [h for h in hints.values() if inspect.isclass(h)]


def _doc(cls) -> str:
    return text(" ".join(textwrap.dedent(inspect.getdoc(cls) or "").split()))


def _config_lines(fn) -> list[str]:
    """The run config an asset takes and the resources it uses (described once, below)."""
    import dagster as dg

    lines, resources = [], []
    for hint in _typed_params(fn):
        if issubclass(hint, dg.ConfigurableResource):
            resources.append(f"[{code(hint.__name__)}](#{anchor(hint.__name__)})")
        elif issubclass(hint, dg.Config):
            fields = ", ".join(code(f"{name} = {field.default!r}") for name, field in hint.model_fields.items())
            lines.append(f"- run config ({code(hint.__name__)}): {fields}. {_doc(hint)}".rstrip())
    return lines + ([f"- resources: {', '.join(resources)}"] if resources else [])


def _resource_lines(resources: dict) -> list[str]:
    out = ["## Resources", "", "What the assets above read and write through; every field empty by default "
           "(resolved from the home and the environment, see [Settings and environment](settings.md)).", ""]
    for cls in sorted({type(r) for r in resources.values()}, key=lambda c: c.__name__):
        fields = ", ".join(code(name) for name in cls.model_fields) or "none"
        out += [f"### {cls.__name__}", "", _doc(cls), "", f"- fields: {fields}", ""]
    return out


def _partitions(spec) -> str:
    pd = spec.partitions_def
    if pd is None:
        return "-"
    if hasattr(pd, "partitions_defs"):
        return " x ".join(d.name for d in pd.partitions_defs)
    return getattr(pd, "name", None) or type(pd).__name__


def _ordered(graph, specs: dict) -> list:
    """Keys by group (pipeline order), each group in dependency order."""
    order, placed = [], set()

    def place(key):
        if key in placed or key not in specs:
            return
        placed.add(key)
        for dep in sorted(specs[key].deps, key=lambda d: d.asset_key.to_user_string()):
            if specs.get(dep.asset_key) is not None and specs[dep.asset_key].group_name == specs[key].group_name:
                place(dep.asset_key)
        order.append(key)

    for group in GROUP_ORDER:
        for key in sorted(k for k in specs if specs[k].group_name == group):
            place(key)
    return order + sorted((k for k in specs if k not in placed), key=lambda k: k.to_user_string())


def _asset_section(graph, spec) -> list[str]:
    key = spec.key.to_user_string()
    node = graph.get(spec.key)
    fn = graph.assets_def_for_key(spec.key).op.compute_fn.decorated_fn
    deps = ", ".join(f"[{code(d.asset_key.to_user_string())}](#{anchor(d.asset_key.to_user_string())})"
                     for d in sorted(spec.deps, key=lambda d: d.asset_key.to_user_string())) or "-"
    label = spec.automation_condition.get_label() if spec.automation_condition else None
    kind = "observable source" if node.is_observable else "asset"
    lines = [f"### {key}", "", text(" ".join((spec.description or "").split())), "",
             f"- {kind} in group {code(spec.group_name)}; partitioned by {_partitions(spec)}; "
             f"kinds {', '.join(code(k) for k in sorted(spec.kinds)) or '-'}; owners "
             f"{', '.join(code(o) for o in spec.owners) or '-'}",
             f"- depends on {deps}",
             f"- automation: {text(label) if label else 'none (materialized on request)'}"
             + (f"; code version {code(node.code_version)}" if node.code_version else "")]
    for check_key in sorted(graph.get_check_keys_for_assets({spec.key}), key=lambda c: c.name):
        check = graph.get(check_key)
        description = text(" ".join((check.description or "").split()))
        lines.append(f"- check {code(check_key.name)}{' (blocking)' if check.blocking else ''}: "
                     f"{description}".rstrip(": "))
    lines += _config_lines(fn)
    keys, computed = metadata_keys(fn)
    if keys or computed:
        shown = ", ".join(code(k) for k in keys)
        extra = "; computed: " + ", ".join(code(c) for c in computed) if computed else ""
        lines.append(f"- metadata: {shown}{extra}")
    return lines + [""]


def render() -> str:
    import dagster as dg

    from assets.definitions import ALL_ASSETS, DEDUP_CHECKS, default_resources
    from assets.sharded import SHARDED_ASSETS

    resources = default_resources()  # the scale-out route is listed whatever RETRO_OPS_SCALE_OUT says
    defs = dg.Definitions(assets=ALL_ASSETS + SHARDED_ASSETS, asset_checks=DEDUP_CHECKS, resources=resources)
    graph = defs.resolve_asset_graph()
    specs = {s.key: s for s in defs.resolve_all_asset_specs()}
    out = [GENERATED, "# Assets", "",
           "Every asset of the Dagster code location (`assets/definitions.py`), by group in the order "
           "data flows, with its partitions, dependencies, automation, checks, run config and the "
           "metadata keys its materializations carry (what the UI shows on the asset's page). "
           "Blocking checks stop everything downstream of a failed partition.", ""]
    groups = [g for g in GROUP_ORDER if any(s.group_name == g for s in specs.values())]
    out += ["| group | assets |", "|---|---|"]
    for group in groups:
        members = [k.to_user_string() for k in _ordered(graph, specs) if specs[k].group_name == group]
        out.append(f"| {code(group)} | {', '.join(f'[{code(m)}](#{anchor(m)})' for m in members)} |")
    out.append("")
    current = None
    for key in _ordered(graph, specs):
        if specs[key].group_name != current:
            current = specs[key].group_name
            out += [f"## Group {current}", ""]
        out += _asset_section(graph, specs[key])
    out += _resource_lines(resources)
    return "\n".join(out).rstrip() + "\n"
