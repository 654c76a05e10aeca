"""Hostile corpus input and unsafe names: each bad input costs its own line or row, nothing else.

One test per input with its exact reason, then a corpus mixing all of them with good files that
still ingests every good document. Names and filter values that try to escape (`../x`,
`x' OR '1'='1`) are refused or match nothing, through the library and the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from retro_ops.catalog import Catalog
from retro_ops.cli.main import app
from retro_ops.corpus import ReaderConfig, ReadReport, collect_documents, read_corpus, resolve_files
from retro_ops.errors import (
    CorpusError,
    InvalidNameError,
    UnknownCorpusError,
    UnknownModelError,
    UnknownRetrievalSetError,
)
from retro_ops.features.pipeline import ingest_documents
from retro_ops.features.store import FeatureStore
from retro_ops.ids import document_id, normalise_text
from retro_ops.retrieval.index.publish import index_root
from retro_ops.retrieval.retriever import Retriever

INJECTION = "x' OR '1'='1"
runner = CliRunner()


def read(location, config=ReaderConfig()):
    report = ReadReport()
    docs = list(read_corpus(location, config, report))
    return docs, [str(i) for i in report.issues]


def jsonl(folder: Path, name: str, lines: list[str]) -> Path:
    path = folder / name
    path.write_text("\n".join(['{"text": "good first"}', *lines, '{"text": "good last"}']) + "\n")
    return path


# -- JSON lines ------------------------------------------------------------------------------
def test_lone_surrogate_is_a_reason_for_its_line(tmp_path: Path):
    path = jsonl(tmp_path, "data.jsonl", [r'"\ud800"', r'{"text": "half a pair \uD800 here"}',
                                          r'{"text": "ok", "meta": {"k\udfff": 1}}',
                                          r'{"text": "an escaped backslash \\ud800 is text"}'])
    docs, reasons = read(tmp_path)
    assert [d.text for d in docs] == ["good first", "an escaped backslash \\ud800 is text",
                                      "good last"]
    assert reasons == [f"skipped: {path}:2: not valid JSON (lone surrogate \\ud800)",
                       f"skipped: {path}:3: not valid JSON (lone surrogate \\ud800)",
                       f"skipped: {path}:4: not valid JSON (lone surrogate \\udfff)"]


def test_surrogate_bytes_in_a_text_file_are_replaced(tmp_path: Path):
    (tmp_path / "cesu.txt").write_bytes(b"half a pair \xed\xa0\x80 here")
    docs, reasons = read(tmp_path)
    assert [d.text for d in docs] == ["half a pair \ufffd\ufffd\ufffd here"]
    assert reasons == [f"warning: {tmp_path / 'cesu.txt'}: 3 invalid UTF-8 bytes replaced with U+FFFD"]


def test_a_valid_surrogate_pair_is_one_character(tmp_path: Path):
    jsonl(tmp_path, "data.jsonl", [r'{"text": "whale \ud83d\udc33"}'])
    docs, reasons = read(tmp_path)
    assert [d.text for d in docs][1] == "whale \U0001f433" and reasons == []


def test_deep_nesting_is_a_reason_not_a_recursion_error(tmp_path: Path):
    deep_meta = '{"text": "ok", "m": ' + "[" * 65 + "]" * 65 + "}"
    path = jsonl(tmp_path, "data.jsonl", ["[" * 200_000, deep_meta])
    docs, reasons = read(tmp_path)
    assert [d.text for d in docs] == ["good first", "good last"]
    assert reasons == [f"skipped: {path}:2: not valid JSON (nested deeper than 64 levels)",
                       f"skipped: {path}:3: not valid JSON (nested deeper than 64 levels)"]


def test_integer_too_long_to_convert_is_a_reason(tmp_path: Path):
    path = jsonl(tmp_path, "data.jsonl", ['{"text": "ok", "n": ' + "9" * 5000 + "}"])
    docs, reasons = read(tmp_path)
    assert len(docs) == 2
    assert reasons == [f"skipped: {path}:2: not valid JSON (Exceeds the limit (4300 digits) "
                       "for integer string conversion)"]


def test_a_thousand_bad_lines_are_summarised(tmp_path: Path):
    path = jsonl(tmp_path, "data.jsonl", ["{oops"] * 1000)
    docs, reasons = read(tmp_path, ReaderConfig(max_issues_per_file=10))
    assert len(docs) == 2 and len(reasons) == 11
    assert reasons[-1] == (f"skipped: {path}: 990 more lines or rows had issues "
                           "(not listed past max_issues_per_file=10)")


# -- Parquet ---------------------------------------------------------------------------------
def utf8_column(values: list[bytes | None]) -> pa.Array:
    """A string column holding exactly these bytes (Arrow does not check UTF-8 on a view)."""
    return pa.array(values, pa.binary()).view(pa.string())


def test_parquet_invalid_utf8_is_repaired_per_row(tmp_path: Path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": utf8_column([b"fine", b"caf\xe9 bad", b"also fine"]),
                             "lang": utf8_column([b"en", b"\xff", b"en"])}), path)
    docs, reasons = read(tmp_path)
    assert [(d.text, d.metadata) for d in docs] == [
        ("fine", {"lang": "en"}), ("caf\ufffd bad", {"lang": "\ufffd"}), ("also fine", {"lang": "en"})]
    assert reasons == [f"warning: {path}#row=1: 1 invalid UTF-8 bytes replaced with U+FFFD"]


def test_parquet_invalid_utf8_inside_a_nested_column_skips_that_row(tmp_path: Path):
    path = tmp_path / "rows.parquet"
    tags = pa.ListArray.from_arrays(pa.array([0, 1, 2, 3], pa.int32()),
                                    utf8_column([b"a", b"\xff", b"c"]))
    pq.write_table(pa.table({"text": ["one", "two", "three"], "tags": tags}), path)
    docs, reasons = read(tmp_path)
    assert [(d.text, d.metadata) for d in docs] == [("one", {"tags": ["a"]}),
                                                    ("three", {"tags": ["c"]})]
    assert reasons == [f"skipped: {path}#row=1: a metadata column holds invalid UTF-8 "
                       "inside a nested value"]


def test_parquet_bomb_refused_from_its_footer(tmp_path: Path):
    path = tmp_path / "bomb.parquet"
    rows = [f"{i:08d}" + "a" * 100_000 for i in range(700)]  # 70 MB of text, a few KB on disk
    pq.write_table(pa.table({"text": rows}), path, compression="zstd", use_dictionary=False)
    size = path.stat().st_size
    assert size < 1024 * 1024
    docs, reasons = read(tmp_path, ReaderConfig(max_uncompressed_bytes=64 * 1024 * 1024))
    declared = pq.ParquetFile(path).metadata.row_group(0).column(0).total_uncompressed_size
    assert docs == []
    assert reasons == [f"skipped: {path}: footer declares {declared} bytes uncompressed, "
                       f"{declared // size}x the file (> max_uncompressed_bytes=67108864)"]


def test_parquet_repeated_value_bomb_stops_without_expanding(tmp_path: Path):
    """One 1 MiB value repeated 20,000 times: 20 GB if expanded; the footer declares ~1 MB."""
    path = tmp_path / "dict.parquet"
    big = pa.DictionaryArray.from_arrays(pa.array([0] * 20_000, pa.int32()),
                                         pa.array(["w" * (1024 * 1024)]))
    pq.write_table(pa.table({"text": big}), path, compression="zstd")
    assert path.stat().st_size < 64 * 1024
    docs, reasons = read(tmp_path, ReaderConfig(max_uncompressed_bytes=8 * 1024 * 1024))
    assert len(docs) == 8  # then the next row would pass 8 MiB
    assert reasons == [f"skipped: {path}#row=8: stopped here: over max_uncompressed_bytes=8388608 "
                       "read from this file; the rows from here on are not read"]


def test_parquet_row_over_the_document_cap_is_skipped(tmp_path: Path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": ["small", "x" * 5000, "small too"]}), path)
    docs, reasons = read(tmp_path, ReaderConfig(max_document_bytes=4096))
    assert [d.text for d in docs] == ["small", "small too"]
    assert reasons == [f"skipped: {path}#row=1: 5000 bytes of strings in one row "
                       "(> max_document_bytes=4096)"]


def test_parquet_declaring_too_many_rows_is_refused(tmp_path: Path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": pa.array(["x"] * 11, pa.string())}), path)
    docs, reasons = read(tmp_path, ReaderConfig(max_rows=10))
    assert docs == [] and reasons == [f"skipped: {path}: footer declares 11 rows (> max_rows=10)"]


def test_parquet_text_column_of_numbers_is_one_reason(tmp_path: Path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), path)
    (tmp_path / "good.txt").write_text("good")
    docs, reasons = read(tmp_path)
    assert [d.text for d in docs] == ["good"]
    assert reasons == [f"skipped: {path}: 'text' column is int64, not strings"]


# -- symlinks --------------------------------------------------------------------------------
def corpus_with_links(tmp_path: Path) -> Path:
    (tmp_path / "secret.env").write_text("API_KEY=hunter2")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "private.txt").write_text("private notes")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("good")
    (corpus / "notes.txt").symlink_to("../secret.env")
    (corpus / "alias.txt").symlink_to("good.txt")  # inside the corpus: fine
    (corpus / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    return corpus


def test_symlink_out_of_the_corpus_is_refused_with_a_reason(tmp_path: Path):
    corpus = corpus_with_links(tmp_path)
    docs, reasons = read(corpus)
    assert [d.text for d in docs] == ["good"]
    assert reasons == [f"skipped: {corpus / 'notes.txt'}: symlink to {tmp_path / 'secret.env'}, "
                       f"outside the corpus folder {corpus}: refused"]


def test_glob_neither_follows_linked_folders_nor_loops(tmp_path: Path):
    """Run in a child process with a deadline: a walker that followed the two loops would face
    2^40 paths, and a test that hangs would hang the suite instead of failing."""
    corpus = corpus_with_links(tmp_path)
    (corpus / "loop1").symlink_to(".", target_is_directory=True)
    (corpus / "loop2").symlink_to(".", target_is_directory=True)
    script = ("import json, sys; from retro_ops.corpus import ReadReport, read_corpus; r = ReadReport(); "
              "docs = [d.text for d in read_corpus(sys.argv[1], report=r)]; "
              "print(json.dumps([docs, [str(i) for i in r.issues]]))")
    child = subprocess.run([sys.executable, "-c", script, f"{corpus}/**/*.txt"],
                           capture_output=True, text=True, timeout=60, check=True)
    docs, reasons = json.loads(child.stdout)
    assert docs == ["good"]
    assert reasons == [f"skipped: {corpus / 'notes.txt'}: symlink to {tmp_path / 'secret.env'}, "
                       f"outside the corpus folder {corpus}: refused"]
    assert "private" not in " ".join(d.text for d in read(corpus)[0])


def test_a_file_swapped_for_a_link_after_the_scan_is_not_followed(tmp_path: Path):
    corpus = corpus_with_links(tmp_path)
    (corpus / "later.txt").write_text("later")
    report = ReadReport()
    docs = read_corpus(corpus, ReaderConfig(), report)
    assert next(docs).text == "good"  # the folder is scanned now
    (corpus / "later.txt").unlink()
    (corpus / "later.txt").symlink_to("../secret.env")
    assert list(docs) == []
    assert [str(i) for i in report.issues][-1] == (
        f"skipped: {corpus / 'later.txt'}: cannot read file (Too many levels of symbolic links)")


def test_a_single_linked_file_is_refused(tmp_path: Path):
    corpus = corpus_with_links(tmp_path)
    with pytest.raises(CorpusError, match=r"notes\.txt: symlink to .*secret\.env, outside the "
                                          r"corpus folder .*corpus: refused"):
        resolve_files(corpus / "notes.txt")


def test_only_outside_links_is_a_clear_error(tmp_path: Path):
    (tmp_path / "secret.env").write_text("API_KEY=hunter2")
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "notes.txt").symlink_to("../secret.env")
    with pytest.raises(CorpusError, match=r"no .* files found \(1 symlinks leading outside it refused\)"):
        resolve_files(tmp_path / "corpus")


def test_a_file_name_that_is_not_utf8_is_refused(tmp_path: Path):
    os.makedirs(os.fsencode(tmp_path / "c"))
    with open(os.fsencode(tmp_path / "c") + b"/bad\xffname.txt", "wb") as handle:
        handle.write(b"text in a badly named file")
    (tmp_path / "c" / "good.txt").write_text("good")
    docs, reasons = read(tmp_path / "c")
    assert [d.text for d in docs] == ["good"]
    assert reasons == [f"skipped: {tmp_path / 'c'}/bad\ufffdname.txt: file name is not valid "
                       "UTF-8: refused (rename the file to read it)"]


# -- text forms ------------------------------------------------------------------------------
def test_nfc_and_nfd_are_one_document(tmp_path: Path):
    text = "Ahab's crème brûlée, Ωmega"
    (tmp_path / "nfc.txt").write_text(unicodedata.normalize("NFC", text))
    (tmp_path / "nfd.txt").write_text(unicodedata.normalize("NFD", text))
    assert unicodedata.normalize("NFD", text) != text
    snapshot = collect_documents(read_corpus(tmp_path))
    [doc] = snapshot.documents
    assert doc.doc_id == document_id(normalise_text(unicodedata.normalize("NFD", text)))
    assert len(doc.sources) == 2


def test_a_500_character_word_chunks(chunker):
    word = "x" * 250 + "é" * 250
    text = f"before {word} after"
    chunks = list(chunker.chunk_documents([("d", text)]))
    assert chunks and all(0 < len(c.token_ids) <= chunker.config.chunk_tokens for c in chunks)
    assert "".join(c.text for c in chunks).replace(" ", "") == text.replace(" ", "")
    assert chunks[-1].text.endswith("after") and chunks[-1].next_chunk_id is None


# -- a corpus mixing everything ---------------------------------------------------------------
def test_a_hostile_corpus_still_ingests_every_good_document(catalog: Catalog, store: FeatureStore,
                                                             tmp_path: Path):
    corpus = corpus_with_links(tmp_path)
    jsonl(corpus, "lines.jsonl", [r'{"text": "\ud800"}', "[" * 200_000, '{"text": "middle"}'])
    pq.write_table(pa.table({"text": utf8_column([b"row ok", b"bad \xff", None])}),
                   corpus / "rows.parquet")
    pq.write_table(pa.table({"text": [f"{i:08d}" + "a" * 100_000 for i in range(3000)]}),
                   corpus / "bomb.parquet", compression="zstd", use_dictionary=False)
    (corpus / "binary.txt").write_bytes(bytes(range(256)) * 16)
    catalog.add_corpus("hostile", str(corpus))
    result = ingest_documents(catalog, store, "hostile")
    texts = set(store.document_texts(catalog.corpus_doc_ids(result.corpus_version.id)).values())
    assert texts == {"good", "good first", "middle", "good last", "row ok", "bad \ufffd"}
    assert result.documents == 6 and result.corpus_version.n_documents == 6
    assert "secret" not in " ".join(texts) and "private" not in " ".join(texts)
    declared = pq.ParquetFile(corpus / "bomb.parquet").metadata.row_group(0).total_byte_size
    got = [(i.severity, i.source.removeprefix(f"{corpus}/"), i.reason[:40]) for i in result.issues]
    assert got == [
        ("skipped", "notes.txt", f"symlink to {tmp_path / 'secret.env'}, out"[:40]),
        ("skipped", "binary.txt", "looks binary (2496 of the first 4096 cha"),
        ("skipped", "bomb.parquet", f"footer declares {declared} bytes uncompre"[:40]),
        ("skipped", "lines.jsonl:2", "not valid JSON (lone surrogate \\ud800)"),
        ("skipped", "lines.jsonl:3", "not valid JSON (nested deeper than 64 le"),
        ("warning", "rows.parquet#row=1", "1 invalid UTF-8 bytes replaced with U+FF"),
        ("skipped", "rows.parquet#row=2", "'text' is empty (null)"),
    ]


def test_a_dagster_run_of_a_hostile_corpus_materializes_the_good_documents(
        home, catalog: Catalog, tmp_path: Path):
    from assets.launch import materialize_corpus
    from assets.instance import dagster_instance

    corpus = corpus_with_links(tmp_path)
    jsonl(corpus, "lines.jsonl", [r'"\ud800"', "[" * 200_000])
    pq.write_table(pa.table({"text": utf8_column([b"row \xff", None])}), corpus / "rows.parquet")
    catalog.add_corpus("hostile", str(corpus))
    outcome = materialize_corpus(dagster_instance(home), "hostile", selection=["documents", "chunks"])
    assert outcome.success, outcome.error
    documents, chunks = (a.metadata for a in outcome.assets)
    assert documents["documents"] == 4 and documents["issues"] == 5
    assert "symlink to" in documents["issue_list"] and "lone surrogate" in documents["issue_list"]
    assert chunks["chunks"] == 4


# -- names and filter values -----------------------------------------------------------------
BAD_NAMES = ["../x", "/tmp/x", "", ".hidden", "-rf", "a b", "a/b", INJECTION, "x" * 65, "é"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_unsafe_names_are_refused(catalog: Catalog, small_corpus: Path, home, name: str):
    with pytest.raises(InvalidNameError, match=rf"invalid corpus name {repr(name)[:20]}"):
        catalog.add_corpus(name, str(small_corpus))
    catalog.add_corpus("small", str(small_corpus))
    with pytest.raises(InvalidNameError, match=r"invalid retrieval set name .*: use 1-64 letters"):
        catalog.create_retrieval_set(name, ["small"])
    with pytest.raises(InvalidNameError, match="invalid retrieval set name"):
        index_root(home.indices_dir, name)
    assert [c.name for c in catalog.list_corpora()] == ["small"]
    assert catalog.list_retrieval_sets() == []


def test_safe_names_are_kept(catalog: Catalog, small_corpus: Path):
    for name in ["wiki", "Wiki-2024.v1", "a", "0_x", "x" * 64]:
        assert catalog.add_corpus(name, str(small_corpus)).name == name
    assert catalog.create_retrieval_set("set.v2-final", ["wiki"]).name == "set.v2-final"


def test_a_filter_value_injection_matches_nothing(catalog: Catalog, store: FeatureStore,
                                                  small_corpus: Path):
    catalog.add_corpus("small", str(small_corpus))
    result = ingest_documents(catalog, store, "small")
    doc_ids = catalog.corpus_doc_ids(result.corpus_version.id)
    with pytest.raises(UnknownCorpusError, match="unknown corpus \"x' OR '1'='1\""):
        catalog.get_corpus(INJECTION)
    with pytest.raises(UnknownRetrievalSetError, match="unknown retrieval set"):
        catalog.get_retrieval_set(INJECTION)
    with pytest.raises(UnknownModelError, match="no model"):
        catalog.resolve_model(INJECTION)
    with pytest.raises(UnknownModelError, match="no model"):
        catalog.resolve_model(f"{INJECTION}/1")
    assert catalog.document_sources(INJECTION) == []
    assert store.document_texts([INJECTION, f"{doc_ids[0]}' OR '1'='1"]) == {}
    assert store.chunks_of_documents([INJECTION]).num_rows == 0
    assert not store.has_members(INJECTION)
    assert len(store.document_texts(doc_ids)) == len(doc_ids)  # nothing deleted on the way


def test_cli_refuses_or_matches_nothing_for_injected_names(home, small_corpus: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COLUMNS", "200")
    added = runner.invoke(app, ["corpus", "add", INJECTION, str(small_corpus)])
    assert added.exit_code != 0 and "invalid corpus name" in added.output
    made = runner.invoke(app, ["retrieval-set", "create", "../x", "--corpus", "small"])
    assert made.exit_code != 0 and "invalid retrieval set name '../x'" in made.output
    got = runner.invoke(app, ["retrieve", "whale", "--set", INJECTION])
    assert got.exit_code != 0 and "unknown retrieval set" in got.output
    for option, kind in (("--corpus", "corpus"), ("--set", "retrieval set")):
        materialized = runner.invoke(app, ["materialize", option, INJECTION])
        assert materialized.exit_code != 0 and f"unknown {kind} {INJECTION}" in materialized.output
    listed = runner.invoke(app, ["corpus", "list", "--json"])
    assert json.loads(listed.stdout) == []
    assert not any(p.name == "x" for p in home.home.parent.iterdir())
    assert os.listdir(home.indices_dir) == []


@pytest.mark.parametrize("name", ["../small", INJECTION])
def test_opening_a_set_by_an_unsafe_name_is_unknown(catalog: Catalog, store: FeatureStore, embedder,
                                                    small_corpus: Path, home, name: str):
    """What a hot swap (`PUT /deployment/retrieval-set`) runs: a 404, never a path outside."""
    catalog.add_corpus("small", str(small_corpus))
    catalog.create_retrieval_set("small", ["small"])
    with pytest.raises(UnknownRetrievalSetError, match=r"unknown retrieval set .* \(known: small\)"):
        Retriever.open(catalog, store, embedder, home.indices_dir, name)


def test_registering_a_model_name_with_quotes_is_a_lookup_not_a_filter(home, tmp_path: Path):
    """The registry check once built `name = '{name}'`; a quote made MLflow's parser refuse it."""
    from retro_ops.catalog.mlflow_runs import Tracking

    tracking = Tracking(home)
    run_id = tracking.start_run("hostile", {})
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    source = tracking.log_artifacts(run_id, tmp_path / "ckpt", "checkpoint")
    assert tracking.register("retro-ops-retro", source, run_id, "candidate") == "1"
    assert tracking.register(INJECTION, source, run_id, "candidate") == "1"  # new model, not a match
    assert tracking.register("retro-ops-retro", source, run_id, "candidate") == "2"
    names = sorted(m.name for m in tracking.client.search_registered_models())
    assert names == sorted(["retro-ops-retro", INJECTION])
