"""Reading the docs as tests need them: fenced blocks, the `retro-ops` command lines in them and
in inline code, and a check that such a line parses against the real command line.

A line parses when typer's own parser accepts it as typed: the command exists, every option
exists, required arguments are there, nothing is left over and values have their type. Two kinds
of stand-in are allowed in value positions: shell variables (`$MODEL`, `"${TOKEN}"`) and
ALL_CAPS placeholders (`CHUNK_ID`); both are read as `1`, which any string, number or path takes
(a placeholder in a command's place still fails: there is no command `1`). A span that only
names a command (`retro-ops eval` in a sentence) is a reference, not an invocation: its missing
arguments are not an error."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHELL = {"bash", "sh", "shell", "console"}
OPERATORS = {"|", "||", "&", "&&", ";", ";;", ">", ">>", "<", "<<", ">&", "&>", "(", ")", "2>", "2>&1"}
PLACEHOLDER = re.compile(r"^(\$\{?\w+\}?|[A-Z][A-Z0-9_]+)$")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")

#: the Dagster UI screenshots the browser test takes (tests/test_browser.py) and the tutorial shows
SCREENSHOTS = ("1-asset-graph.png", "2-asset-groups-expanded.png", "3-launch-dialog.png",
               "4-materialization-metadata.png")
SCREENSHOTS_DIR = REPO / "docs" / "images" / "ui"


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # 1-based line of the opening fence
    comment: str  # the HTML comment right above the fence, if any ("" otherwise)


def fenced_blocks(markdown: str) -> list[Block]:
    """Every fenced code block, with its language and the `<!-- ... -->` comment just above it."""
    lines, blocks, i = markdown.splitlines(), [], 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        fence, indent, start = opened["fence"], len(opened["indent"]), i
        body, i = [], i + 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        above = start - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        comment = lines[above].strip() if above >= 0 and lines[above].strip().startswith("<!--") else ""
        lang = (opened["info"].split() or [""])[0].lower()
        blocks.append(Block(lang, "\n".join(body), start + 1, comment))
        i += 1
    return blocks


def shell_commands(text: str) -> list[str]:
    """The commands of a shell block: comment-only lines dropped, `\\` continuations joined, and
    for a console block only the `$ ` lines."""
    commands, pending = [], []
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        commands.append(" ".join([*pending, line]))
        pending = []
    if pending:
        commands.append(" ".join(pending))
    return commands


def retro_ops_lines(markdown: str) -> list[tuple[int, str]]:
    """(line, command) of every `retro-ops` invocation in the shell blocks and inline code."""
    found = []
    for block in fenced_blocks(markdown):
        if block.lang not in SHELL:
            continue
        for command in shell_commands(block.text):
            if block.lang == "console":
                if not command.startswith("$ "):
                    continue
                command = command[2:]
            if re.search(r"(^|[\s/;&|(])retro-ops(\s|$)", command):
                found.append((block.line, command))
    in_fence = False
    for n, line in enumerate(markdown.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            found += [(n, span) for span in re.findall(r"`((?:\.venv/bin/)?retro-ops(?: [^`]*)?)`", line)]
    return found


def arguments(command: str) -> list[str] | None:
    """The arguments given to `retro-ops` in a shell command line (None: it is not invoked)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    start = next((i for i, t in enumerate(tokens) if t == "retro-ops" or t.endswith("/retro-ops")), None)
    if start is None:
        return None
    args = []
    for token in tokens[start + 1:]:
        if token in OPERATORS or set(token) <= set("|&;<>()"):
            break
        args.append("1" if PLACEHOLDER.match(token) else token)
    return args


def parse_error(command: str) -> str | None:
    """Why the `retro-ops` line does not parse, or None when it does."""
    import typer.main

    from retro_ops.cli.main import app

    args = arguments(command)
    if args is None:
        return "no retro-ops invocation found"
    root = typer.main.get_command(app)
    path: list[str] = []
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ctx = root.make_context("retro-ops", list(args))
            command_obj = root
            while hasattr(command_obj, "list_commands"):
                rest = [*ctx._protected_args, *ctx.args]
                if not rest:
                    break
                name, command_obj, rest = command_obj.resolve_command(ctx, rest)
                path.append(name)
                ctx = command_obj.make_context(name, rest, parent=ctx)
    except Exception as exc:  # the parser's own errors: UsageError, BadParameter, NoArgsIsHelpError, Exit
        kind = type(exc).__name__
        if kind == "NoArgsIsHelpError" or (kind == "Exit" and getattr(exc, "exit_code", 1) == 0):
            return None  # a bare group (its help) or --help
        if kind == "MissingParameter" and args == path:
            return None  # names a command in a sentence
        if kind == "BadParameter" and "does not exist" in str(exc):
            return None  # a path the reader creates first
        return f"{kind}: {exc}"
    return None


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
