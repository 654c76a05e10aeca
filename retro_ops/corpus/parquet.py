"""Parquet corpora, read defensively: a file under `max_file_bytes` can expand to gigabytes.

The footer's declared row count and uncompressed size are checked before any data page is read.
Rows are then read in small batches with string columns kept dictionary-encoded (one value
repeated a million times stays one value in memory); each row's byte size is known from the
Arrow offsets before anything is decoded, and reading stops once `max_uncompressed_bytes` of
strings have come out of the file. Invalid UTF-8 is replaced and counted per row, as for text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retro_ops.corpus.readers import (
    RawDocument,
    ReaderConfig,
    ReadReport,
    document,
    open_nofollow,
    repair_utf8,
)

_OFFSETS = {pa.binary(): np.int32, pa.large_binary(): np.int64}


def _binary_type(t: pa.DataType) -> pa.DataType | None:
    """The binary type with the same layout as a string-like type (a free `view`), else None."""
    if pa.types.is_string(t) or pa.types.is_binary(t):
        return pa.binary()
    if pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        return pa.large_binary()
    return None


def _is_stringish(t: pa.DataType) -> bool:
    return _binary_type(t.value_type if pa.types.is_dictionary(t) else t) is not None


class _Strings:
    """A string column of one batch as bytes: sizes from the offsets, values built one by one."""

    def __init__(self, array: pa.Array):
        if pa.types.is_dictionary(array.type):
            values, self.index = array.dictionary, array.indices.to_pylist()
        else:
            values, self.index = array, list(range(len(array)))
        binary = _binary_type(values.type)
        self.values = values.view(binary)  # no UTF-8 check: bad bytes are repaired per row
        raw = np.frombuffer(self.values.buffers()[1], dtype=_OFFSETS[binary])
        self.offsets = raw[self.values.offset: self.values.offset + len(self.values) + 1]

    def size(self, row: int) -> int:
        j = self.index[row]
        return 0 if j is None else int(self.offsets[j + 1] - self.offsets[j])

    def value(self, row: int) -> bytes | None:
        j = self.index[row]
        return None if j is None else self.values[j].as_py()


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _footer_problem(metadata: pq.FileMetaData, size: int, config: ReaderConfig) -> str | None:
    if metadata.num_rows > config.max_rows:
        return f"footer declares {metadata.num_rows} rows (> max_rows={config.max_rows})"
    declared = sum(metadata.row_group(g).column(c).total_uncompressed_size
                   for g in range(metadata.num_row_groups) for c in range(metadata.num_columns))
    if declared > config.max_uncompressed_bytes:
        return (f"footer declares {declared} bytes uncompressed, {declared // max(size, 1)}x the "
                f"file (> max_uncompressed_bytes={config.max_uncompressed_bytes})")
    return None


def _other_rows(batch: pa.RecordBatch, names: list[str]) -> list[dict[str, Any] | None]:
    """Non-string columns as Python rows; a row that cannot be converted becomes None."""
    if not names:
        return [{} for _ in range(batch.num_rows)]
    try:
        return batch.select(names).to_pylist()
    except (UnicodeDecodeError, pa.ArrowException):  # a nested string with bad bytes: find it
        rows: list[dict[str, Any] | None] = []
        for i in range(batch.num_rows):
            try:
                rows.append(batch.slice(i, 1).select(names).to_pylist()[0])
            except (UnicodeDecodeError, pa.ArrowException):
                rows.append(None)
        return rows


def read_parquet(path: Path, config: ReaderConfig, report: ReadReport) -> Iterator[RawDocument]:
    """One document per row of a `text` column; the other columns become metadata."""
    source = str(path)
    try:
        with open_nofollow(path) as handle:
            yield from _read_open(handle, source, path.stat().st_size, config, report)
    except OSError as exc:
        report.add(source, f"cannot read file ({exc.strerror or _first_line(exc)})")


def _read_open(handle: BinaryIO, source: str, size: int, config: ReaderConfig,
               report: ReadReport) -> Iterator[RawDocument]:
    try:
        footer = pq.ParquetFile(handle)
        metadata, schema = footer.metadata, footer.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        report.add(source, f"not a readable Parquet file ({_first_line(exc)})")
        return
    if "text" not in schema.names:
        report.add(source, f"no 'text' column (columns: {', '.join(schema.names)})")
        return
    problem = _footer_problem(metadata, size, config)
    if problem is not None:
        report.add(source, problem)
        return
    if not _is_stringish(schema.field("text").type):
        report.add(source, f"'text' column is {schema.field('text').type}, not strings")
        return
    strings = [f.name for f in schema if _is_stringish(f.type)]
    parquet = pq.ParquetFile(handle, metadata=metadata, read_dictionary=strings)
    batches = parquet.iter_batches(batch_size=config.parquet_batch_rows)
    first_row, read_bytes = 0, 0
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as exc:
            report.add(f"{source}#row={first_row}", f"unreadable from this row on ({_first_line(exc)})")
            return
        if batch is None:
            return
        columns = {name: _Strings(batch.column(name)) for name in strings}
        others = _other_rows(batch, [n for n in batch.schema.names if n not in columns])
        for i in range(batch.num_rows):
            where = f"{source}#row={first_row + i}"
            row_bytes = sum(c.size(i) for c in columns.values())
            if row_bytes > config.max_document_bytes:
                report.add(where, f"{row_bytes} bytes of strings in one row "
                                  f"(> max_document_bytes={config.max_document_bytes})", file=source)
                continue
            read_bytes += row_bytes
            if read_bytes > config.max_uncompressed_bytes:
                report.add(where, f"stopped here: over max_uncompressed_bytes="
                                  f"{config.max_uncompressed_bytes} read from this file; "
                                  "the rows from here on are not read")
                return
            yield from _row(batch.schema.names, columns, others[i], i, where, source, report)
        first_row += batch.num_rows


def _row(names: list[str], columns: dict[str, _Strings], other: dict[str, Any] | None, i: int,
         where: str, source: str, report: ReadReport) -> Iterator[RawDocument]:
    body = columns["text"].value(i)
    if body is None:
        report.add(where, "'text' is empty (null)", file=source)
        return
    if other is None:
        report.add(where, "a metadata column holds invalid UTF-8 inside a nested value",
                   file=source)
        return
    metadata: dict[str, Any] = {}
    for name in names:
        if name == "text":
            continue
        if name in columns:
            raw = columns[name].value(i)
            metadata[name] = None if raw is None else raw.decode("utf-8", "replace")
        else:
            metadata[name] = other[name]
    text = repair_utf8(body, where, report, file=source)
    metadata = json.loads(json.dumps(metadata, default=str))  # timestamps etc. -> JSON-safe
    yield from document(text, where, metadata, report, file=source)
