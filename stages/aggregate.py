"""DVC stage `aggregate`: the paper's tables and figures from every run of the grid.

    python stages/aggregate.py

Reads `profile` and `grid` (`seeds`, `runs` in the order to show, the task lists `generation` and
`classification`; `name`, `results`, and for the paper's grids `title` and `paper`, the table whose numbers
come first) from params.yaml, and for every task x run x seed the evaluate stage's
metrics/<task>/<run>-seed<seed>.json. Writes, under the grid's `results` directory (`results` for the default
grid, `results/<name>` for the paper's tables and figures, conf/grid/<name>.yaml):

- tables/generation.md, .csv: the shape of Tables 3-6 and 12, one row per run in the grid's order: method,
  #params, per task its scores as mean ± std over seeds (XSum R-1/R-2/R-L, en-ro BLEU);
- tables/classification.md, .csv: the shape of Table 2: accuracies as the median over seeds;
  both tables get the paper's numbers alongside (src/unipeft_bench/paper_results.yaml) in the real profile
  only, and always exist (a kind without tasks says so);
- plots/<task>.png, .csv: Figures 4-5, the task's primary score (R-2, BLEU, accuracy) against the
  % of parameters, one line per method, full fine-tuning dashed; the CSV (method,run,params_percent,score,
  and in the real profile paper_params_percent,paper_score) is DVC plot data; error bars: the 95% t-interval
  of the mean over seeds;
- plots/<task>_validation.png, .csv: each run's validation score (the train stage's `select`) against the
  epoch, mean over seeds, from the train stage's DVCLive logs: whether runs had reached their plateau.

Everything is read and computed before anything is written, and each output directory is swapped in whole
(a kill leaves it as it was or as new); a missing or stale metrics file gives one
line, `error: <file>: ...`, exit status 1, and no output.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from unipeft_bench import aggregation, grid_results, io
from unipeft_bench.last_outputs import stage_failed


def aggregate(params: dict, root: Path = Path(".")) -> list[str]:
    outputs, report = aggregation.build(params, root)
    write_directories(outputs)
    return report


def write_directories(outputs: dict[Path, str | bytes]) -> None:
    """Each output directory (tables/, plots/) staged whole and swapped in at the end, so that a process killed
    at any point leaves each as the previous run wrote it or as this one does: never half a file, never new tables
    beside old ones, never the files of a run or task that left the grid."""
    by_directory: dict[Path, dict[str, str | bytes]] = {}
    for path, content in outputs.items():
        by_directory.setdefault(path.parent, {})[path.name] = content
    with contextlib.ExitStack() as swaps:  # every directory written before the first swap
        for directory, files in by_directory.items():
            staging = swaps.enter_context(io.atomic_directory(directory))
            grid_results.write_outputs({staging / name: content for name, content in files.items()})


def main() -> int:
    try:
        report = aggregate(io.params())
    except (Exception, KeyboardInterrupt) as err:
        return stage_failed(err)
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
