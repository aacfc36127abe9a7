"""What reaches one run's training, as one file per run: the train stages' params dependency.

The validate stage writes validated/runs/<task>/<run>.json for each grid run and validated/runs/experiment.json,
and each train stage depends on its run's file instead of whole params.yaml sections (train.<profile>.<task>,
grid.runs, grid.seeds), so that a change to one method's learning rate or one run's budget stales that run's
stages alone (docs/pipeline.md, "Several machines").
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from . import io
from .errors import DataError
from .runs import EXPERIMENT, resolve
from .training import resolved_settings


def settings_file(run: list[str]) -> Path:
    """[task, run] or [EXPERIMENT] → its file under validated/runs."""
    return Path("validated") / "runs" / (f"{EXPERIMENT}.json" if run == [EXPERIMENT] else f"{run[0]}/{run[1]}.json")


def run_settings(params: dict, run: list[str]) -> dict:
    """The run's seeds, method, budget and model ([EXPERIMENT] or [task, grid run], as resolve takes them), and its
    task's train settings after by_method and the rate tables are applied (training.resolved_settings), as JSON
    holds them."""
    runs = resolve(params, run)
    where = f"train.{runs[0].profile}.{runs[0].task}"
    record = {"runs": [asdict(each) for each in runs], "train": resolved_settings(io.need(params, where), runs[0])}
    return json.loads(json.dumps(record))


def check_settings_file(params: dict, run: list[str]) -> None:
    """A train stage started by hand after params.yaml changed, without the validate stage: refused, since DVC
    would record its outputs against the settings file of the old params."""
    run = run[:2]  # <task> <run> [<seed>]: the whole run's file
    path = settings_file(run)
    if path.is_file() and json.loads(path.read_text()) != run_settings(params, run):
        raise DataError(f"{path}: written for other params than params.yaml's; run `python stages/validate.py` "
                        "(or `dvc repro`) first")
