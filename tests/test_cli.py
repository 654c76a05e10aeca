"""The CLI end to end (in-process, real stores): help, errors, JSON output, runs via Dagster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from assets.launch import dagster_instance
from retro_ops.cli.main import app
from retro_ops.settings import Settings

runner = CliRunner()


@pytest.mark.parametrize("args", [[], ["corpus"], ["corpus", "add"], ["corpus", "list"],
                                  ["materialize"], ["demo"], ["ui"]])
def test_every_command_has_help(args):
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_corpus_add_missing_path(home: Settings, tmp_path: Path):
    result = runner.invoke(app, ["corpus", "add", "x", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert f"{tmp_path / 'missing'}: no such file or folder" in result.output


def test_materialize_unknown_corpus(home: Settings):
    result = runner.invoke(app, ["materialize", "--corpus", "nope"])
    assert result.exit_code == 2
    assert "unknown corpus nope (known: none)" in result.output


def test_add_list_materialize_json(home: Settings, small_corpus: Path):
    added = runner.invoke(app, ["corpus", "add", "small", str(small_corpus), "--json"])
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout) == {"name": "small", "source_uri": str(small_corpus), "files": 6}
    assert dagster_instance(home).has_dynamic_partition("corpus", "small")

    run = runner.invoke(app, ["materialize", "--corpus", "small", "--select", "documents", "--json"])
    assert run.exit_code == 0, run.output
    [outcome] = json.loads(run.stdout)
    assert outcome["success"] and outcome["assets"][0]["metadata"]["documents"] == 6

    listed = runner.invoke(app, ["corpus", "list", "--json"])
    [corpus] = json.loads(listed.stdout)
    assert (corpus["name"], corpus["n_documents"], corpus["n_versions"]) == ("small", 6, 1)

    bad = runner.invoke(app, ["materialize", "--select", "documents,bogus"])
    assert bad.exit_code == 2 and "unknown asset(s) bogus" in bad.output
