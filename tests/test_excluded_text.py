"""Excluded text is never shown by default (issue #25, item 3), on a real home: the `small` set's
chunks in real LanceDB, the real catalog, the real CLI.

`generations show` of a generation whose neighbours are excluded (by chunk id, by text) shows
them as their id and the exclusion covering it, in text and in JSON, without their source file
names; `--include-excluded` shows the text to an auditor, recorded in the exclusion log first
(and listed by `exclude report`). `retrieve` leaves out a continuation excluded after the set
was built. `exclude apply` shows the sample of what it just excluded as exclusions.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retro_ops.cli.main import app as cli
from retro_ops.errors import ExclusionError
from retro_ops.generations.log import GenerationLog
from retro_ops.generations.records import GenerationLogConfig, GenerationRecord, NeighbourUse, new_request_id
from retro_ops.generations.search import show
from retro_ops.ids import chunk_id
from retro_ops.settings import HOME_ENV

runner = CliRunner()


def _cli(ws, *args: str):
    result = runner.invoke(cli, list(args), env={HOME_ENV: str(ws.settings.home)})
    assert result.exit_code == 0, (args, result.output)
    return result


def _strings(value) -> list[str]:
    """Every string in a JSON value (keys and values), to look for text anywhere in it."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _head(text: str, n: int = 40) -> str:
    """What a check looks for: the start of a text, whitespace as one space (tables fold lines)."""
    return " ".join(text.split())[:n]


def _flat(output: str) -> str:
    return " ".join(output.replace("│", " ").split())


@pytest.fixture
def ws(own_ws):
    """Each test excludes chunks (and revokes them after): in a copy of `small` of its own."""
    return own_ws


@pytest.fixture
def members(ws) -> list[dict]:
    version = ws.catalog.latest_retrieval_set_version("small")
    return ws.store.members(version.digest, ["chunk_id", "doc_id", "position", "content_hash", "text",
                                             "continuation_text"]).to_pylist()


@pytest.fixture
def generation(ws, members):
    """A logged generation that read three chunks of three documents (the real log writer)."""
    picked, docs = [], set()
    for row in members:
        if row["doc_id"] not in docs and row["position"] == 3:
            picked.append(row)
            docs.add(row["doc_id"])
        if len(picked) == 3:
            break
    record = GenerationRecord(
        request_id=new_request_id(), created_at=datetime.now(timezone.utc), source="cli",
        prompt="prompt: a whale", output="output: a whale", params={"max_new_tokens": 8},
        model="model-1", model_id=1, retrieval_set="small", retrieval_set_version=1,
        deployment_id=None, prompt_tokens=3, new_tokens=8, retrieval_ms=1.0, model_ms=2.0,
        neighbours=[NeighbourUse(0, [r["chunk_id"] for r in picked], [r["doc_id"] for r in picked],
                                 [0.9, 0.8, 0.7])])
    log = GenerationLog(ws.store, ws.embedder, GenerationLogConfig(flush_every=1, traces=False))
    log.record(record)
    log.close()
    return record.request_id, picked


def test_generations_show_hides_excluded_neighbours_and_an_auditor_read_is_logged(ws, generation):
    request_id, (by_id, by_text, kept) = generation
    name = {r["doc_id"]: Path(ws.catalog.document_sources(r["doc_id"])[0]).name
            for r in (by_id, by_text, kept)}
    assert len(set(name.values())) == 3
    [id_exclusion] = json.loads(_cli(ws, "exclude", "chunk", str(by_id["chunk_id"]), "--reason",
                                     "takedown", "--json").stdout)["exclusion_ids"]
    [text_exclusion] = json.loads(_cli(ws, "exclude", "text", by_text["text"], "--reason", "pii",
                                       "--json").stdout)["exclusion_ids"]
    try:
        # by default: the id and the exclusion, never the text or the file it came from
        screen = _cli(ws, "generations", "show", request_id).stdout
        for row, exclusion in ((by_id, id_exclusion), (by_text, text_exclusion)):
            assert _head(row["text"]) not in _flat(screen) and name[row["doc_id"]] not in screen
            assert f"{row['chunk_id']} excluded by exclusion {exclusion} (" in screen
        assert _head(kept["text"]) in _flat(screen) and name[kept["doc_id"]] in screen
        body = json.loads(_cli(ws, "generations", "show", request_id, "--json").stdout)
        everything = " ".join(_strings(body))
        assert _head(by_id["text"]) not in everything and _head(by_text["text"]) not in everything
        [hidden_id, hidden_text, shown] = body["neighbours"][0]["neighbours"]
        assert (hidden_id["chunk_id"], hidden_id["text"], hidden_id["sources"]) == (by_id["chunk_id"], None, None)
        assert hidden_id["excluded"] == {"exclusion_id": id_exclusion, "scope": "chunk",
                                         "policy": "manual", "reason": "takedown"}
        assert (hidden_text["excluded"]["exclusion_id"], hidden_text["excluded"]["scope"]) == \
            (text_exclusion, "content_hash")
        assert shown["text"] == kept["text"] and shown["excluded"] is None and shown["sources"]
        assert ws.catalog.exclusion_reads() == []  # hiding is not a read

        # lineage and the exclusion report name the chunk and its exclusion, never its text
        for args in (("lineage", "chunk", str(by_id["chunk_id"])), ("exclude", "report", str(id_exclusion))):
            for output in (_cli(ws, *args).stdout, _cli(ws, *args, "--json").stdout):
                assert _head(by_id["text"]) not in _flat(output)

        # an auditor: the text, after the read is in the exclusion log
        audited = _cli(ws, "generations", "show", request_id, "--include-excluded", "--actor",
                       "auditor-7").stdout
        assert _head(by_id["text"]) in _flat(audited) and _head(by_text["text"]) in _flat(audited)
        assert f"excluded by exclusion {id_exclusion}" in audited and "shown for audit" in audited
        reads = ws.catalog.exclusion_reads()
        assert {(r["exclusion_id"], r["chunk_id"], r["actor"], r["purpose"]) for r in reads} == {
            (id_exclusion, by_id["chunk_id"], "auditor-7", f"generations show {request_id}"),
            (text_exclusion, by_text["chunk_id"], "auditor-7", f"generations show {request_id}")}
        report = json.loads(_cli(ws, "exclude", "report", str(id_exclusion), "--json").stdout)
        assert [(r["actor"], r["chunk_id"]) for r in report["reads"]] == [("auditor-7", by_id["chunk_id"])]
        assert report["summary"]["reads"] == 1
        with pytest.raises(ExclusionError, match=r"showing excluded text \(generations show .+\) needs an actor"):
            show(ws.store, ws.catalog, request_id, reveal_to=" ")
    finally:
        for exclusion in (id_exclusion, text_exclusion):
            ws.catalog.revoke_exclusion(exclusion, reason="test over", actor="pytest")


def test_retrieve_leaves_out_a_continuation_excluded_after_the_set_was_built(ws, members):
    """The set version holds chunk X with its continuation Y; Y is excluded (no rebuild): X is still
    retrieved, without Y's text or tokens, and shows Y as its id and exclusion."""
    hit = next(r for r in members if r["position"] == 5 and r["continuation_text"])
    following = chunk_id(hit["doc_id"], hit["position"] + 1)
    [exclusion] = json.loads(_cli(ws, "exclude", "chunk", str(following), "--reason", "takedown",
                                  "--json").stdout)["exclusion_ids"]
    try:
        body = json.loads(_cli(ws, "retrieve", hit["text"], "--set", "small", "-k", "3", "--json").stdout)
        first = body["neighbours"][0]
        assert first["chunk_id"] == hit["chunk_id"]
        assert _head(hit["continuation_text"]) not in " ".join(_strings(body))
        assert len(first["token_ids"]) == 64  # the chunk alone: the continuation's tokens left out
        assert (first["continuation_text"], first["continuation_chunk_id"], first["continuation_excluded_by"]) \
            == ("", following, exclusion)
        screen = _flat(_cli(ws, "retrieve", hit["text"], "--set", "small", "-k", "3").stdout)
        assert _head(hit["text"]) in screen and _head(hit["continuation_text"]) not in screen
        assert f"(continuation: chunk {following}, excluded by exclusion {exclusion})" in screen
    finally:
        ws.catalog.revoke_exclusion(exclusion, reason="test over", actor="pytest")
    again = json.loads(_cli(ws, "retrieve", hit["text"], "--set", "small", "-k", "1", "--json").stdout)
    assert again["neighbours"][0]["continuation_text"] == hit["continuation_text"]  # back after a revoke


def test_exclude_apply_shows_what_it_excluded_as_exclusions(ws, tmp_path):
    """A dry run's sample shows the matching texts (nothing is excluded yet); the real run's sample
    shows the exclusions it recorded instead."""
    policy = tmp_path / "policy.toml"
    policy.write_text('name = "no-coffins"\n[[rule]]\nscorer = "blocklist"\npatterns = ["coffin"]\n'
                      'threshold = 1.0\nscope = "chunk"\nreason = "test"\n')
    dry = json.loads(_cli(ws, "exclude", "apply", "--policy", str(policy), "--set", "small", "--dry-run",
                          "--json").stdout)
    assert dry["sample"] and all(r["text"] and r.get("excluded") is None for r in dry["sample"])
    screen = _cli(ws, "exclude", "apply", "--policy", str(policy), "--set", "small").stdout
    recorded = [e for e in ws.catalog.list_exclusions(include_revoked=False) if e.policy == "no-coffins"]
    try:
        assert len(recorded) == dry["new_exclusions"] > 0
        for row in dry["sample"]:
            assert _head(row["text"], 30) not in _flat(screen)
        assert {f"excluded by exclusion {e.id} (chunk, no-coffins: test (coffin))" for e in recorded} \
            <= {line.split(": ", 1)[1] for line in screen.splitlines() if ": excluded by" in line}
    finally:
        for exclusion in recorded:
            ws.catalog.revoke_exclusion(exclusion.id, reason="test over", actor="pytest")
