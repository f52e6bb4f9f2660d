"""The recall-vs-QPS Pareto plot (matplotlib is imported when a plot is drawn)."""

from __future__ import annotations

from typing import Any

from gpuann.eval.sweep import METRIC_COLUMNS

__all__ = ["pareto_frontier", "plot_pareto"]

#: One marker per index (colours repeat after ten), so lines stay apart in print and for the
#: colour-blind.
_MARKERS = "osD^vP<X>h"
#: More indexes than this: the legend goes beside the axes, and a new figure is wider.
_LEGEND_INSIDE_MAX = 6
#: A label is left out when its point is closer than this (x, y pixels) to a labelled one.
_LABEL_GAP_PX = (48.0, 10.0)


def pareto_frontier(frame: Any, x: str = "recall", y: str = "qps", by: str = "index") -> Any:
    """The rows of a sweep no other row of the same group beats on both ``x`` and ``y``.

    Parameters
    ----------
    frame : pandas.DataFrame
        From :func:`gpuann.eval.sweep` (or several concatenated).
    x, y : str
        Columns where larger is better.
    by : str
        Frontiers are per value of this column (each index); ignored when absent.

    Returns
    -------
    pandas.DataFrame
        The frontier rows, by group, in increasing ``x`` (so decreasing ``y``).

    >>> import pandas as pd
    >>> df = pd.DataFrame({"recall": [0.5, 0.9, 0.8, 0.95], "qps": [900, 400, 300, 100]})
    >>> pareto_frontier(df)["recall"].tolist()
    [0.5, 0.9, 0.95]
    """
    import pandas as pd

    groups = frame.groupby(by, sort=False) if by in frame.columns else [(None, frame)]
    labels = []
    for _, group in groups:
        best_y, kept = float("-inf"), []
        ordered = group.sort_values([x, y], ascending=[False, False])
        for label, row in ordered.iterrows():
            if row[y] > best_y:
                kept.append(label)
                best_y = row[y]
        labels += kept[::-1]
    return frame.loc[labels] if labels else pd.DataFrame(columns=frame.columns)


def _param_columns(frame: Any, by: str) -> list[str]:
    return [c for c in frame.columns if c not in (*METRIC_COLUMNS, by)]


def _value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # pandas.concat turns an int column with gaps into floats
    return str(value)


def _label(row: Any, columns: list[str]) -> str:
    return ", ".join(f"{c}={_value(row[c])}" for c in columns if row[c] == row[c])  # skip NaN


def _annotate(ax: Any, fronts: list, params: list[str], x: str, y: str) -> None:
    """Label the frontier points with their parameters, leaving out a label that would cover
    one already written (its point stays drawn)."""
    ax.autoscale_view()
    placed: list[tuple[float, float]] = []
    gap_x, gap_y = _LABEL_GAP_PX
    for front, color in fronts:
        for _, row in front.iterrows():
            text = _label(row, params)
            if not text:
                continue
            px, py = ax.transData.transform((row[x], row[y]))
            if any(abs(px - a) < gap_x and abs(py - b) < gap_y for a, b in placed):
                continue
            placed.append((px, py))
            ax.annotate(
                text,
                (row[x], row[y]),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=7,
                color=color,
            )


def plot_pareto(
    frame: Any,
    *,
    x: str = "recall",
    y: str = "qps",
    by: str = "index",
    annotate: bool = True,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """Recall vs queries per second (log scale), one Pareto frontier per index.

    Every measured point is drawn faintly; each index's frontier is a line with its own marker,
    labelled with its swept parameters when ``annotate`` (a label that would cover one
    already written is left out; its point stays). Up and to the right is better. With
    more than six indexes the legend is drawn beside the axes (and a new figure is wider).

    Parameters
    ----------
    frame : pandas.DataFrame
        From :func:`gpuann.eval.sweep` (several indexes: ``pandas.concat``).
    x, y, by : str
        Columns for the axes and the grouping (legend).
    annotate : bool
        Write the parameters next to each frontier point.
    ax : matplotlib.axes.Axes, optional
        Drawn into; default a new figure from ``matplotlib.pyplot``.
    title : str, optional

    Returns
    -------
    matplotlib.axes.Axes
    """
    groups = list(frame.groupby(by, sort=False)) if by in frame.columns else [("index", frame)]
    outside = len(groups) > _LEGEND_INSIDE_MAX
    if ax is None:
        import matplotlib.pyplot as plt

        size = (9.5, 5.2) if outside else (7.5, 4.8)
        _, ax = plt.subplots(figsize=size, layout="constrained")
    params = _param_columns(frame, by)
    fronts = []
    for i, (name, group) in enumerate(groups):
        front = pareto_frontier(group, x, y, by)
        marker = _MARKERS[i % len(_MARKERS)]
        line = ax.plot(front[x], front[y], f"{marker}-", label=str(name), markersize=5)[0]
        ax.scatter(group[x], group[y], s=14, color=line.get_color(), alpha=0.3, marker=marker)
        fronts.append((front, line.get_color()))
    ax.set_yscale("log")
    if annotate:
        _annotate(ax, fronts, params, x, y)
    ks = frame["k"].unique() if "k" in frame.columns else []
    ax.set_xlabel(f"recall@{ks[0]}" if x == "recall" and len(ks) == 1 else x)
    ax.set_ylabel("queries per second (log scale)" if y == "qps" else y)
    device = getattr(frame, "attrs", {}).get("device")
    where = f" on {device}" if device else ""
    ax.set_title(title or f"recall vs speed{where} (up and right is better)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    title_ = by if by in frame.columns else None
    if outside:  # many indexes: beside the axes, where it hides no point
        ax.legend(title=title_, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(title=title_, fontsize=8)
    return ax
