"""How an audit's answer is shown: a summary table, its lists, CSV files.

Shared by `retro-ops lineage ...` and `retro-ops exclude report`, which answer in the same shape
(`summary` plus named row lists).
"""

from __future__ import annotations

import csv
from pathlib import Path

from rich.table import Table

from retro_ops.cli.common import emit_json, out


def write_csv(folder: Path, name: str, rows: list[dict]) -> Path:
    """`rows` as `folder/name.csv` (a header only when there are none)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    columns = list(rows[0]) if rows else []
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def summary_table(title: str, summary: dict) -> Table:
    """One row per field; dicts as k=v, lists cut to their first ten."""
    table = Table("field", "value", title=title, show_header=False)
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = "; ".join(map(str, value[:10])) + (f" (+{len(value) - 10})" if len(value) > 10 else "")
        table.add_row(key, "-" if value is None else str(value))
    return table


def print_report(title: str, summary: dict, lists: dict[str, list[dict]], json_out: bool,
                 csv_dir: Path | None) -> None:
    """An audit's answer: a summary table and its lists (the whole answer with --json; every
    list as a CSV file with --csv DIR)."""
    if csv_dir is not None:
        for name, rows in lists.items():
            write_csv(csv_dir, name, rows)
    if json_out:
        emit_json({"summary": summary, **lists})
        return
    out.print(summary_table(title, summary))
    if summary.get("may_need_retraining"):
        out.print(f"[yellow]read by {', '.join(summary['may_need_retraining'])}: they may need "
                  "retraining without it (their weights learned from it)[/yellow]")
    for name, rows in lists.items():
        if rows and name not in ("documents", "training_chunks", "neighbour_chunks", "chunks"):
            table = Table(*rows[0].keys(), title=name)
            for row in rows[:20]:
                table.add_row(*("-" if v is None else str(v) for v in row.values()))
            out.print(table)
    if csv_dir is not None:
        out.print(f"full lists: {', '.join(f'{n}.csv' for n in lists)} in {csv_dir}")
