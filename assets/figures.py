"""Metadata a person reads at a glance in the UI: markdown tables and a loss-curve image.

The image is a small PNG embedded in markdown as a data URI, so it shows on the asset's page
with no artifact server; the same numbers stay in the run's MLflow metrics.
"""

import base64
import io

import dagster as dg


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def loss_curve_png(steps: list[int], losses: list[float], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display: render to memory
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 2.6), dpi=80)
    ax = fig.add_subplot()
    ax.plot(steps, losses, linewidth=1.2)
    ax.set(xlabel="step", ylabel="training loss", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def loss_curve_markdown(steps: list[int], losses: list[float], title: str) -> dg.MetadataValue:
    return png_markdown(loss_curve_png(steps, losses, title), title)


def png_markdown(png: bytes, title: str) -> dg.MetadataValue:
    """A PNG shown inline on the asset's page (a data URI: no artifact server needed)."""
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})")
