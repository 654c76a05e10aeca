"""The generated reference pages (docs/reference/): the command line, settings and environment,
the Dagster assets and the HTTP API, each rendered from the code.

`python -m retro_ops.cli.reference [FOLDER]` writes them (default docs/reference); `make
reference` does the same. tests/test_docs.py renders them again and fails on any difference, so a
change to a command, setting, asset or route shows up as a diff of the committed pages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def _pages() -> dict[str, Callable[[], str]]:
    from retro_ops.cli.reference import asset_graph, commands, environment, http_api

    return {"cli.md": commands.render, "settings.md": environment.render,
            "assets.md": asset_graph.render, "http-api.md": http_api.render}


PAGES = ("cli.md", "settings.md", "assets.md", "http-api.md")


def render_all() -> dict[str, str]:
    """file name -> its Markdown."""
    return {name: render() for name, render in _pages().items()}


def write(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, page in render_all().items():
        path = folder / name
        path.write_text(page, encoding="utf-8")
        written.append(path)
    return written
