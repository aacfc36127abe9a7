"""The pipeline's first stage: every params.yaml key the other stages read, checked before any of them runs.

DVC removes a stage's outputs before it runs the stage's command, so a value refused by a later stage would
already have cost the workspace that stage's previous result. Every other stage depends on this stage's output,
validated/params.json, so a bad value stops `dvc repro` / `dvc exp run` here, in one line naming the key, with
every output still in place. It also writes validated/runs/<task>/<run>.json, what reaches each grid run's
training (runs.run_settings), and experiment.json, which the train stages depend on instead of params.yaml's sections. Takes about a
second: no torch, no transformers.

    python stages/validate.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from unipeft_bench import io
from unipeft_bench.errors import DataError
from unipeft_bench.run_settings import run_settings, settings_file
from unipeft_bench.runs import EXPERIMENT
from unipeft_bench.validation import validate

OUTPUT = Path("validated") / "params.json"
RUN_SETTINGS = Path("validated") / "runs"
RESTORE = ("; nothing was run. Fix params.yaml (or the -S option); if an earlier failed run removed outputs, "
           "`dvc checkout` restores them from the cache")


def main(argv: list[str]) -> int:
    if argv:
        print("usage: python stages/validate.py", file=sys.stderr)
        return 2
    try:
        params = io.params()
        summary = validate(params)
        names = [[EXPERIMENT], *([task, run] for task in summary["grid_tasks"] for run in params["grid"]["runs"])]
        records = {settings_file(name): run_settings(params, name) for name in names}
    except DataError as err:
        print(f"error: {err}{RESTORE}", file=sys.stderr)
        return 1
    # the same content whatever the params: a change of params reruns this stage, but on its own none of the
    # stages that depend on this file (they list the params they read)
    io.write_json_atomic(OUTPUT, {"params.yaml": "valid"})
    # each grid run's own settings, its train stage's dependency: one changed run reruns alone
    with io.atomic_directory(RUN_SETTINGS) as staging:
        for path, record in records.items():
            io.write_json_atomic(staging / path.relative_to(RUN_SETTINGS), record)
    print(f"params.yaml: valid ({summary['grid_runs']} runs × {len(summary['seeds'])} seeds of "
          f"{', '.join(summary['grid_tasks'])}; experiment on {summary['task']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
