"""Every params.yaml key the pipeline reads, checked up front (the validate stage, before any other stage runs).

DVC removes a stage's outputs before running its command, so a bad value found by a later stage costs the
workspace its previous result; checked here, a bad value stops `dvc repro` before any output is touched. Each
refusal is one line naming the key. Fast: the library's presets import no torch.
"""

from __future__ import annotations

from . import io, runs
from .errors import DataError
from .models import PACKAGED
from .tasks import TASKS, task as get_task
from .training import check_settings, resolved_settings

PROFILES = ("offline", "real")
KINDS = {"generation": "seq2seq", "classification": "classification"}
# data.<task> keys that the prepare stage reads in the offline profile
DATA_KEYS = {"summarization": ("validation_fraction", "test_fraction"),
             "translation": ("validation_books", "test_books"),
             "nli": ("validation_fraction",),
             "sentiment": ("validation_fraction", "test_fraction")}


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_model(name, key: str, profile: str) -> None:
    if not isinstance(name, str) or not name:
        raise DataError(f"params.yaml {key}: expected a model name, got {name!r}")
    local = name.startswith(("models/", "./", "../", "/"))
    if profile == "offline" and not local and name not in PACKAGED:
        raise DataError(f"params.yaml {key}: {name!r} is a Hub name, which the offline profile cannot reach; "
                        f"expected a local directory or one of {', '.join(PACKAGED)}")


def _check_task(params: dict, profile: str, name: str) -> None:
    if profile == "offline":
        for key in DATA_KEYS[name]:
            io.need(params, f"data.{name}.{key}")
    _check_model(io.need(params, f"models.{profile}.{name}"), f"models.{profile}.{name}", profile)
    settings = io.need(params, f"evaluate.{profile}.{name}")
    if not isinstance(settings, dict):
        raise DataError(f"params.yaml evaluate.{profile}.{name}: expected a mapping")
    io.need(params, f"evaluate.{profile}.{name}.batch_size")
    if get_task(name).kind == "seq2seq":
        io.need(params, f"evaluate.{profile}.{name}.generation")
    if not isinstance(io.need(params, f"train.{profile}.{name}"), dict):
        raise DataError(f"params.yaml train.{profile}.{name}: expected a mapping")


def _check_run(params: dict, run: runs.Run) -> None:
    settings = dict(io.need(params, f"train.{run.profile}.{run.task}"))
    check_settings(resolved_settings(settings, run), run)


def validate(params: dict) -> dict:
    """A summary of what was checked; a DataError (one line, naming the key) at the first bad value."""
    profile = io.need(params, "profile")
    if profile not in PROFILES:
        raise DataError(f"params.yaml profile: expected one of {', '.join(PROFILES)}, got {profile!r}")
    name = io.need(params, "task")
    if name not in TASKS:
        raise DataError(f"params.yaml task: unknown task {name!r}; known: {', '.join(TASKS)}")
    if not _integer(io.need(params, "seed")):
        raise DataError(f"params.yaml seed: expected an integer, got {params['seed']!r}")
    seeds = io.need(params, "grid.seeds")
    if not isinstance(seeds, list) or not all(_integer(s) for s in seeds):
        raise DataError(f"params.yaml grid.seeds: expected a list of integers, got {seeds!r}")
    grid_runs = io.need(params, "grid.runs")
    if not isinstance(grid_runs, dict):
        raise DataError("params.yaml grid.runs: expected a mapping of run names")
    grid_tasks = []
    for group, kind in KINDS.items():
        tasks = io.need(params, f"grid.{group}")
        if not isinstance(tasks, list):
            raise DataError(f"params.yaml grid.{group}: expected a list of tasks, got {tasks!r}")
        for task in tasks:
            if task not in TASKS:
                raise DataError(f"params.yaml grid.{group}: unknown task {task!r}; known: {', '.join(TASKS)}")
            if TASKS[task].kind != kind:
                raise DataError(f"params.yaml grid.{group}: {task!r} is a {TASKS[task].kind} task, "
                                f"not a {group} one")
            grid_tasks.append(task)
    model = io.need(params, "model")
    if model != "auto":
        _check_model(model, "model", profile)
    for task in dict.fromkeys([name, *grid_tasks]):
        _check_task(params, profile, task)
    _check_run(params, *runs.resolve(params, [runs.EXPERIMENT]))
    for task in grid_tasks:
        for run in grid_runs:
            for each_seed in runs.resolve(params, [task, str(run)]):
                _check_run(params, each_seed)
    return {"profile": profile, "task": name, "grid_tasks": grid_tasks, "grid_runs": len(grid_runs),
            "seeds": seeds}
