"""Rich tables that more than one command prints (kept apart so commands never import each other)."""

from __future__ import annotations

from rich.table import Table

from retro_ops.cli.common import out


def _num(value: float | None) -> str:
    return "" if value is None or value != value else f"{value:.4f}"


def print_eval_rows(rows: list[dict], title: str) -> None:
    table = Table("model", "setting", "bits/byte", "non-[UNK] bpb", "[UNK] share", "bpb alpha<=12.5%",
                  "bpb alpha<=50%", "alpha>50% share", title=title)
    for r in rows:
        table.add_row(r["model"], r["setting"], _num(r["bits_per_byte"]), _num(r["bits_per_byte_known"]),
                      f"{r['unknown_share']:.1%}", _num(r["bpb_alpha_le_12_5"]), _num(r["bpb_alpha_le_50"]),
                      "" if r["leaky_share"] is None else f"{r['leaky_share']:.1%}")
    out.print(table)


def print_comparisons(rows: list[dict]) -> None:
    """Differences in bpb (a - b; negative: a is better) with their 95% paired bootstrap interval.
    Pairs that score identically (RETROfit without retrieval is its baseline) are left out."""
    shown = [c for c in rows if not (c["difference"] == c["low"] == c["high"] == 0)]
    if not shown:
        return
    omitted = len(rows) - len(shown)
    table = Table("a", "b", "bucket", "bpb a - b", "95% interval", "chunks",
                  title="paired differences (negative: a is better)",
                  caption=f"{omitted} identical pairs not shown" if omitted else None)
    for c in shown:
        table.add_row(c["a"], c["b"], c["bucket"], f"{c['difference']:+.4f}",
                      f"[{c['low']:+.4f}, {c['high']:+.4f}]", str(c["chunks"]))
    out.print(table)
