"""DVC stage `report`: the grid's report page, results/<grid>/report.html (results/report.html for the default grid).

    python stages/report.py

One self-contained HTML file (src/unipeft_bench/report.py): the findings with verdicts coloured and a forest plot
of their intervals, the tables, the score-against-budget plots and validation curves the aggregate stage drew,
the runs' settings and the package versions. Read in full before it is written (through a temporary file and a
rename); a missing input is one line naming it.
"""

from __future__ import annotations

import sys

from unipeft_bench import io, report
from unipeft_bench.grid_results import read_grid
from unipeft_bench.last_outputs import stage_failed


def main() -> int:
    try:
        params = io.params()
        page = report.build(params)
        path = read_grid(params).results / "report.html"
        io.write_text_atomic(path, page)
    except (Exception, KeyboardInterrupt) as err:
        return stage_failed(err)
    print(f"{path}: {len(page) // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
