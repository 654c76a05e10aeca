"""Read a corpus location (folder, glob or single file) into raw documents.

Bad input never stops a corpus: each unreadable file, line or row becomes a `ReadIssue` with a
one-line reason naming the file (and line or row), and everything else is still read. Invalid
UTF-8 is decoded with U+FFFD replacement and counted; NUL bytes in text are removed and counted;
files that look binary, are empty, or exceed `ReaderConfig.max_file_bytes` are skipped.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from retro_ops.errors import CorpusError
from retro_ops.ids import normalise_text

SUPPORTED_SUFFIXES = (".txt", ".md", ".rst", ".jsonl", ".parquet")
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not valid UTF-8 (surrogateescape)
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f\ufffd]")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class ReaderConfig:
    """How tolerant reading is.

    max_file_bytes: larger files are skipped with a reason (a 50 MB single-line file is more
        likely a dump than a document); raise it to accept them: the chunker handles any length.
    binary_sample_bytes / binary_threshold: a file whose first `binary_sample_bytes` decode to
        more than `binary_threshold` control or undecodable characters is treated as binary.
    """

    max_file_bytes: int = 32 * 1024 * 1024
    binary_sample_bytes: int = 8192
    binary_threshold: float = 0.30


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

    def add(self, source: str, reason: str, severity: Literal["skipped", "warning"] = "skipped"):
        self.issues.append(ReadIssue(source, reason, severity))


def resolve_files(location: str | Path) -> list[Path]:
    """The supported files a location names, sorted; a clear `CorpusError` when there are none."""
    text = str(location)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise CorpusError(f"{path}: unsupported file type {path.suffix!r}; "
                              f"expected one of {', '.join(SUPPORTED_SUFFIXES)}")
        return [path.resolve()]
    if path.is_dir():
        candidates = (p for p in path.rglob("*") if p.is_file())
    elif _GLOB_CHARS.search(text):
        candidates = (Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    else:
        raise CorpusError(f"{path}: no such file or folder")
    files = sorted(
        p.resolve() for p in candidates
        if p.suffix.lower() in SUPPORTED_SUFFIXES and not any(s.startswith(".") for s in p.parts[-1:])
    )
    if not files:
        raise CorpusError(f"{path}: no {'/'.join(SUPPORTED_SUFFIXES)} files found")
    return files


def read_corpus(
    location: str | Path, config: ReaderConfig = ReaderConfig(), report: ReadReport | None = None
) -> Iterator[RawDocument]:
    """Stream the documents of a location; problems go to `report` instead of raising."""
    report = ReadReport() if report is None else report
    for path in resolve_files(location):
        report.files += 1
        for doc in _read_file(path, config, report):
            report.documents += 1
            yield doc


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
        yield from _read_parquet(path, report)
        return
    try:
        data = path.read_bytes()
    except OSError as exc:
        report.add(str(path), f"cannot read file ({exc.strerror})")
        return
    text = _decode_text(data, str(path), config, report)
    if text is None:
        return
    if path.suffix.lower() == ".jsonl":
        yield from _parse_jsonl(text, str(path), report)
    else:
        yield from _document(text, str(path), {}, report)


def _decode_text(data: bytes, source: str, config: ReaderConfig, report: ReadReport) -> str | None:
    """UTF-8 with replacement (counted), NUL bytes removed (counted); None for a binary file."""
    sample = data[: config.binary_sample_bytes].decode("utf-8", "replace")
    bad = len(_CONTROL.findall(sample))
    if sample and bad / len(sample) > config.binary_threshold:
        report.add(source, f"looks binary ({bad} of the first {len(sample)} characters are "
                           "control bytes or invalid UTF-8)")
        return None
    text = data.decode("utf-8-sig", "surrogateescape")
    invalid = len(_SURROGATE.findall(text))
    if invalid:
        text = _SURROGATE.sub("\ufffd", text)
        report.add(source, f"{invalid} invalid UTF-8 bytes replaced with U+FFFD", "warning")
    nuls = text.count("\x00")
    if nuls:
        text = text.replace("\x00", "")
        report.add(source, f"{nuls} NUL bytes removed", "warning")
    return text


def _document(
    text: str, source: str, metadata: dict[str, Any], report: ReadReport
) -> Iterator[RawDocument]:
    text = normalise_text(text)
    if not text.strip():
        report.add(source, "no text (whitespace only)")
        return
    yield RawDocument(text=text, source=source, metadata=metadata)


def _parse_jsonl(text: str, source: str, report: ReadReport) -> Iterator[RawDocument]:
    """One document per line: a JSON object with a `text` string; other fields become metadata."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            report.add(where, f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(record, dict):
            report.add(where, f"not a JSON object (got {type(record).__name__})")
            continue
        body = record.pop("text", None)
        if not isinstance(body, str):
            report.add(where, "no 'text' field" if body is None else
                       f"'text' is {type(body).__name__}, not a string")
            continue
        yield from _document(body, f"{source}#L{lineno}", record, report)


def _read_parquet(path: Path, report: ReadReport) -> Iterator[RawDocument]:
    """One document per row of a `text` column; the other columns become metadata."""
    source = str(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        report.add(source, f"not a readable Parquet file ({str(exc).splitlines()[0]})")
        return
    if "text" not in table.column_names:
        report.add(source, f"no 'text' column (columns: {', '.join(table.column_names)})")
        return
    for row_number, row in enumerate(table.to_pylist()):
        body = row.pop("text")
        where = f"{source}#row={row_number}"
        if not isinstance(body, str):
            report.add(where, "'text' is empty (null)" if body is None else
                       f"'text' is {type(body).__name__}, not a string")
            continue
        metadata = json.loads(json.dumps(row, default=str))  # timestamps etc. -> JSON-safe
        yield from _document(body, where, metadata, report)
