"""Have the grid's runs converged? How each run's seeds ended, from the train stage's own records.

    python benchmarks/convergence.py sentiment            # in a workspace where the grid has run

For every run and seed of params.yaml's grid: whether training stopped early (its validation score had stopped
improving) or ran to the step cap, and for a capped run whether its best evaluation was the last one (still
improving) and by how much its best rose over its last two evaluations. Reads the metrics files' `training`
section and the DVCLive validation curves (metrics/train/<task>/<run>/seed<seed>/plots/metrics), as the
aggregate stage does; prints one line per run and a summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pandas as pd

from unipeft_bench import grid_results, io

LAST = 2  # evaluations: "the gain over the last two" is the best minus the best before them


def seed_record(root: Path, task: str, run: str, seed: int) -> dict:
    training = json.loads(grid_results.metrics_path(root, task, run, seed).read_text())["training"]
    metric = grid_results.VALIDATION_METRIC[task]
    curve = pd.read_csv(root / "metrics/train" / task / run / f"seed{seed}" / "plots/metrics/eval" / f"{metric}.tsv",
                        sep="\t")[metric].tolist()
    capped = not training["stopped_early"]
    best_is_last = curve[-1] > max(curve[:-1], default=float("-inf"))
    return {"capped": capped, "improving": capped and best_is_last, "best_step": training["best_step"],
            "gain": max(curve) - max(curve[:-LAST]) if capped and len(curve) > LAST else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task")
    args = parser.parse_args()
    grid = grid_results.read_grid(io.params())
    gains, totals = [], {"seeds": 0, "stopped early": 0, "capped": 0, "still improving": 0}
    for run in grid.runs:
        records = [seed_record(Path("."), args.task, run, seed) for seed in grid.seeds]
        improving = [r for r in records if r["improving"]]
        run_gains = [r["gain"] for r in improving if r["gain"] is not None]
        gains += run_gains
        totals["seeds"] += len(records)
        totals["stopped early"] += sum(not r["capped"] for r in records)
        totals["capped"] += sum(r["capped"] for r in records)
        totals["still improving"] += len(improving)
        print(f"{run}: best steps {', '.join(str(r['best_step']) for r in records)}; "
              f"{sum(not r['capped'] for r in records)} stopped early; still improving at the cap: {len(improving)}"
              + (f" (gains over the last {LAST} evaluations: {', '.join(f'{g:.1f}' for g in run_gains)})"
                 if run_gains else ""))
    print(", ".join(f"{key}: {value}" for key, value in totals.items()))
    if gains:
        print(f"gain of the still-improving over their last {LAST} evaluations: median {statistics.median(gains):.1f}, "
              f"range {min(gains):.1f}-{max(gains):.1f} points")


if __name__ == "__main__":
    main()
