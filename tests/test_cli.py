"""The CLI end to end (in-process, real stores): help, errors, JSON output, runs via Dagster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from assets.instance import dagster_instance
from retro_ops.cli import common
from retro_ops.cli.main import app
from retro_ops.settings import Settings

runner = CliRunner()


@pytest.fixture(scope="module")
def ws(trained_ws):
    """The module's home: a copy of `small` whose tiny RETRO (tiny_spec(steps=2)) is trained
    already, so training that spec here reuses it (tests/sites.py)."""
    return trained_ws


@pytest.mark.parametrize("args", [[], ["corpus"], ["corpus", "add"], ["corpus", "list"],
                                  ["materialize"], ["demo"], ["ui"], ["retrieval-set"],
                                  ["retrieval-set", "create"], ["retrieval-set", "list"],
                                  ["retrieve"]])
def test_every_command_has_help(args):
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def _options(command: list[str]) -> dict[str, tuple[str, str]]:
    """The options of a command as click declares them: first name -> (all spellings, help)."""
    import typer.main

    cmd = typer.main.get_command(app)
    for name in command:
        cmd = cmd.commands[name]
    return {p.opts[0]: (" ".join(sorted(p.opts + p.secondary_opts)), p.help or "")
            for p in cmd.params if p.opts[0].startswith("-")}


NOUNS = {"--set": ("--retrieval-set --set -s", common.SET_HELP), "--corpus": ("--corpus -c", common.CORPUS_HELP),
         "--model": ("--model -m", common.MODEL_HELP)}


@pytest.mark.parametrize("command", [["materialize"], ["train"], ["eval"], ["generate"], ["retrieve"],
                                     ["serve"], ["retrieval-set", "create"]])
def test_one_spelling_for_one_noun(command):
    """A retrieval set is `--set/-s` (alias `--retrieval-set`), a corpus `--corpus/-c`, a model
    `--model/-m`, on every command that takes one, and the noun's help starts the same everywhere."""
    options = _options(command)
    nouns = {name: (spellings, help_text[:len(NOUNS[name][1])]) for name, (spellings, help_text) in options.items()
             if name in NOUNS}
    assert nouns, command
    assert nouns == {name: NOUNS[name] for name in nouns}
    assert not any(name in ("--retrieval-set", "-r") for name in options), "an old spelling came back"


def test_corpus_add_missing_path(home: Settings, tmp_path: Path):
    result = runner.invoke(app, ["corpus", "add", "x", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert f"{tmp_path / 'missing'}: no such file or folder" in result.output


def test_materialize_unknown_corpus(home: Settings):
    result = runner.invoke(app, ["materialize", "--corpus", "nope"])
    assert result.exit_code == 2
    assert "unknown corpus nope (known: none)" in result.output
    result = runner.invoke(app, ["materialize", "--select", "bogus"])
    assert result.exit_code == 2 and "unknown asset(s) bogus" in result.output


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


def test_retrieval_set_cli(indexed_home, monkeypatch):
    settings, catalog, store = indexed_home
    monkeypatch.setenv("RETRO_OPS_HOME", str(settings.home))
    missing = runner.invoke(app, ["retrieval-set", "create", "x", "--corpus", "nope"])
    assert missing.exit_code == 2 and "unknown corpus 'nope' (known: small)" in missing.output
    made = runner.invoke(app, ["retrieval-set", "create", "cli_set", "--corpus", "small", "--json"])
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["corpora"] == ["small"]
    not_built = runner.invoke(app, ["retrieve", "whale", "--set", "cli_set"])
    assert not_built.exit_code == 2
    assert "retrieval set 'cli_set' has no published index" in not_built.output
    built = runner.invoke(app, ["materialize", "--retrieval-set", "cli_set", "--json"])
    assert built.exit_code == 0, built.output
    got = runner.invoke(app, ["retrieve", "Call me Ishmael", "--set", "cli_set", "-k", "3", "--json"])
    assert got.exit_code == 0, got.output
    answer = json.loads(got.stdout)
    assert [n["rank"] for n in answer["neighbours"]] == [1, 2, 3]
    assert answer["neighbours"][0]["source"].endswith(".txt")
    listed = json.loads(runner.invoke(app, ["retrieval-set", "list", "--json"]).stdout)
    [row] = [r for r in listed if r["name"] == "cli_set"]
    assert row["index"]["ntotal"] == row["n_chunks"]
    unknown = runner.invoke(app, ["retrieve", "whale", "--set", "nope"])
    assert unknown.exit_code == 2 and "unknown retrieval set 'nope'" in unknown.output


def test_models_eval_generate_cli(ws, monkeypatch):
    from helpers import tiny_spec

    from retro_ops.training.prepare import prepare_training
    from retro_ops.training.run import train_model

    monkeypatch.setenv("RETRO_OPS_HOME", str(ws.settings.home))
    info = train_model(ws, prepare_training(ws, tiny_spec(steps=2)), "retro").info
    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    assert info.ref in [m["ref"] for m in listed]
    evaluated = runner.invoke(app, ["eval", "--model", info.ref, "--set", "small", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    rows = json.loads(evaluated.stdout)["rows"]
    assert [r["setting"] for r in rows] == ["no retrieval", "set small", "control: small shuffled",
                                            "control: oracle"]
    generated = runner.invoke(app, ["generate", "Call me Ishmael. " * 12, "--model", info.ref,
                                    "--set", "small", "--max-new-tokens", "3", "--json"])
    assert generated.exit_code == 0, generated.output
    body = json.loads(generated.stdout)
    assert body["new_tokens"] == 3 and body["retrievals"][0]["neighbours"]
    unknown = runner.invoke(app, ["eval", "--model", "nope/9", "--set", "small"])
    assert unknown.exit_code == 2 and "no model 'nope/9'" in unknown.output


def test_train_json_is_plain_json(ws, monkeypatch):
    """`train --json` through Dagster: a checkpoint's metadata holds a table (its lineage), URLs
    and markdown (the loss curve); every value comes out as plain JSON, a table as its rows."""
    monkeypatch.setenv("RETRO_OPS_HOME", str(ws.settings.home))
    run = runner.invoke(app, ["train", "--corpus", "small", "--set", "small", "--steps", "2", "--batch-size", "2",
                              "--select", "training_neighbours,baseline_checkpoint", "--json"])
    assert run.exit_code == 0, run.output
    [outcome] = json.loads(run.stdout)
    assert outcome["success"], outcome["error"]
    by_asset = {a["asset"]: a["metadata"] for a in outcome["assets"]}
    assert set(by_asset) == {"training_neighbours", "baseline_checkpoint"}
    baseline = by_asset["baseline_checkpoint"]
    lineage = baseline["lineage"]
    assert isinstance(lineage, list) and lineage and set(lineage[0]) == {"field", "value"}
    assert baseline["loss_curve"].startswith("![baseline training loss](data:image/png;base64,")
    assert baseline["losses"]["step"] == [0, 1] and baseline["kind"] == "baseline"
    assert by_asset["training_neighbours"]["training_spec"]["steps"] == 2


def test_every_metadata_value_becomes_plain_json():
    """What `--json` prints for each kind of Dagster metadata: tables as rows, records as dicts,
    links and text as strings; json.dumps with no fallback accepts all of it."""
    import dagster as dg

    from assets.launch import _plain

    key = dg.AssetKey(["up", "stream"])
    values = {
        "table": (dg.MetadataValue.table([dg.TableRecord({"k": "recall", "v": 0.9})],
                                         schema=dg.TableSchema(columns=[dg.TableColumn("k"), dg.TableColumn("v")])),
                  [{"k": "recall", "v": 0.9}]),
        "url": (dg.MetadataValue.url("http://127.0.0.1:5000/#/runs/1"), "http://127.0.0.1:5000/#/runs/1"),
        "md": (dg.MetadataValue.md("| a |"), "| a |"), "path": (dg.MetadataValue.path("/x/y"), "/x/y"),
        "json": (dg.MetadataValue.json({"a": [1, 2]}), {"a": [1, 2]}), "int": (dg.MetadataValue.int(3), 3),
        "float": (dg.MetadataValue.float(0.5), 0.5), "bool": (dg.MetadataValue.bool(True), True),
        "null": (dg.MetadataValue.null(), None), "asset": (dg.MetadataValue.asset(key), "up/stream"),
        "run": (dg.MetadataValue.dagster_run("abc"), "abc"),
        "job": (dg.MetadataValue.job("j", "loc"), {"job_name": "j", "location_name": "loc", "repository_name": None}),
        "lineage": (dg.MetadataValue.column_lineage(dg.TableColumnLineage({"c": [dg.TableColumnDep(key, "d")]})),
                    {"deps_by_column": {"c": [{"asset_key": "up/stream", "column_name": "d"}]}}),
        "plain": (7, 7),
    }
    got = {name: _plain(value) for name, (value, _) in values.items()}
    assert got == {name: want for name, (_, want) in values.items()}
    schema = _plain(dg.MetadataValue.table_schema(dg.TableSchema(columns=[dg.TableColumn("k", "string")])))
    assert [(c["name"], c["type"]) for c in schema["columns"]] == [("k", "string")]
    json.dumps([got, schema])


def test_piped_tables_keep_whole_model_names(monkeypatch):
    """The demo's paired differences piped to a log: rich would assume 80 columns and cut
    `retro-ops-retrofit/1 | set asv_nt` to `retro-ops-r…`; a piped console is wide instead."""
    from rich.table import Table

    monkeypatch.delenv("COLUMNS", raising=False)
    console = common.console()
    assert not console.is_terminal and console.width == common.PIPED_WIDTH
    table = Table("a", "b", "bucket", "bpb a - b", "95% interval", "chunks")
    table.add_row("retro-ops-retrofit/1 | set asv_nt", "retro-ops-baseline/1 | no retrieval",
                  "alpha<=12.5%", "-0.0022", "[-0.0028, -0.0016]", "377")
    with console.capture() as captured:
        console.print(table)
    assert "retro-ops-retrofit/1 | set asv_nt" in captured.get()
    assert "retro-ops-baseline/1 | no retrieval" in captured.get()
    monkeypatch.setenv("COLUMNS", "90")
    assert common.console().width == 90  # an explicit width still wins


def test_no_dagster_beta_warning_in_cli_output(home: Settings):
    """Loading the code location (any command that runs assets) prints no BetaWarning for the
    observable sources we chose to use; a fresh process, so the import really happens."""
    import os
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "retro_ops.cli.main", "materialize"], capture_output=True,
                         text=True, env={**os.environ, "RETRO_OPS_HOME": str(home.home)}, timeout=300)
    assert run.returncode == 2 and "nothing to materialize" in run.stderr, run.stderr
    assert "Warning" not in run.stderr, run.stderr


def test_a_freshly_built_index_is_not_called_reused():
    """Every faiss_index materialization carries `reused` (True or False): the run table said
    "reused" for freshly built indices too, whatever their recall."""
    from assets.launch import AssetOutcome
    from retro_ops.cli.runs import _row

    built = {"ntotal": 136, "reused": False, "factory": "IDMap,Flat", "recall_at_10": 1.0, "p50_ms": 0.05,
             "batch_qps": 9000.0}
    assert _row(AssetOutcome("faiss_index", built))[2] == "IDMap,Flat: recall@10 1.000, p50 0.05 ms, 9,000 q/s"
    assert _row(AssetOutcome("faiss_index", {**built, "reused": True}))[2] == "reused (same config and inputs)"
