"""Corpus readers: every format, every bad input gives a one-line reason and loses nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retro_ops.corpus import ReaderConfig, ReadReport, collect_documents, read_corpus, resolve_files
from retro_ops.errors import CorpusError


def read(location, config=ReaderConfig()):
    report = ReadReport()
    docs = list(read_corpus(location, config, report))
    return docs, report


def reasons(report: ReadReport) -> list[str]:
    return [str(i) for i in report.issues]


def test_reads_every_supported_format_with_metadata(tmp_path: Path):
    (tmp_path / "a.txt").write_text("plain text document")
    (tmp_path / "b.md").write_text("# Markdown\n\nbody")
    (tmp_path / "c.rst").write_text("Title\n=====\n\nbody")
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "from jsonl", "year": 1851}) + "\n")
    pq.write_table(pa.table({"text": ["row zero", "row one"], "lang": ["en", "fr"]}),
                   tmp_path / "e.parquet")
    (tmp_path / "ignored.csv").write_text("not,a,corpus,format")
    docs, report = read(tmp_path)
    by_text = {d.text: d for d in docs}
    assert set(by_text) == {"plain text document", "# Markdown\n\nbody", "Title\n=====\n\nbody",
                            "from jsonl", "row zero", "row one"}
    assert by_text["from jsonl"].metadata == {"year": 1851}
    assert by_text["from jsonl"].source.endswith("d.jsonl#L1")
    assert by_text["row one"].metadata == {"lang": "fr"}
    assert by_text["row one"].source.endswith("e.parquet#row=1")
    assert report.files == 5 and report.issues == []


def test_glob_and_single_file(tmp_path: Path):
    (tmp_path / "x1.txt").write_text("one")
    (tmp_path / "x2.txt").write_text("two")
    (tmp_path / "y.txt").write_text("three")
    assert [p.name for p in resolve_files(tmp_path / "x*.txt")] == ["x1.txt", "x2.txt"]
    assert [p.name for p in resolve_files(tmp_path / "y.txt")] == ["y.txt"]


def test_missing_path_is_a_clear_error(tmp_path: Path):
    with pytest.raises(CorpusError, match=r"nope: no such file or folder"):
        resolve_files(tmp_path / "nope")


def test_empty_folder_is_a_clear_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"empty: no \.txt/\.md/\.rst/\.jsonl/\.parquet files found"):
        resolve_files(tmp_path / "empty")


def test_unsupported_single_file_is_a_clear_error(tmp_path: Path):
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(CorpusError, match=r"x\.csv: unsupported file type '\.csv'"):
        resolve_files(tmp_path / "x.csv")


def test_empty_file_skipped_rest_read(tmp_path: Path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "good.txt").write_text("good")
    docs, report = read(tmp_path)
    assert [d.text for d in docs] == ["good"]
    assert reasons(report) == [f"skipped: {tmp_path / 'empty.txt'}: empty file"]


def test_binary_file_skipped(tmp_path: Path):
    import random

    rng = random.Random(0)
    (tmp_path / "blob.txt").write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    (tmp_path / "good.txt").write_text("good")
    docs, report = read(tmp_path)
    assert [d.text for d in docs] == ["good"]
    [issue] = report.issues
    assert issue.source.endswith("blob.txt") and issue.reason.startswith("looks binary (")


def test_invalid_utf8_replaced_and_counted(tmp_path: Path):
    (tmp_path / "latin1.txt").write_bytes("café naïve".encode("latin-1"))
    docs, report = read(tmp_path)
    assert docs[0].text == "caf\ufffd na\ufffdve"
    assert reasons(report) == [
        f"warning: {tmp_path / 'latin1.txt'}: 2 invalid UTF-8 bytes replaced with U+FFFD"]


def test_nul_bytes_removed_and_counted(tmp_path: Path):
    (tmp_path / "nul.txt").write_bytes(b"call me\x00 Ishmael\x00")
    docs, report = read(tmp_path)
    assert docs[0].text == "call me Ishmael"
    assert reasons(report) == [f"warning: {tmp_path / 'nul.txt'}: 2 NUL bytes removed"]


def test_huge_single_line_file_skipped_with_reason(tmp_path: Path):
    big = tmp_path / "dump.txt"
    with big.open("wb") as handle:  # 50 MB on one line
        handle.write(b"word " * (10 * 1024 * 1024))
    (tmp_path / "good.txt").write_text("good")
    docs, report = read(tmp_path)
    assert [d.text for d in docs] == ["good"]
    assert reasons(report) == [
        f"skipped: {big}: 52428800 bytes exceeds max_file_bytes=33554432 "
        "(raise ReaderConfig.max_file_bytes to read it)"]


def test_bad_jsonl_lines_skipped_with_line_numbers(tmp_path: Path):
    lines = ['{"text": "first"}', "{not json", '{"title": "no text"}', "[1, 2]",
             '{"text": 42}', "", '{"text": "last", "id": 7}']
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    docs, report = read(tmp_path)
    assert [(d.text, d.metadata) for d in docs] == [("first", {}), ("last", {"id": 7})]
    where = str(tmp_path / "d.jsonl")
    assert reasons(report) == [
        f"skipped: {where}:2: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        f"skipped: {where}:3: no 'text' field",
        f"skipped: {where}:4: not a JSON object (got list)",
        f"skipped: {where}:5: 'text' is int, not a string",
    ]


def test_parquet_without_text_column_and_null_rows(tmp_path: Path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": ["kept", None]}), tmp_path / "b.parquet")
    (tmp_path / "c.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    docs, report = read(tmp_path)
    assert [d.text for d in docs] == ["kept"]
    got = reasons(report)
    assert got[0] == f"skipped: {tmp_path / 'a.parquet'}: no 'text' column (columns: body)"
    assert got[1] == f"skipped: {tmp_path / 'b.parquet'}#row=1: 'text' is empty (null)"
    assert got[2].startswith(f"skipped: {tmp_path / 'c.parquet'}: not a readable Parquet file (")


def test_whitespace_only_document_skipped(tmp_path: Path):
    (tmp_path / "blank.txt").write_text("  \n\n \t ")
    (tmp_path / "good.txt").write_text("good")
    docs, report = read(tmp_path)
    assert [d.text for d in docs] == ["good"]
    assert reasons(report) == [f"skipped: {tmp_path / 'blank.txt'}: no text (whitespace only)"]


def test_exact_duplicates_collapse_with_all_sources(tmp_path: Path):
    (tmp_path / "a.txt").write_text("Cafe\u0301 text\r\nline two")  # decomposed é, CRLF
    (tmp_path / "b.txt").write_text("Caf\u00e9 text\nline two")  # composed é, LF
    (tmp_path / "c.txt").write_text("something else")
    snapshot = collect_documents(read_corpus(tmp_path))
    assert snapshot.duplicates_collapsed == 1
    assert len(snapshot.documents) == 2
    dup = next(d for d in snapshot.documents if d.text.startswith("Caf"))
    assert [Path(s).name for s in dup.sources] == ["a.txt", "b.txt"]
    assert dup.text == "Caf\u00e9 text\nline two"
