"""The HTTP API reference, from the FastAPI app's own OpenAPI schema.

The app is built the way `retro-ops serve` builds it, over an empty home with nothing deployed
(routes and models do not depend on what is served), and its `openapi()` rendered: each route
with its description, request fields (type, default, bounds) and status codes."""

from __future__ import annotations

import tempfile
from pathlib import Path

from retro_ops.cli.reference.markdown import GENERATED, code, text

BOUNDS = ("minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def schema() -> dict:
    from retro_ops.serving.app import create_app
    from retro_ops.serving.deployment import DeploymentHolder
    from retro_ops.settings import Settings
    from retro_ops.workspace import Workspace

    with tempfile.TemporaryDirectory(prefix="retro-ops-openapi-") as home:
        ws = Workspace.open(Settings(home=Path(home)))
        try:
            holder = DeploymentHolder(ws, None, "openapi")  # nothing deployed: only the routes are read
            return create_app(holder, admin_token=None).openapi()
        finally:
            ws.catalog.close()


def _type(prop: dict, components: dict) -> str:
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in prop:
        return " or ".join(_type(p, components) for p in prop["anyOf"])
    return prop.get("type", "any")


def _number(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _limits() -> list[str]:
    from dataclasses import fields

    from retro_ops.serving.app import Limits

    return ["Caps checked beyond the schema (defaults of `retro_ops.serving.app.Limits`; `--max-new-tokens` "
            "and `--max-prompt-tokens` of `retro-ops serve` set two of them):", "",
            *(f"- {code(f.name)}: {_number(f.default)}" for f in fields(Limits)), ""]


def _fields(ref: str, components: dict) -> list[str]:
    model = components[ref.rsplit("/", 1)[-1]]
    required = set(model.get("required", []))
    rows = ["| field | type | default | bounds |", "|---|---|---|---|"]
    for name, prop in model.get("properties", {}).items():
        bounds = ", ".join(f"{b} {_number(prop[b])}" for b in BOUNDS if b in prop) or "-"
        default = "required" if name in required else code(repr(prop.get("default")))
        rows.append(f"| {code(name)} | {_type(prop, components)} | {default} | {bounds} |")
    return rows


def render() -> str:
    api = schema()
    components = api.get("components", {}).get("schemas", {})
    out = [GENERATED, "# HTTP API", "",
           f"`retro-ops serve` answers over HTTP ({text(api['info']['title'])}, version "
           f"{api['info']['version']}): {text(api['info'].get('description', ''))} This page is "
           "rendered from the server's OpenAPI schema, which a running server also serves at "
           "`/openapi.json` (and as pages at `/docs`).", "",
           "Every route can also answer 408 (a request's headers or body arrived past its deadline, "
           "`--header-timeout` / `--body-timeout`) and 503 beyond `--max-connections` open connections; "
           "those are cut before any route runs. Admin routes need `Authorization: Bearer <token>`, the "
           "token given by `RETRO_OPS_ADMIN_TOKEN` or `--token-file`.", "", *_limits()]
    for path, methods in api["paths"].items():
        for method, op in methods.items():
            out += [f"## {method.upper()} {path}", "", text(" ".join(op.get("description", "").split())), ""]
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body and "$ref" in body:
                out += [f"Request body ({code(body['$ref'].rsplit('/', 1)[-1])}, JSON):", "",
                        *_fields(body["$ref"], components), ""]
            headers = [p for p in op.get("parameters", []) if p.get("in") == "header"]
            if headers:
                out += ["Headers: " + ", ".join(code(h["name"]) for h in headers) + ".", ""]
            out += ["| status | meaning |", "|---|---|"]
            out += [f"| {status} | {text(answer.get('description', ''))} |"
                    for status, answer in sorted(op.get("responses", {}).items())]
            out.append("")
    return "\n".join(out).rstrip() + "\n"
