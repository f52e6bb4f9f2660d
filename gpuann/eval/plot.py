"""The recall-vs-QPS Pareto plot (matplotlib is imported when a plot is drawn)."""

from __future__ import annotations

from typing import Any

from gpuann.eval.sweep import METRIC_COLUMNS

__all__ = ["pareto_frontier", "plot_pareto"]


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

    Every measured point is drawn faintly; each index's frontier is a line with markers,
    labelled with its swept parameters when ``annotate``. Up and to the right is better.

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
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    params = _param_columns(frame, by)
    groups = frame.groupby(by, sort=False) if by in frame.columns else [("index", frame)]
    for name, group in groups:
        front = pareto_frontier(group, x, y, by)
        line = ax.plot(front[x], front[y], "o-", label=str(name), markersize=5)[0]
        ax.scatter(group[x], group[y], s=14, color=line.get_color(), alpha=0.3)
        if annotate:
            for _, row in front.iterrows():
                text = _label(row, params)
                if text:
                    ax.annotate(
                        text,
                        (row[x], row[y]),
                        xytext=(4, 4),
                        textcoords="offset points",
                        fontsize=7,
                        color=line.get_color(),
                    )
    ax.set_yscale("log")
    ks = frame["k"].unique() if "k" in frame.columns else []
    ax.set_xlabel(f"recall@{ks[0]}" if x == "recall" and len(ks) == 1 else x)
    ax.set_ylabel("queries per second (log scale)" if y == "qps" else y)
    device = getattr(frame, "attrs", {}).get("device")
    where = f" on {device}" if device else ""
    ax.set_title(title or f"recall vs speed{where} (up and right is better)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title=by if by in frame.columns else None, fontsize=8)
    return ax
