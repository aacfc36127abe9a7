"""Every params.yaml key the pipeline reads, checked up front (the validate stage, before any other stage runs).

DVC removes a stage's outputs before running its command, so a bad value found by a later stage costs the
workspace its previous result; checked here, a bad value stops `dvc repro` before any output is touched. Each
refusal is one line naming the key. Fast: the library's presets import no torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import io, prompts, runs, schema
from .errors import DataError
from .gguf_backbone import GGUF_MODELS
from .parts import check_parts
from .models import PACKAGED
from .tasks import TASKS, task as get_task
from .training import OVERRIDES, SELECTIONS, SETTING_RULES, TRAIN_KEYS, check_settings, resolved_settings

PROFILES = ("offline", "real")
KINDS = {"generation": "seq2seq", "classification": "classification"}


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_model(name, key: str, profile: str, built: str) -> None:
    """A model name: packaged, a Hub name (real profile), or a local directory that exists or that the
    llm_backbone stage builds (`built`)."""
    if not isinstance(name, str) or not name:
        raise DataError(f"params.yaml {key}: expected a model name, got {name!r}")
    local = name.startswith(("models/", "./", "../", "/"))
    if profile == "offline" and not local and name not in PACKAGED:
        raise DataError(f"params.yaml {key}: {name!r} is a Hub name, which the offline profile cannot reach; "
                        f"expected a local directory or one of {', '.join(PACKAGED)}")
    if local and Path(name) != Path(built) and not Path(name).is_dir():
        raise DataError(f"params.yaml {key}: no model directory {name!r} (the llm_backbone stage builds {built})")


def _encoder_decoder(name: str) -> bool | None:
    """Whether a local model directory holds an encoder-decoder, read from its config.json without transformers (a
    generation model that is not one is decoder-only); None where that cannot be told yet (a Hub name, a model
    that a stage has still to build)."""
    config = Path(name) / "config.json"
    if not name.startswith(("models/", "./", "../", "/")) or not config.is_file():
        return None
    try:
        return bool(json.loads(config.read_text()).get("is_encoder_decoder", False))
    except (OSError, ValueError):
        raise DataError(f"{config}: not a readable JSON model configuration") from None


def _check_prompt(params: dict, profile: str, name: str, model_keys: list[str]) -> None:
    """tokenize.<profile>.<task>.prompt / .chat_template, and, for the models that can be read here, that a
    decoder-only model's generation task has a prompt and an encoder-decoder's has none (both share the task's
    one tokenization)."""
    where = f"tokenize.{profile}.{name}"
    options = io.need(params, where)
    if not isinstance(options, dict):
        raise DataError(f"params.yaml {where}: expected a mapping")
    prompted = prompts.options(options, get_task(name).kind, where) is not None
    if get_task(name).kind != "seq2seq":
        return
    for key in model_keys:
        model = io.need(params, key)
        encoder_decoder = _encoder_decoder(model)
        if encoder_decoder is False and not prompted:
            raise DataError(f"params.yaml {where}.prompt: missing, but {key} ({model}) is a decoder-only model, "
                            "whose generation tasks are prompt → completion; add a template with {source}")
        if encoder_decoder and prompted:
            raise DataError(f"params.yaml {where}.prompt: set, but {key} ({model}) is an encoder-decoder, which "
                            "reads the source as it is; remove the prompt")


def _check_task(params: dict, profile: str, name: str, model_keys: list[str], built: str) -> None:
    _check_prompt(params, profile, name, model_keys)
    where = f"tokenize.{profile}.{name}"
    schema.check_tokenize(io.need(params, where), where)
    if profile == "offline":
        schema.check_data(io.need(params, f"data.{name}"), name)
    _check_model(io.need(params, f"models.{profile}.{name}"), f"models.{profile}.{name}", profile, built)
    where = f"evaluate.{profile}.{name}"
    schema.check_evaluate(io.need(params, where), where, get_task(name).kind == "seq2seq")
    where = f"train.{profile}.{name}"
    settings = schema.check(io.need(params, where), {}, where, closed=False)
    unknown = sorted(set(settings) - TRAIN_KEYS - set(SETTING_RULES) - set(OVERRIDES))
    if unknown:
        raise DataError(f"params.yaml {where}.{unknown[0]}: not a train setting; expected one of "
                        f"{', '.join(sorted(TRAIN_KEYS | set(SETTING_RULES)))}")


def _check_run(params: dict, run: runs.Run) -> None:
    where = f"train.{run.profile}.{run.task}"
    settings = check_settings(resolved_settings(dict(io.need(params, where)), run), run)
    schema.check(settings, schema.TRAIN, where, closed=False)
    if settings["select"] not in SELECTIONS:
        raise DataError(f"params.yaml {where}.select: unknown {settings['select']!r}; expected one of "
                        f"{', '.join(SELECTIONS)}")
    if "model_config" in settings:
        schema.check_model_config(settings["model_config"], f"{where}.model_config")
    if "validation_generation" in settings:
        schema.check(settings["validation_generation"], schema.GENERATION, f"{where}.validation_generation")


def _check_grid_budgets(grid_runs: dict) -> None:
    """Each grid run's sizes, per profile and for classification, named by their params.yaml key."""
    for name, spec in grid_runs.items():
        if not isinstance(spec, dict) or "method" not in spec:
            raise DataError(f"params.yaml grid.runs.{name}: expected a mapping with a 'method'")
        for profile in PROFILES:
            sizes = spec.get(profile) or {}
            where = f"grid.runs.{name}.{profile}"
            schema.check(sizes, schema.BUDGET, where, closed=False)
            schema.check(sizes.get("classification") or {}, schema.BUDGET, f"{where}.classification")


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
    if not isinstance(seeds, list) or not seeds or not all(_integer(s) for s in seeds):
        raise DataError(f"params.yaml grid.seeds: expected a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) < len(seeds):  # one seed twice would train twice under one name
        raise DataError(f"params.yaml grid.seeds: {seeds!r} repeats a seed")
    grid_runs = io.need(params, "grid.runs")
    if not isinstance(grid_runs, dict) or not grid_runs:
        raise DataError(f"params.yaml grid.runs: expected a non-empty mapping of run names, got {grid_runs!r}")
    _check_grid_budgets(grid_runs)
    schema.check(io.need(params, "budget"), schema.BUDGET, "budget")
    if "baseline" in grid_runs:  # the tables' name for each task's trivial baseline (src/unipeft_bench/baselines.py)
        raise DataError("params.yaml grid.runs.baseline: the name is reserved for the tables' trivial baseline row")
    check_parts(params["grid"])
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
    llm = io.need(params, "llm_backbone.model")
    if llm not in GGUF_MODELS:
        raise DataError(f"params.yaml llm_backbone.model: unknown packaged model {llm!r}; known: "
                        f"{', '.join(GGUF_MODELS)}")
    built = f"models/{llm}"
    model = io.need(params, "model")
    if model != "auto":
        _check_model(model, "model", profile, built)
    for task in dict.fromkeys([name, *grid_tasks]):
        experiment_model = ["model"] if task == name and model != "auto" else []
        grid_model = [f"models.{profile}.{task}"] if task in grid_tasks or not experiment_model else []
        _check_task(params, profile, task, grid_model + experiment_model, built)
    _check_run(params, *runs.resolve(params, [runs.EXPERIMENT]))
    for task in grid_tasks:
        for run in grid_runs:
            for each_seed in runs.resolve(params, [task, str(run)]):
                _check_run(params, each_seed)
    return {"profile": profile, "task": name, "grid_tasks": grid_tasks, "grid_runs": len(grid_runs),
            "seeds": seeds}
