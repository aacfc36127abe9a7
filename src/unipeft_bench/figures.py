"""The figures of a grid's results: score against the parameter budget (the paper's Figures 4-5), validation
curves, and the findings' intervals as a forest plot. Matplotlib's Figure without pyplot (no global state); PNGs
without the library's version in their metadata, so the same input gives the same file."""

from __future__ import annotations

import io as bytes_io

import pandas as pd

from .grid_results import BASELINE, TASK_VIEWS, VALIDATION_METRIC, Grid, column_name
from .tables import CENTER, METHOD_NAMES, baseline_label


def plot_data(grid: Grid, task: str, numeric: pd.DataFrame) -> pd.DataFrame:
    """Figures 4-5's points: the primary score (the table's center over seeds) against the % of parameters; in
    the real profile the paper's point for the same run beside it (paper_params_percent, paper_score)."""
    kind = "generation" if task in grid.generation else "classification"
    primary = TASK_VIEWS[task].primary
    columns = {f"{task}_{primary}_{CENTER[kind]}": "score", f"{task}_{primary}_ci_low": "score_low",
               f"{task}_{primary}_ci_high": "score_high"}
    if grid.profile == "real":
        columns.update(paper_params_percent="paper_params_percent", **{f"{task}_{primary}_paper": "paper_score"})
    data = numeric[["method", "run", "label", "params_percent", *columns]].rename(columns=columns)
    return data.assign(label=data["label"].where(data["method"] != BASELINE, baseline_label((task,))))


def _draw_methods(axes, data: pd.DataFrame, x: str, y: str, paper: bool) -> None:
    """One line per method through its budgets; the paper's in the same colour, dashed with open markers."""
    trained = data[data["method"] != BASELINE]
    methods = trained.loc[trained["method"] != "full", "method"].drop_duplicates()
    colours = {method: f"C{index % 10}" for index, method in enumerate(methods)}
    peft = trained[(trained["method"] != "full") & (trained[x] > 0)].dropna(subset=[x, y])
    for method, points in peft.groupby("method", sort=False):
        points = points.sort_values(x)
        name = METHOD_NAMES.get(method, method)
        style = dict(linestyle="--", marker="o", markerfacecolor="none", label=f"{name} (paper)") if paper else \
            dict(marker="o", label=name)
        axes.plot(points[x], points[y], color=colours[method], **style)
        if not paper and points["score_low"].notna().any():  # the 95% interval over seeds, around the center
            below = (points[y] - points["score_low"]).clip(lower=0)
            above = (points["score_high"] - points[y]).clip(lower=0)
            axes.errorbar(points[x], points[y], yerr=[below, above], fmt="none", ecolor=colours[method], alpha=0.6,
                          capsize=3)
    if not paper:
        for _, baseline in data[data["method"] == BASELINE].dropna(subset=[y]).iterrows():
            axes.axhline(baseline[y], linestyle=":", color="black", label=baseline["label"])
    for _, full in data[data["method"] == "full"].dropna(subset=[y]).iterrows():
        axes.axhline(full[y], linestyle=":" if paper else "--", color="grey",
                     label="Full fine-tuning (paper)" if paper else "Full fine-tuning")
        if not paper and pd.notna(full["score_low"]):
            axes.axhspan(full["score_low"], full["score_high"], color="grey", alpha=0.12)


def plot_png(data: pd.DataFrame, task: str, profile: str) -> bytes:
    """One line per method through its budgets on a log x axis; full fine-tuning as a dashed horizontal line;
    the paper's points beside them where the data have them (real profile)."""
    from matplotlib import ticker
    from matplotlib.figure import Figure  # no pyplot: no global state, and saving a PNG uses the Agg canvas

    view = TASK_VIEWS[task]
    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    axes = figure.subplots()
    peft = data[~data["method"].isin(("full", BASELINE)) & (data["params_percent"] > 0)]
    _draw_methods(axes, data, "params_percent", "score", paper=False)
    if "paper_score" in data:
        _draw_methods(axes, data, "paper_params_percent", "paper_score", paper=True)
    if not peft.empty:
        axes.set_xscale("log")  # budgets span 0.01% to 10%, as the paper's Figures 4-5
        axes.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}%"))
        axes.xaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set(xlabel="parameters (the paper's count, log scale)", ylabel=view.axis_label,
             title=f"{column_name(task, profile)}: {view.axis_label} against the parameter budget")
    axes.grid(True, which="both", alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    buffer = bytes_io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, metadata={"Software": None})  # no version: same input, same file
    return buffer.getvalue()


def curves_png(curves: pd.DataFrame, task: str, profile: str) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.6), layout="constrained")
    axes = figure.subplots()
    for index, (run, points) in enumerate(curves.groupby("run", sort=False)):
        axes.plot(points["epoch"], points["score"], marker=".", linewidth=1, color=f"C{index % 10}",
                  linestyle=("-", "--", ":")[index // 10 % 3], label=run)
    metric = VALIDATION_METRIC[task]
    axes.set(xlabel="epoch", ylabel=f"validation {metric} (mean over seeds)",
             title=f"{column_name(task, profile)}: validation {metric} during training")
    axes.grid(True, alpha=0.3)
    if not curves.empty:
        axes.legend(fontsize="x-small", ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    buffer = bytes_io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return buffer.getvalue()


VERDICT_COLOURS = {"holds": "#2e7d32", "contradicted": "#c62828", "inconclusive": "#757575"}


def forest_png(found: dict) -> bytes | None:
    """Each comparison of findings.json as a row: its difference (favoured − other) and 95% interval, coloured by
    its verdict, with the claim's threshold (0 for "better", −margin for "close") as a tick; None without any."""
    from matplotlib.figure import Figure

    rows = [(f"{number}. {label}", c) for number, claim in enumerate(found["claims"].values(), 1)
            for label, c in claim["comparisons"].items()]
    if not rows:
        return None
    figure = Figure(figsize=(8.0, 0.9 + 0.28 * len(rows)), layout="constrained")
    axes = figure.subplots()
    for y, (_, c) in enumerate(reversed(rows)):
        colour = VERDICT_COLOURS.get(c["verdict"], "black")
        axes.plot([c["low"], c["high"]], [y, y], color=colour, linewidth=2)
        axes.plot([c["difference"]], [y], "o", color=colour, markersize=5)
        axes.plot([c["threshold"]], [y], "|", color="black", markersize=10)
    axes.axvline(0, color="black", linewidth=0.6, alpha=0.5)
    axes.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)], fontsize="x-small")
    axes.set(xlabel="difference, favoured − other (score points), with its 95% interval",
             title="The claims' comparisons: difference and 95% interval (| the claim's threshold)")
    axes.title.set_fontsize("small")
    axes.grid(True, axis="x", alpha=0.3)
    buffer = bytes_io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return buffer.getvalue()
