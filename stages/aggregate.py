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
  and in the real profile paper_params_percent,paper_score) is DVC plot data.

Everything is read and computed before anything is written: a missing or stale metrics file gives one
line, `error: <file>: ...`, exit status 1, and no output.
"""

from __future__ import annotations

import sys
from pathlib import Path

from unipeft_bench import aggregation, io
from unipeft_bench.errors import DataError


def aggregate(params: dict, root: Path = Path(".")) -> list[str]:
    outputs, report = aggregation.build(params, root)
    aggregation.write_outputs(outputs)
    return report


def main() -> int:
    try:
        report = aggregate(io.params())
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
