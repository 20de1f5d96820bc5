"""The report's plots: matplotlib figures rendered to PNG data URIs, so the page needs no files or network.

`matplotlib.figure.Figure` is used directly (no pyplot): no global state, no GUI backend.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Sequence

WIDTH, HEIGHT, DPI = 8.0, 3.6, 100


def _figure(rows: int = 1, columns: int = 1, height: float = HEIGHT):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH, height), dpi=DPI, layout="constrained")
    return figure, figure.subplots(rows, columns, squeeze=False).ravel()


def _data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _height_for(bars: int) -> float:
    """Horizontal bar charts grow with their bar count so labels stay readable."""
    return max(HEIGHT, 0.3 * bars + 1.0)


def bars(labels: Sequence[str], values: Sequence[float], *, value_label: str, horizontal: bool = False) -> str:
    """One bar per label (horizontal for long labels such as rule names)."""
    figure, (axes,) = _figure(height=_height_for(len(labels)) if horizontal else HEIGHT)
    if horizontal:
        axes.barh(list(labels), values, color="tab:blue")
        axes.invert_yaxis()  # first label on top, as in the table
        axes.set_xlabel(value_label)
    else:
        axes.bar([str(label) for label in labels], values, color="tab:blue")
        axes.set_ylabel(value_label)
    return _data_uri(figure)


def funnel(stages: Sequence[str], documents: Sequence[int], tokens: Sequence[float]) -> str:
    """Documents out of each stage (bars) and their tokens (line, second axis)."""
    figure, (axes,) = _figure()
    axes.bar(stages, documents, color="tab:blue", label="documents")
    axes.set_ylabel("documents")
    axes.tick_params(axis="x", labelrotation=30)
    token_axes = axes.twinx()
    token_axes.plot(stages, tokens, color="tab:orange", marker="o", label="tokens")
    token_axes.set_ylabel("tokens")
    token_axes.set_ylim(bottom=0)
    figure.legend(loc="outside upper center", ncols=2)
    return _data_uri(figure)


def quality(bucket_low: Sequence[float], width: float, counts: Sequence[int], curve_x: Sequence[float],
            keep_probability: Sequence[float] | None) -> str:
    """Quality-score histogram, with the Pareto rule's keep probability per score on a second axis."""
    figure, (axes,) = _figure()
    axes.bar(bucket_low, counts, width=width, align="edge", color="tab:blue", edgecolor="white")
    axes.set_xlabel("quality score (classifier P(curated))")
    axes.set_ylabel("documents")
    axes.set_xlim(0, 1)
    if keep_probability is not None:
        keep_axes = axes.twinx()
        keep_axes.plot(curve_x, keep_probability, color="tab:red")
        keep_axes.set_ylabel("P(keep)", color="tab:red")
        keep_axes.set_ylim(0, 1)
    return _data_uri(figure)


def mixture(sources: Sequence[str], tokens: Sequence[int], epochs: Sequence[float]) -> str:
    """Tokens per source and the epochs the mixture's budget repeats each one."""
    figure, (token_axes, epoch_axes) = _figure(columns=2)
    token_axes.bar(sources, tokens, color="tab:blue")
    token_axes.set_ylabel("tokens")
    epoch_axes.bar(sources, epochs, color="tab:green")
    epoch_axes.set_ylabel("epochs over the token budget")
    return _data_uri(figure)
