"""Help that reads at 80 columns: every command's `--help` fits, no option name is cut or
wrapped, and `retro-ops --help` lists the commands in the order of the flow."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from retro_ops.cli.main import FLOW, app

ROOT = typer.main.get_command(app)


def _commands(command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """Every visible command and group under `command`, with its path of names."""
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        if not sub.hidden:
            found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(ROOT)


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "retro-ops")
def test_help_fits_80_columns_with_whole_option_names(path):
    command = dict(COMMANDS)[path]
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    too_wide = [line for line in result.output.splitlines() if len(line) > 80]
    assert too_wide == []
    names = [n for p in command.params if p.param_type_name == "option" and not p.hidden
             for n in (*p.opts, *p.secondary_opts)]
    for name in (*names, "--help"):  # the whole name on one line, not cut (`--retrieval-s…`) or broken
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", result.output), (name, result.output)


def test_commands_listed_in_the_order_of_the_flow():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "80"}, terminal_width=80)
    listed = result.output.split("Commands:\n", 1)[1].splitlines()
    names = [line.split()[0] for line in listed if line.startswith("  ")]
    assert names == list(FLOW)  # a new command needs its place (and line) in FLOW
    assert set(ROOT.commands) - {n for n, c in ROOT.commands.items() if c.hidden} == set(FLOW)
    assert all(line.endswith(FLOW[name]) for name, line in zip(names, listed, strict=True))
