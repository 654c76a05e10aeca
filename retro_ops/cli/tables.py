"""Rich tables that more than one command prints (kept apart so commands never import each other)."""

from __future__ import annotations

from rich.table import Table

from retro_ops.cli.common import out


def print_eval_rows(rows: list[dict], title: str) -> None:
    table = Table("model", "setting", "bits/byte", "loss/token", "8-gram overlap", title=title)
    for r in rows:
        overlap = r["neighbour_8gram_overlap"]
        table.add_row(r["model"], r["setting"], f"{r['bits_per_byte']:.4f}", f"{r['loss_per_token']:.4f}",
                      "" if overlap is None else f"{overlap:.4f}")
    out.print(table)
