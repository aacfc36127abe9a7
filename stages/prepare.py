"""DVC stage `prepare@<task>`: write the task's train/validation/test splits, provenance, statistics.

    python stages/prepare.py <task>

Reads `profile` (offline: the stand-ins from assets/; real: the paper's datasets by Hub name) and
`data.<task>` from params.yaml. Writes data/<task>/ (JSON lines per split and provenance.json),
metrics/data/<task>.json and metrics/data/<task>_lengths.csv, or nothing at all on an error.
"""

from __future__ import annotations

import csv
import io as text_io
import sys
from pathlib import Path

from unipeft_bench import io, schema, stats
from unipeft_bench.errors import DataError
from unipeft_bench.tasks import check_schema, load_offline, load_real, task as get_task


def prepare(task_name: str, params: dict, root: Path = Path(".")) -> dict:
    task = get_task(task_name)
    profile = io.need(params, "profile")
    if profile == "offline":
        options = schema.check_data(io.need(params, f"data.{task_name}"), task_name)  # as the validate stage
        assets = root / io.need(params, "data.assets")
        splits, origin = load_offline(task, assets, options), f"{assets} ({task.stand_in})"
    elif profile == "real":
        local = params.get("data", {}).get("real_path", {}).get(task_name)
        splits, origin = load_real(task, local), local or f"{task.real.path} ({task.real.name or 'default'})"
    else:
        raise DataError(f"params.yaml: profile must be 'offline' or 'real', got {profile!r}")
    check_schema(task, splits, origin)

    summary = {split: stats.split_stats(records) for split, records in splits.items()}
    histogram = [row for split, records in splits.items() for row in stats.histogram_rows(split, records)]
    provenance = {"task": task_name, "profile": profile, "source": origin,
                  "stand_in_for": f"{task.real.path} ({task.real.name or 'default'})" if profile == "offline" else None,
                  "splits": {split: len(records) for split, records in splits.items()},
                  "split_rule": "offline: by group (source package, Bible book, SNLI premise, sentence), never "
                                "across a group; real: the dataset's own splits"}
    with io.atomic_directory(root / "data" / task_name) as staging:
        for split, records in splits.items():
            io.write_jsonl(staging / f"{split}.jsonl", records)
        io.write_json_atomic(staging / "provenance.json", provenance)
    io.write_json_atomic(root / "metrics" / "data" / f"{task_name}.json", summary)
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["split", "field", "words", "count"])
    writer.writeheader()
    writer.writerows(histogram)
    io.write_text_atomic(root / "metrics" / "data" / f"{task_name}_lengths.csv", buffer.getvalue())
    return summary


if __name__ == "__main__":
    sys.exit(io.run_task_stage("stages/prepare.py", prepare, sys.argv[1:]))
