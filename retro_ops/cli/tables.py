"""Rich tables that more than one command prints (kept apart so commands never import each other)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from retro_ops.cli.common import out


def _num(value: float | None) -> str:
    return "" if value is None or value != value else f"{value:.4f}"


def print_eval_rows(rows: list[dict], title: str, console: Console = out) -> None:
    """bpb over all chunks, sequence-first chunks (they read nothing), chunks that read
    neighbours, and those by overlap alpha (the share of a chunk found in its neighbours)."""
    table = Table("model", "setting", "bits/byte", "[UNK] share", "first chunks", "reads",
                  "reads α≤12.5%", "reads α 12.5-50%", "reads α>50%", title=title)
    for r in rows:
        table.add_row(r["model"], r["setting"], _num(r["bits_per_byte"]), f"{r['unknown_share']:.1%}",
                      _num(r["bpb_first"]), _num(r["bpb_reads"]), _num(r["bpb_reads_low"]),
                      _num(r["bpb_reads_mid"]), _num(r["bpb_reads_high"]))
    console.print(table)


def print_alpha_deciles(rows: list[dict], console: Console = out) -> None:
    """bpb of the chunks that read neighbours by alpha decile: the paper's copy curve."""
    shown = [r for r in rows if r.get("deciles")]
    if not shown:
        return
    width = 100 // len(shown[0]["deciles"])
    labels = [f"α {d * width}-{(d + 1) * width}%" for d in range(len(shown[0]["deciles"]))]
    table = Table("model | setting", *labels, title="bpb of chunks that read neighbours, by overlap alpha")
    for r in shown:
        table.add_row(f"{r['model']} | {r['setting']}", *(_num(v) for v in r["deciles"]))
    console.print(table)


def print_comparisons(rows: list[dict], console: Console = out) -> None:
    """Differences in bpb (a - b; negative: a is better) with their 95% paired bootstrap interval.
    Pairs that score identically (RETROfit without retrieval is its baseline) are left out."""
    shown = [c for c in rows if not (c["difference"] == c["low"] == c["high"] == 0)]
    if not shown:
        return
    omitted = len(rows) - len(shown)
    table = Table("a", "b", "bucket", "bpb a - b", "95% interval", "chunks", "documents",
                  title="paired differences (negative: a is better; intervals resample documents)",
                  caption=f"{omitted} identical pairs not shown" if omitted else None)
    for c in shown:
        table.add_row(c["a"], c["b"], c["bucket"], f"{c['difference']:+.4f}",
                      f"[{c['low']:+.4f}, {c['high']:+.4f}]", str(c["chunks"]), str(c.get("units", "")))
    console.print(table)


def print_eval_summary(evaluations: list[dict], console: Console = out) -> None:
    """One short table per evaluated text: each model and setting once (the swap evaluation
    repeats the evaluation's rows), controls left out, with bits per byte, that of the chunks
    that read neighbours, and the difference from the baseline over all chunks with its 95%
    interval. `evaluations`: the metadata of evaluation assets (text, rows, comparisons)."""
    by_text: dict[str, dict[tuple[str, str], tuple]] = {}
    for evaluation in evaluations:
        versus = {c["a"]: c for c in evaluation.get("comparisons") or []
                  if c.get("what") == "vs baseline" and c["bucket"] == "all"}
        rows = by_text.setdefault(evaluation.get("text", ""), {})
        for r in evaluation["rows"]:
            if not r["setting"].startswith("control"):
                rows.setdefault((r["model"], r["setting"]), (r, versus.get(f"{r['model']} | {r['setting']}")))
    for text, rows in by_text.items():
        table = Table("model", "setting", "bits/byte", "reads", "vs baseline", "95% interval",
                      title=f"summary: bits per byte on {text} (lower is better)")
        for (model, setting), (r, c) in rows.items():
            table.add_row(model, setting, _num(r["bits_per_byte"]), _num(r["bpb_reads"]),
                          f"{c['difference']:+.4f}" if c else "", f"[{c['low']:+.4f}, {c['high']:+.4f}]" if c else "")
        console.print(table)
