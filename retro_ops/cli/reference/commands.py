"""The command-line reference: every command and option of `retro-ops`, from the CLI itself.

Read through typer's own command objects, so the page says what `retro-ops COMMAND --help`
says: each command's usage line, its help, and each argument and option with its default,
range and environment variable. Hidden options (for tests) are listed and marked as such."""

from __future__ import annotations

import textwrap

import typer.main

from retro_ops.cli.main import FLOW, app
from retro_ops.cli.reference.markdown import GENERATED, anchor, text


def _walk(command, ctx, path: tuple[str, ...]):
    """(path, command, context) of `command` and everything under it, in `--help` order."""
    yield path, command, ctx
    for name in command.list_commands(ctx) if hasattr(command, "list_commands") else []:
        sub = command.commands[name]
        if sub.hidden:
            continue
        yield from _walk(sub, sub.make_context(name, [], parent=ctx, resilient_parsing=True),
                         (*path, name))


def commands() -> list[tuple[tuple[str, ...], object, object]]:
    root = typer.main.get_command(app)
    return list(_walk(root, root.make_context("retro-ops", [], resilient_parsing=True), ()))


def _param_lines(command, ctx) -> list[str]:
    lines = []
    for param in command.params:
        record = param.get_help_record(ctx)  # None for a hidden option: its names and help then
        if record is None and not getattr(param, "hidden", False):
            continue
        name, help_text = record or (" / ".join((*param.opts, *param.secondary_opts)), param.help or "")
        hidden = " *(hidden: for tests)*" if getattr(param, "hidden", False) else ""
        lines.append(f"- `{name}`{hidden}: {text(help_text) if help_text else ''}".rstrip(": "))
    return lines


def render() -> str:
    out = [GENERATED, "# Command line", "",
           "Every command and option of `retro-ops`, generated from the command line itself "
           "(`python -m retro_ops.cli.reference`); `retro-ops --help` and `--help` after any "
           "command print the same. Options that take a corpus, a retrieval set or a model are "
           "spelled the same everywhere: `--corpus/-c`, `--set/-s` (alias `--retrieval-set`), "
           "`--model/-m`. Reporting commands take `--json`; progress goes to stderr.", ""]
    out += ["| command | what it does |", "|---|---|"]
    out += [f"| [`retro-ops {name}`](#{anchor(f'retro-ops {name}')}) | {text(line)} |" for name, line in FLOW.items()]
    out.append("")
    for path, command, ctx in commands():
        title = " ".join(("retro-ops", *path))
        out += [f"{'#' * min(2 + max(len(path) - 1, 0), 4)} {title}", "",
                "```text", command.get_usage(ctx), "```", ""]
        help_text = textwrap.dedent(command.help or "").strip()
        if help_text:
            out += [text(help_text), ""]
        params = _param_lines(command, ctx)
        if params:
            out += params + [""]
        if hasattr(command, "list_commands"):
            subs = [n for n in command.list_commands(ctx) if not command.commands[n].hidden]
            if path and subs:
                links = [f"[`{n}`](#{anchor(f'{title} {n}')})" for n in subs]
                out += [f"Commands: {', '.join(links)}.", ""]
    return "\n".join(out).rstrip() + "\n"
