"""The pipeline's first stage: every params.yaml key the other stages read, checked before any of them runs.

DVC removes a stage's outputs before it runs the stage's command, so a value refused by a later stage would
already have cost the workspace that stage's previous result. Every other stage depends on this stage's output,
validated/params.json, so a bad value stops `dvc repro` / `dvc exp run` here, in one line naming the key, with
every output still in place. Takes about a second: no torch, no transformers.

    python stages/validate.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from unipeft_bench import io
from unipeft_bench.errors import DataError
from unipeft_bench.validation import validate

OUTPUT = Path("validated") / "params.json"
RESTORE = ("; nothing was run. Fix params.yaml (or the -S option); if an earlier failed run removed outputs, "
           "`dvc checkout` restores them from the cache")


def main(argv: list[str]) -> int:
    if argv:
        print("usage: python stages/validate.py", file=sys.stderr)
        return 2
    try:
        summary = validate(io.params())
    except DataError as err:
        print(f"error: {err}{RESTORE}", file=sys.stderr)
        return 1
    # the same content whatever the params: a change of params reruns this stage, but on its own none of the
    # stages that depend on this file (they list the params they read)
    io.write_json_atomic(OUTPUT, {"params.yaml": "valid"})
    print(f"params.yaml: valid ({summary['grid_runs']} runs × {len(summary['seeds'])} seeds of "
          f"{', '.join(summary['grid_tasks'])}; experiment on {summary['task']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
