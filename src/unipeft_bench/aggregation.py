"""The paper's tables and figures from the per-run metrics files: what stages/aggregate.py computes. Everything is
computed in memory; `build` returns the files to write, so a bad input writes nothing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .figures import curves_png, plot_data, plot_png
from .grid_results import BASELINE, TASK_VIEWS, read_all, read_baselines, read_grid, validation_curves
from .tables import has_baselines, percent, results_table, table_markdown


def report_line(task: str, data: pd.DataFrame, numeric: pd.DataFrame) -> str:
    labels = dict(zip(numeric["run"], numeric["label"]))
    full, peft = data[data["method"] == "full"], data[~data["method"].isin(("full", BASELINE))]
    parts = []
    if not peft.empty:
        best = peft.loc[peft["score"].idxmax()]
        parts.append(f"best {best['score']:.2f} by {labels[best['run']]} at {percent(best['params_percent'])}")
    if not full.empty:
        parts.append(f"full fine-tuning {full['score'].iloc[0]:.2f}")
    baseline = data[data["method"] == BASELINE]
    if not baseline.empty:
        parts.append(f"trivial baseline {baseline['score'].iloc[0]:.2f}")
    return f"{task} {TASK_VIEWS[task].primary}: " + "; ".join(parts)


def build(params: dict, root: Path = Path(".")) -> tuple[dict[Path, str | bytes], list[str]]:
    """Every output file's content, keyed by path, and a short report; reads everything before returning."""
    grid = read_grid(params)
    records = read_all(grid, root) + read_baselines(grid, root)
    outputs, report = {}, []
    for kind in ("generation", "classification"):
        numeric, shown = results_table(grid, kind, records)
        outputs[root / grid.tables / f"{kind}.csv"] = numeric.to_csv(index=False)
        outputs[root / grid.tables / f"{kind}.md"] = table_markdown(grid, kind, shown,
                                                                    has_baselines(getattr(grid, kind), records))
        report.append(f"{kind}: {len(numeric)} runs x {len(getattr(grid, kind))} tasks x {len(grid.seeds)} seeds "
                      f"-> {grid.tables / kind}.md, .csv")
        for task in getattr(grid, kind):
            data = plot_data(grid, task, numeric)
            outputs[root / grid.plots / f"{task}.csv"] = data.to_csv(index=False)
            outputs[root / grid.plots / f"{task}.png"] = plot_png(data, task, grid.profile)
            curves = validation_curves(grid, task, root)
            if not curves.empty:
                outputs[root / grid.plots / f"{task}_validation.csv"] = curves.to_csv(index=False)
                outputs[root / grid.plots / f"{task}_validation.png"] = curves_png(curves, task, grid.profile)
            report.append(report_line(task, data, numeric))
    return outputs, report
