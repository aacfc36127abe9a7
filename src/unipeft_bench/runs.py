"""What one training run is: a task, a method at a budget, a seed, a base model, and where its outputs go.

A run is either a point of params.yaml's `grid` (`python stages/train.py <task> <run> [<seed>]`: without a seed,
every seed of `grid.seeds` in turn, in one process, as the grid's stages do) or the single experiment described
by the top-level keys task/model/method/budget/seed (`python stages/train.py experiment`), which
`dvc exp run -S method=...` changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NoReturn

from . import io, schema
from .errors import DataError
from .last_outputs import stage_failed
from .models import offline_environment
from .tasks import task as get_task

BUDGET_KEYS = ("attn_bn", "ffn_bn", "scale")
EXPERIMENT = "experiment"


@dataclass(frozen=True)
class Run:
    task: str
    name: str  # the grid's run name (method-budget), or "experiment"
    method: str
    budget: dict = field(default_factory=dict)  # attn_bn / ffn_bn / scale; None keeps the preset's own size
    seed: int = 42
    model: str = ""
    profile: str = "offline"

    @property
    def slug(self) -> str:  # the seeds of a grid run sit in one folder: one DVC stage trains them all
        return f"{self.task}/{self.name}/seed{self.seed}"

    @property
    def root(self) -> Path | None:  # the single experiment keeps everything under experiment/
        return Path(EXPERIMENT) if self.name == EXPERIMENT else None

    @property
    def adapter_dir(self) -> Path:
        return self.root / "adapter" if self.root else Path("runs") / self.slug

    @property
    def checkpoint_dir(self) -> Path:  # outside DVC's outputs, so that an interrupted run can resume from it
        return Path("checkpoints") / (EXPERIMENT if self.root else self.slug)

    @property
    def live_dir(self) -> Path:
        return self.root / "train" if self.root else Path("metrics") / "train" / self.slug

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.json" if self.root else Path("metrics") / f"{self.slug}.json"

    @property
    def predictions_path(self) -> Path:
        return self.root / "predictions.jsonl" if self.root else Path("predictions") / f"{self.slug}.jsonl"

    def fingerprint(self, settings: dict) -> str:
        """Equal only for the same run and training settings: a checkpoint of another configuration is not resumed."""
        text = json.dumps({"run": asdict(self), "settings": settings}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _budget(spec: dict, where: str) -> dict:
    if not isinstance(spec, dict):
        raise DataError(f"params.yaml {where}: expected a mapping of {', '.join(BUDGET_KEYS)}")
    unknown = sorted(set(spec) - set(BUDGET_KEYS))
    if unknown:
        raise DataError(f"params.yaml {where}: unknown key {unknown[0]!r}; expected some of {', '.join(BUDGET_KEYS)}")
    return {k: spec[k] for k in BUDGET_KEYS if spec.get(k) is not None}


def model_name(params: dict, profile: str, task: str, requested: str = "auto") -> str:
    return io.need(params, f"models.{profile}.{task}") if requested == "auto" else requested


def grid_budget(spec: dict, profile: str, task_kind: str, where: str) -> dict:
    """A grid run's budget for the profile; `<profile>.classification` overrides it for classification tasks
    (the paper uses far smaller budgets on GLUE than on XSum and en-ro)."""
    per_profile = {k: v for k, v in (spec.get(profile) or {}).items() if k != "method"}
    override = per_profile.pop("classification", None)
    if task_kind == "classification" and override is not None:
        return _budget(override, f"{where}.{profile}.classification")
    return _budget(per_profile, f"{where}.{profile}")


def grid_method(spec: dict, profile: str) -> str:
    """A grid run's preset; `<profile>.method` replaces it in one profile (the offline MH PA's initialisation)."""
    return (spec.get(profile) or {}).get("method", spec["method"])


def _preset(name, key: str):
    import unipeft

    try:
        return unipeft.preset(name)
    except unipeft.ConfigError as err:  # caught here, before any output or model is touched
        raise DataError(f"params.yaml {key}: {str(err).removeprefix('method: ')}") from None


def _checked(method, budget: dict, key: str) -> dict:
    """The budget, refused here in one line if the method has no use for one of its keys."""
    import unipeft

    try:
        method.with_budget(**budget)
    except unipeft.ConfigError as err:
        raise DataError(f"params.yaml {key}: {err}") from None
    return budget


def resolve(params: dict, argv: list[str]) -> list[Run]:
    """The runs named on a stage's command line: `experiment`, `<task> <run> <seed>` of the grid, or
    `<task> <run>`, the grid run at each of `grid.seeds`."""
    profile = io.need(params, "profile")
    if argv == [EXPERIMENT]:
        task = get_task(io.need(params, "task"))
        method = _preset(io.need(params, "method"), "method")
        # One budget for whichever method is chosen: each key applies where the method has that side.
        budget = method.applicable_budget(_budget(io.need(params, "budget"), "budget"))
        return [Run(task.name, EXPERIMENT, method.name, budget, int(io.need(params, "seed")),
                    model_name(params, profile, task.name, io.need(params, "model")), profile)]
    if len(argv) not in (2, 3):
        raise DataError("usage: <stage>.py experiment | <stage>.py <task> <run> [<seed>]")
    task, name = get_task(argv[0]), argv[1]
    seeds = argv[2:] or io.need(params, "grid.seeds")
    spec = io.need(params, f"grid.runs.{name}")
    if not isinstance(spec, dict) or "method" not in spec:
        raise DataError(f"params.yaml grid.runs.{name}: expected a mapping with a 'method'")
    method = _preset(grid_method(spec, profile), f"grid.runs.{name}.method")
    budget = _checked(method, grid_budget(spec, profile, task.kind, f"grid.runs.{name}"), f"grid.runs.{name}")
    return [Run(task.name, name, method.name, budget, int(seed), model_name(params, profile, task.name), profile)
            for seed in seeds]


def stage_main(argv: list[str], section: str, work, check=None) -> int:
    """The command line of the train and evaluate stages: the runs `argv` names, their settings from params.yaml
    <section>.<profile>.<task>, `check(params, argv)` if given, then `work(run, settings)` for each (each_run); a
    DataError is one line on stderr and exit status 1, and the runs after it are not started. Several seeds share
    one stage and one import: importing torch and transformers costs ~4.5 s a process, which over the evidence
    grid's 132 train and evaluate stages was ~17 minutes (docs/evidence.md)."""
    try:
        params = io.params()
        runs = resolve(params, argv)
        if runs[0].profile == "offline":
            offline_environment()
        where = f"{section}.{runs[0].profile}.{runs[0].task}"
        settings = io.need(params, where)
        if check:
            check(params, argv)
        if section == "evaluate":  # as the validate stage checks it, for a stage run by hand
            schema.check_evaluate(settings, where, get_task(runs[0].task).kind == "seq2seq")
        for run, result in each_run(work, runs, settings, where):
            print(f"{run.slug}: {result}", flush=True)
    except (Exception, KeyboardInterrupt) as err:
        return stage_failed(err)
    return 0


def each_run(work, runs: list[Run], settings: dict, where: str):
    """(run, work(run, settings)) for each run: in turn, or all at once with `seeds_in_parallel: true` on a CPU."""
    together = settings.get("seeds_in_parallel", False)
    if not isinstance(together, bool):
        raise DataError(f"params.yaml {where}.seeds_in_parallel: expected true or false, got {together!r}")
    return (_in_parallel if together and len(runs) > 1 and _one_cpu_process() else _in_turn)(work, runs, settings)


def _in_turn(work, runs: list[Run], settings: dict):
    for run in runs:
        yield run, work(run, dict(settings))


def _in_parallel(work, runs: list[Run], settings: dict):
    """Each run in its own process, forked once torch and transformers are imported, the cores shared out as
    threads (at least one each): what one seed does not keep busy (loading, saving, evaluation) another fills.
    On two cores a stage of three seeds took 0.91x as long as in turn (docs/pipeline.md, "The pipeline stages").
    Every run starts; the first error in the runs' order is the one raised, once all have ended."""
    import multiprocessing

    import torch
    import transformers.trainer  # noqa: F401  imported here, once, rather than in each process

    threads = max(1, len(os.sched_getaffinity(0)) // len(runs))

    def child(run: Run, results) -> None:
        torch.set_num_threads(threads)
        try:
            results.send((True, work(run, dict(settings))))
        except BaseException as error:  # to the parent, which raises it
            results.send((False, error))

    context = multiprocessing.get_context("fork")
    pipes = [context.Pipe(duplex=False) for _ in runs]
    processes = [context.Process(target=child, args=(run, sender)) for run, (_, sender) in zip(runs, pipes)]
    for process, (_, sender) in zip(processes, pipes):
        process.start()
        sender.close()  # the child's end: a child that dies then reads as EOFError here, not as a wait forever
    outcomes = []
    for run, (receiver, _), process in zip(runs, pipes, processes):
        try:
            outcomes.append(receiver.recv())
        except EOFError:  # killed before it could answer
            outcomes.append((False, RuntimeError(f"{run.slug}: its process ended without a result")))
        process.join()
    for run, (finished, outcome) in zip(runs, outcomes):
        if not finished:
            raise outcome
        yield run, outcome


def _one_cpu_process() -> bool:
    """Seeds share the machine's cores only on CPU and without a launcher: on a GPU, or as one of several
    processes that share the batches of one run, the seeds train one after another."""
    import torch

    # WORLD_SIZE read here rather than through training.processes(): the evaluate stages import this module, and
    # training.py is not among their dependencies.
    return int(os.environ.get("WORLD_SIZE", "1")) == 1 and not torch.cuda.is_available()


def configured(config, overrides: dict, where: str):
    """`config` with `overrides` set wherever the key exists: on the model's config and on the encoder's and
    decoder's of an EncoderDecoderModel, whose own top-level config has no dropout to set."""
    configs = [c for c in (config, getattr(config, "encoder", None), getattr(config, "decoder", None)) if c is not None]
    for key, value in overrides.items():
        owners = [c for c in configs if hasattr(c, key)]
        if not owners:  # e.g. BERT's dropout keys on a Llama, whose dropout is attention_dropout only
            dropouts = sorted({k for c in configs for k in vars(c) if "dropout" in k or k.endswith("pdrop")})
            raise DataError(f"params.yaml {where}.{key}: not a setting of {type(config).__name__}"
                            + (f" (its dropout settings: {', '.join(dropouts)})" if dropouts else ""))
        for owner in owners:
            setattr(owner, key, value)
    return config


def exit_now(code: int) -> NoReturn:
    """End a train or evaluate process, its outputs written, without the interpreter's teardown: unloading
    torch and transformers takes 1.5 s (measured), which each of the grid's 74 such stages would pay."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def load_tokenized(task: str):
    """(folder, dataset, tokenizer) of the task's tokenized data; missing or damaged, one line naming the folder."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    data_dir = Path("data/tokenized") / task
    if not (data_dir / "dataset_dict.json").is_file():
        raise DataError(f"{data_dir}: not found; run the tokenize stage")
    with io.reading(data_dir, f"`dvc repro tokenize@{task}`"):
        return data_dir, load_from_disk(str(data_dir)), AutoTokenizer.from_pretrained(str(data_dir / "tokenizer"))


def load_base_model(run: Run, tokenizer, settings: dict, data_dir: Path):
    """The pretrained model for the run's task, with a fresh classification head where the task needs one: an
    encoder-decoder, or a decoder-only causal LM (generation tasks on prompt → completion data from `data_dir`;
    classifiers reading the last real token)."""
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                              AutoModelForSequenceClassification)

    from .causal_lm import check_data_for_model, is_decoder_only, prepare_model
    from .models import resolve as resolve_model

    task = get_task(run.task)
    name = resolve_model(run.model)

    def read(loader, **kwargs):  # a damaged local model directory is one line naming it; the Hub keeps its errors
        if not Path(name).is_dir():
            return loader.from_pretrained(name, **kwargs)
        with io.reading(name, "`dvc repro` (setup.sh, for a packaged model)"):
            return loader.from_pretrained(name, **kwargs)

    config = configured(read(AutoConfig), settings.get("model_config") or {},
                        f"train.{run.profile}.{run.task}.model_config")
    if task.kind == "classification":
        config.num_labels = task.num_labels
        model = read(AutoModelForSequenceClassification, config=config)
        if is_decoder_only(config):
            prepare_model(model, tokenizer, name, data_dir)
        return model
    if check_data_for_model(data_dir, run.model, config, task.kind, f"tokenize.{run.profile}.{run.task}"):
        model = read(AutoModelForCausalLM, config=config)
        prepare_model(model, tokenizer, name, data_dir)
        return model
    model = read(AutoModelForSeq2SeqLM, config=config)
    target_language = getattr(tokenizer, "tgt_lang", None)
    if target_language and model.config.model_type == "mbart":
        # mBART-cc25 starts decoding with the target language code (as the paper's and HF's translation scripts).
        language_id = tokenizer.convert_tokens_to_ids(target_language)
        model.config.decoder_start_token_id = model.generation_config.decoder_start_token_id = language_id
    return model
