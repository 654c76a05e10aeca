"""The evaluation's picture: bits per byte of the chunks that read neighbours, by overlap alpha
decile, one line per model and setting. Where a model copies, its line falls with alpha while
the baseline's stays flat (the paper's leakage figure); PNG bytes, for MLflow and the UI."""

from __future__ import annotations

import io

from retro_ops.evaluation.overlap import Buckets


def alpha_curve_png(rows: list[dict], title: str) -> bytes:
    """rows: EvalRow dicts with `deciles`; rows without any are skipped."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to memory
    from matplotlib.figure import Figure

    labels = Buckets.decile_labels()
    fig = Figure(figsize=(7.5, 4.2), dpi=90)
    ax = fig.add_subplot()
    for row in rows:
        values = row.get("deciles") or []
        points = [(i, v) for i, v in enumerate(values) if v is not None]
        if not points:
            continue
        style = "--" if row["setting"].startswith("control") else "-"
        ax.plot([i for i, _ in points], [v for _, v in points], style, marker="o", markersize=3,
                linewidth=1.2, label=f"{row['model']} | {row['setting']}")
    ax.set_xticks(range(len(labels)), labels, rotation=45, fontsize=7)
    ax.set(xlabel="overlap alpha of the chunk with its neighbours (chunks that read neighbours)",
           ylabel="bits per byte", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
