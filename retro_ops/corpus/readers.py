"""Read a corpus location (folder, glob or single file) into raw documents.

Bad input never stops a corpus: each unreadable file, line or row becomes a `ReadIssue` with a
one-line reason naming the file (and line or row), and everything else is still read. Invalid
UTF-8 is decoded with U+FFFD replacement and counted; NUL bytes in text are removed and counted;
files that look binary, are empty, or exceed `ReaderConfig.max_file_bytes` are skipped; so are
symlinks leading outside the corpus folder. A JSON line that Python would accept but that cannot
be stored (a lone surrogate like "\ud800") or that attacks the parser (deep nesting, a
5,000-digit number) is a reason for that line. Parquet has its own guards (`corpus/parquet.py`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from retro_ops.errors import CorpusError
from retro_ops.ids import normalise_text

SUPPORTED_SUFFIXES = (".txt", ".md", ".rst", ".jsonl", ".parquet")
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not valid UTF-8 (surrogateescape)
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f\ufffd]")
_GLOB_CHARS = re.compile(r"[*?\[]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads lets "\ud800" through alone
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # how one gets into a JSON line
_LINK_REASON = "symlink to {target}, outside the corpus folder {root}: refused"


@dataclass(frozen=True)
class ReaderConfig:
    """How tolerant reading is.

    max_file_bytes: larger files are skipped with a reason (a 50 MB single-line file is more
        likely a dump than a document); raise it to accept them: the chunker handles any length.
    binary_sample_bytes / binary_threshold: a file whose first `binary_sample_bytes` decode to
        more than `binary_threshold` control or undecodable characters is treated as binary.
    max_uncompressed_bytes / max_rows: a Parquet file is compressed, so `max_file_bytes` says
        little about what it expands to (15,000x was measured): its footer's declared sizes are
        checked first, and reading stops once this much text has come out of it.
    max_document_bytes: one Parquet row's text and metadata strings, checked before decoding.
    max_json_depth: deeper JSON lines are skipped (deep nesting is an attack on the parser, and
        metadata must survive being written as JSON again further down).
    max_issues_per_file: more reasons from one file are counted in a summary line, so a file of
        a million bad rows cannot fill memory with reasons.
    parquet_batch_rows: rows per Arrow batch; string columns stay dictionary-encoded, so a
        batch holds at most the file's decompressed pages, never a repeated value expanded.
    """

    max_file_bytes: int = 32 * 1024 * 1024
    binary_sample_bytes: int = 8192
    binary_threshold: float = 0.30
    max_uncompressed_bytes: int = 256 * 1024 * 1024
    max_rows: int = 5_000_000
    max_document_bytes: int = 16 * 1024 * 1024
    max_json_depth: int = 64
    max_issues_per_file: int = 100
    parquet_batch_rows: int = 4096


@dataclass(frozen=True)
class RawDocument:
    """One document as read: normalised text, where it came from, and its extra fields."""

    text: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadIssue:
    """Something read badly. `skipped` lost that input; `warning` kept it after repairing it."""

    source: str
    reason: str
    severity: Literal["skipped", "warning"] = "skipped"

    def __str__(self) -> str:
        return f"{self.severity}: {self.source}: {self.reason}"


@dataclass
class ReadReport:
    """What a read saw, filled in as the documents stream out."""

    files: int = 0
    documents: int = 0
    issues: list[ReadIssue] = field(default_factory=list)
    max_issues_per_file: int = 100
    _per_file: dict[str, int] = field(default_factory=dict, repr=False)

    def add(self, source: str, reason: str, severity: Literal["skipped", "warning"] = "skipped",
            *, file: str | None = None):
        """Record a reason; past `max_issues_per_file` for one `file` it is only counted."""
        key = source if file is None else file
        self._per_file[key] = count = self._per_file.get(key, 0) + 1
        if count <= self.max_issues_per_file:
            self.issues.append(ReadIssue(source, reason, severity))

    def finish_file(self, file: str) -> None:
        unlisted = self._per_file.get(file, 0) - self.max_issues_per_file
        if unlisted > 0:
            self.issues.append(ReadIssue(file, f"{unlisted} more lines or rows had issues "
                                               f"(not listed past max_issues_per_file="
                                               f"{self.max_issues_per_file})"))


def _split_glob(path: Path) -> tuple[Path, str]:
    """(the fixed folder before the first wildcard, the pattern after it)."""
    parts = path.parts
    first = next(i for i, part in enumerate(parts) if _GLOB_CHARS.search(part))
    return (Path(*parts[:first]) if first else Path.cwd()), "/".join(parts[first:])


def _corpus_root(path: Path, text: str) -> Path:
    """The folder a location's files must stay inside: the folder, or a glob's fixed prefix."""
    if path.is_dir():
        return path.resolve()
    if _GLOB_CHARS.search(text):
        return _split_glob(path)[0].resolve()
    return path.parent.resolve()


def _printable(path: Path) -> str:
    """A path as text that can be logged and stored, undecodable bytes shown as U+FFFD."""
    return os.fsencode(path).decode("utf-8", "replace")


def _escapes(path: Path, root: Path) -> Path | None:
    """Where `path` really is when a symlink takes it outside `root`, else None."""
    real = path.resolve()
    return None if real.is_relative_to(root) else real


def scan_location(location: str | Path) -> tuple[list[Path], list[ReadIssue]]:
    """The supported files a location names, sorted, and the files refused on the way.

    A symlink whose target resolves outside the corpus folder is refused (reading it would
    publish whatever it points at, e.g. `notes.txt -> ../secret.env`). Raises `CorpusError`
    when nothing is left to read.
    """
    text = str(location)
    path = Path(text).expanduser()
    root = _corpus_root(path, text)
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise CorpusError(f"{path}: unsupported file type {path.suffix!r}; "
                              f"expected one of {', '.join(SUPPORTED_SUFFIXES)}")
        outside = _escapes(path, root)
        if outside is not None:
            raise CorpusError(f"{path}: {_LINK_REASON.format(target=outside, root=root)}")
        return [path.resolve()], []
    if path.is_dir():
        candidates = (p for p in path.rglob("*") if p.is_file())
    elif _GLOB_CHARS.search(text):  # pathlib's `**` does not descend into linked folders (loops)
        folder, pattern = _split_glob(path)
        candidates = (p for p in folder.glob(pattern) if p.is_file())
    else:
        raise CorpusError(f"{path}: no such file or folder")
    files, refused = [], []
    for p in candidates:
        if p.suffix.lower() not in SUPPORTED_SUFFIXES or p.name.startswith("."):
            continue
        if _SURROGATE.search(str(p)):  # a name that cannot be stored as a source (UTF-8)
            refused.append(ReadIssue(_printable(p), "file name is not valid UTF-8: refused "
                                                    "(rename the file to read it)"))
            continue
        outside = _escapes(p, root)
        if outside is None:
            files.append(p.resolve())
        else:
            refused.append(ReadIssue(str(p), _LINK_REASON.format(target=_printable(outside),
                                                                 root=root)))
    if not files:
        why = f" ({len(refused)} symlinks leading outside it refused)" if refused else ""
        raise CorpusError(f"{path}: no {'/'.join(SUPPORTED_SUFFIXES)} files found{why}")
    return sorted(set(files)), sorted(refused, key=lambda issue: issue.source)


def resolve_files(location: str | Path) -> list[Path]:
    """The supported files a location names, sorted; a clear `CorpusError` when there are none."""
    return scan_location(location)[0]


def read_corpus(
    location: str | Path, config: ReaderConfig = ReaderConfig(), report: ReadReport | None = None
) -> Iterator[RawDocument]:
    """Stream the documents of a location; problems go to `report` instead of raising."""
    report = ReadReport() if report is None else report
    report.max_issues_per_file = config.max_issues_per_file
    files, refused = scan_location(location)
    report.issues.extend(refused)
    for path in files:
        report.files += 1
        for doc in _read_file(path, config, report):
            report.documents += 1
            yield doc
        report.finish_file(str(path))


def open_nofollow(path: Path) -> BinaryIO:
    """Open for reading, refusing a symlink swapped in since the folder was scanned."""
    return os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb")


def _read_file(path: Path, config: ReaderConfig, report: ReadReport) -> Iterator[RawDocument]:
    try:
        size = path.stat().st_size
    except OSError as exc:
        report.add(str(path), f"cannot stat file ({exc.strerror})")
        return
    if size == 0:
        report.add(str(path), "empty file")
        return
    if size > config.max_file_bytes:
        report.add(str(path), f"{size} bytes exceeds max_file_bytes={config.max_file_bytes} "
                              "(raise ReaderConfig.max_file_bytes to read it)")
        return
    if path.suffix.lower() == ".parquet":
        from retro_ops.corpus.parquet import read_parquet  # it builds on this module's types

        yield from read_parquet(path, config, report)
        return
    try:
        with open_nofollow(path) as handle:
            data = handle.read(config.max_file_bytes + 1)
    except OSError as exc:
        report.add(str(path), f"cannot read file ({exc.strerror})")
        return
    text = _decode_text(data, str(path), config, report)
    if text is None:
        return
    if path.suffix.lower() == ".jsonl":
        yield from _parse_jsonl(text, str(path), config, report)
    else:
        yield from document(text, str(path), {}, report)


def repair_utf8(data: bytes, source: str, report: ReadReport, *, file: str | None = None) -> str:
    """UTF-8 with each invalid byte replaced by U+FFFD and NUL bytes removed, both counted."""
    try:
        text = data.decode("utf-8-sig")  # the common case, at C speed
    except UnicodeDecodeError:
        text = data.decode("utf-8-sig", "surrogateescape")
        invalid = len(_SURROGATE.findall(text))
        text = _SURROGATE.sub("\ufffd", text)
        report.add(source, f"{invalid} invalid UTF-8 bytes replaced with U+FFFD", "warning", file=file)
    nuls = text.count("\x00")
    if nuls:
        text = text.replace("\x00", "")
        report.add(source, f"{nuls} NUL bytes removed", "warning", file=file)
    return text


def _decode_text(data: bytes, source: str, config: ReaderConfig, report: ReadReport) -> str | None:
    """UTF-8 with replacement (counted), NUL bytes removed (counted); None for a binary file."""
    sample = data[: config.binary_sample_bytes].decode("utf-8", "replace")
    bad = len(_CONTROL.findall(sample))
    if sample and bad / len(sample) > config.binary_threshold:
        report.add(source, f"looks binary ({bad} of the first {len(sample)} characters are "
                           "control bytes or invalid UTF-8)")
        return None
    return repair_utf8(data, source, report)


def document(
    text: str, source: str, metadata: dict[str, Any], report: ReadReport, *, file: str | None = None
) -> Iterator[RawDocument]:
    text = normalise_text(text)
    if not text.strip():
        report.add(source, "no text (whitespace only)", file=file)
        return
    yield RawDocument(text=text, source=source, metadata=metadata)


def _json_problem(value: Any, max_depth: int) -> str | None:
    """Why a parsed JSON value cannot be stored: a lone surrogate or too deep (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            return f"nested deeper than {max_depth} levels"
        if isinstance(item, dict):
            stack.extend((k, depth) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str) and (found := _LONE_SURROGATE.search(item)):
            return f"lone surrogate \\u{ord(found.group()):04x}"
    return None


def _load_json(line: str, max_depth: int) -> tuple[Any, str | None]:
    """(value, None) or (None, why the line is not usable JSON), never an exception."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"{exc.msg} at column {exc.colno}"
    except RecursionError:
        return None, f"nested deeper than {max_depth} levels"
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        return None, str(exc).split(":")[0]
    if _SURROGATE_ESCAPE.search(line) or line.count("[") + line.count("{") > max_depth:
        return record, _json_problem(record, max_depth)  # only then can there be a problem
    return record, None


def _parse_jsonl(text: str, source: str, config: ReaderConfig,
                 report: ReadReport) -> Iterator[RawDocument]:
    """One document per line: a JSON object with a `text` string; other fields become metadata."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        record, problem = _load_json(line, config.max_json_depth)
        if problem is not None:
            report.add(where, f"not valid JSON ({problem})", file=source)
            continue
        if not isinstance(record, dict):
            report.add(where, f"not a JSON object (got {type(record).__name__})", file=source)
            continue
        body = record.pop("text", None)
        if not isinstance(body, str):
            report.add(where, "no 'text' field" if body is None else
                       f"'text' is {type(body).__name__}, not a string", file=source)
            continue
        yield from document(body, f"{source}#L{lineno}", record, report, file=source)
