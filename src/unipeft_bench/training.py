"""The task's hyperparameters (params.yaml train.<profile>.<task>) as HF TrainingArguments, and what goes with them:
validation metrics for checkpoint selection, resuming an interrupted run, peak memory."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np

from .errors import DataError

# The paper's checkpoint selection: ROUGE-2 for XSum, loss for en-ro, accuracy for GLUE.
SELECTIONS = {"rouge2": True, "bleu": True, "accuracy": True, "loss": False}  # name → greater is better


# Every key of params.yaml train.<profile>.<task> that a run reads, so that by_method can override any of them.
TRAIN_KEYS = frozenset({
    "steps", "epochs", "batch_size", "gradient_accumulation", "eval_batch_size", "group_by_length",
    "max_tokens_per_batch", "batch_size_multiple", "learning_rate", "warmup", "label_smoothing", "max_grad_norm",
    "weight_decay", "adam_beta2", "adam_epsilon", "fp16", "bf16", "model_config", "train_head", "eval_every",
    "eval_examples", "select", "validation_generation", "log_every", "dataloader_workers", "early_stopping_patience"})
# Per-run overrides: by_method.<method>.<key> (any train key), and the older learning-rate shorthands
# learning_rate_by_method.<method> and learning_rate_by_run.<grid run name> (a run's own rate wins).
OVERRIDES = ("by_method", "learning_rate_by_method", "learning_rate_by_run")
MERGED = ("model_config", "validation_generation")  # mappings: an override sets some of their keys, not all


def resolved_settings(settings: dict, run) -> dict:
    """The task's train settings as this run uses them: its method's by_method entry over the task's settings,
    then the learning-rate shorthands; the override tables themselves are gone. Idempotent."""
    where = f"params.yaml train.{run.profile}.{run.task}"
    out = {key: value for key, value in settings.items() if key not in OVERRIDES}
    overrides = _method_overrides(settings.get("by_method") or {}, run.method, f"{where}.by_method")
    for key, value in overrides.items():
        out[key] = {**(out.get(key) or {}), **value} if key in MERGED and isinstance(value, dict) else value
    by_method_rate = (settings.get("learning_rate_by_method") or {}).get(run.method)
    if by_method_rate is not None and "learning_rate" in overrides:
        raise DataError(f"{where}: the learning rate of {run.method!r} is given twice, in by_method and in "
                        "learning_rate_by_method; keep one")
    rate = (settings.get("learning_rate_by_run") or {}).get(run.name, by_method_rate)
    if rate is not None:
        out["learning_rate"] = rate
    return out


def _method_overrides(by_method: dict, method: str, where: str) -> dict:
    from unipeft import preset_names

    if not isinstance(by_method, dict):
        raise DataError(f"{where}: expected a mapping of method → settings")
    unknown_methods = sorted(set(by_method) - set(preset_names()))
    if unknown_methods:
        raise DataError(f"{where}.{unknown_methods[0]}: not a method preset (python -m unipeft presets)")
    overrides = by_method.get(method) or {}
    if not isinstance(overrides, dict):
        raise DataError(f"{where}.{method}: expected a mapping of train settings")
    unknown = sorted(set(overrides) - TRAIN_KEYS)
    if unknown:
        raise DataError(f"{where}.{method}.{unknown[0]}: not a train setting; expected one of "
                        f"{', '.join(sorted(TRAIN_KEYS))}")
    return overrides


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number_at_least_0(value) -> bool:  # a YAML `1e-3` (no dot) is a string, refused here rather than in the Trainer
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


# key → (what the value must be, how the refusal says it); checked wherever the key is present.
SETTING_RULES = {
    "steps": (_positive_int, "a positive number of steps"),
    "epochs": (_positive_int, "a positive number of epochs"),
    "eval_every": (_positive_int, "a positive number of steps"),
    "batch_size": (_positive_int, "a positive number of examples"),
    "eval_batch_size": (_positive_int, "a positive number of examples"),
    "eval_examples": (_positive_int, "a positive number of examples"),
    "gradient_accumulation": (_positive_int, "a positive number of batches"),
    "log_every": (_positive_int, "a positive number of steps"),
    "early_stopping_min_steps": (_positive_int, "a positive number of steps"),
    "learning_rate": (_number_at_least_0, "a number ≥ 0 (YAML reads 1e-3 as text: write 1.0e-3)"),
    "warmup": (_number_at_least_0, "a number ≥ 0 (a fraction of the steps, or a number of steps)"),
    "weight_decay": (_number_at_least_0, "a number ≥ 0"),
    "max_grad_norm": (_number_at_least_0, "a number ≥ 0"),
    "seeds_in_parallel": (lambda value: isinstance(value, bool), "true or false"),  # runs.each_run
}
REQUIRED_KEYS = ("select", "learning_rate", "batch_size", "eval_batch_size", "eval_examples", "weight_decay",
                 "max_grad_norm")


def check_settings(settings: dict, run) -> dict:
    """The resolved settings, refused in one line naming the key before anything is written: a missing key, or a
    value the Trainer would take in another sense (steps 0 trains one step, steps -1 trains three epochs)."""
    where = f"params.yaml train.{run.profile}.{run.task}"
    for key in REQUIRED_KEYS:
        if key not in settings:
            raise DataError(f"{where}: missing key {key!r}")
    if "steps" not in settings and "epochs" not in settings:
        raise DataError(f"{where}: missing key 'steps' (or 'epochs')")
    if "steps" in settings and "epochs" in settings:
        raise DataError(f"{where}: 'steps' and 'epochs' both given; keep one")
    if "steps" in settings and "eval_every" not in settings:
        raise DataError(f"{where}: missing key 'eval_every' (steps between evaluations)")
    for key, (valid, expected) in SETTING_RULES.items():
        if key in settings and not valid(settings[key]):
            raise DataError(f"{where}.{key}: expected {expected}, got {settings[key]!r}")
    return settings


def learning_rate(settings: dict, run) -> float:
    """The run's own rate (learning_rate_by_run, by grid run name), else its method's (by_method or
    learning_rate_by_method), else the task's."""
    return float(resolved_settings(settings, run)["learning_rate"])


def training_arguments(settings: dict, run, seq2seq: bool, train_examples: int, batches_per_epoch: int | None = None):
    """`batches_per_epoch`: how many batches token batching makes of the training set (None: sentence batches,
    batch_size each); it decides how many steps an epoch is, and so a fractional warmup."""
    import torch
    from transformers import Seq2SeqTrainingArguments

    settings = check_settings(resolved_settings(settings, run), run)
    select = settings["select"]
    if select not in SELECTIONS:
        raise DataError(f"params.yaml train.{run.profile}.{run.task}.select: unknown {select!r}; "
                        f"expected one of {', '.join(SELECTIONS)}")
    accumulation = settings.get("gradient_accumulation", 1)
    batches = batches_per_epoch or int(np.ceil(train_examples / settings["batch_size"]))
    by_epoch = "epochs" in settings
    total_steps = int(np.ceil(batches / accumulation)) * settings["epochs"] if by_epoch else settings["steps"]
    warmup = settings.get("warmup", 0)  # a fraction of the steps (GLUE: 6%) or a number of steps
    generation = settings.get("validation_generation", {}) if seq2seq else {}
    return Seq2SeqTrainingArguments(
        output_dir=str(run.checkpoint_dir), seed=run.seed, data_seed=run.seed,
        learning_rate=float(settings["learning_rate"]), lr_scheduler_type="linear",
        warmup_steps=int(round(warmup * total_steps)) if warmup < 1 else int(warmup),
        per_device_train_batch_size=settings["batch_size"], per_device_eval_batch_size=settings["eval_batch_size"],
        gradient_accumulation_steps=settings.get("gradient_accumulation", 1),
        **({"num_train_epochs": settings["epochs"]} if by_epoch else {"max_steps": settings["steps"]}),
        weight_decay=settings["weight_decay"], max_grad_norm=settings["max_grad_norm"],
        adam_beta2=settings.get("adam_beta2", 0.999), adam_epsilon=settings.get("adam_epsilon", 1e-8),
        label_smoothing_factor=settings.get("label_smoothing", 0.0), fp16=settings.get("fp16", False),
        bf16=settings.get("bf16", False),
        # Trainer's condition for CPU bf16, and for several CPU processes: without it accelerate finds no backend
        # for them and each process trains alone on all the data, each writing the outputs (world size 1)
        use_cpu=(settings.get("bf16", False) or processes() > 1) and not torch.cuda.is_available(),
        # The models' losses are means over their own process's batch and ignore num_items_in_batch, which Trainer
        # would still multiply by the number of processes (a doubled loss and gradient with two); only the label
        # smoother divides by the tokens of all processes, and needs that product. One process: no effect.
        average_tokens_across_devices=bool(settings.get("label_smoothing", 0.0)),
        # Several processes: a parameter without a gradient on some step (a prefix MLP whose vectors came from a
        # cache, a head frozen by train_head: false) must not stop DDP, whatever Trainer infers from the model.
        ddp_find_unused_parameters=True,
        eval_strategy="epoch" if by_epoch else "steps", save_strategy="epoch" if by_epoch else "steps",
        eval_steps=None if by_epoch else settings["eval_every"], save_steps=None if by_epoch else settings["eval_every"],
        logging_steps=settings.get("log_every", 10),
        logging_nan_inf_filter=False,  # log a NaN loss as NaN, not as the mean of earlier ones: divergence_guard
        save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model=select, greater_is_better=SELECTIONS[select],
        predict_with_generate=seq2seq and select != "loss", generation_num_beams=generation.get("num_beams"),
        generation_max_length=generation.get("max_length"),
        train_sampling_strategy="group_by_length" if settings.get("group_by_length") else "random",
        report_to="none", dataloader_pin_memory=torch.cuda.is_available(),
        dataloader_num_workers=settings.get("dataloader_workers", 0))


def early_stopping(settings: dict, run) -> list:
    """Stop a run once its validation score (the `select` metric) has not improved for `early_stopping_patience`
    evaluations in a row, but never before `early_stopping_min_steps` (a score that peaks on an early, noisy
    evaluation and dips for a while is not a plateau); the best checkpoint is then loaded, as at any end
    (load_best_model_at_end). No patience set: the run trains for all its steps."""
    patience = settings.get("early_stopping_patience")
    if patience is None:
        return []
    if not _positive_int(patience):
        raise DataError(f"params.yaml train.{run.profile}.{run.task}.early_stopping_patience: expected a positive "
                        f"number of evaluations, got {patience!r}")
    from transformers import EarlyStoppingCallback

    min_steps = settings.get("early_stopping_min_steps", 0)

    class EarlyStoppingAfter(EarlyStoppingCallback):
        def on_evaluate(self, args, state, control, metrics, **kwargs):
            super().on_evaluate(args, state, control, metrics, **kwargs)
            if state.global_step < min(min_steps, state.max_steps):  # never past the last step
                control.should_training_stop = False

    return [EarlyStoppingAfter(early_stopping_patience=patience)]


def curves_logger(directory: Path, scratch: Path):
    """DVCLive for the train stage's curves, with its metrics.json summary moved to `scratch` (the checkpoint
    folder, removed when the run ends): the run's summary is training.json, and the seeds of a grid run share one
    folder that DVC reads as plots, where a summary file is not a curve (`dvc plots show` fails on it)."""
    from dvclive import Live

    class CurvesOnly(Live):
        @property
        def metrics_file(self) -> str:
            return str(scratch / "dvclive_summary.json")

        def end(self) -> None:
            # The last thing end() does is remove DVCLive's VS Code step signal (.dvc/tmp/exps/run/
            # DVCLIVE_STEP_COMPLETED, one per repository) if it exists; seeds that train at once (runs.each_run)
            # end together, and another seed's removal can come between that check and this one's.
            try:
                super().end()
            except FileNotFoundError as error:
                if Path(error.filename or "").name != "DVCLIVE_STEP_COMPLETED":
                    raise

    scratch.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").unlink(missing_ok=True)  # DVCLive's default place: cleared as Live clears its own
    return CurvesOnly(str(directory), dvcyaml=None, save_dvc_exp=False)


def resumable_trainer(trainer_class):
    """`trainer_class` whose group_by_length sampler orders each epoch by (data_seed, epoch) alone, so that a
    resumed run sees the batches of the uninterrupted one. Why an override: Trainer._get_train_sampler builds
    LengthGroupedSampler without a generator, so each epoch's order comes from the global torch RNG at the moment
    the epoch starts; an uninterrupted run reaches epoch k with the RNG as k epochs of dropout left it, but a run
    resumed inside epoch k draws that epoch's order from the RNG as it is right after setup (Trainer restores the
    checkpoint's RNG state only after skipping the trained batches), so it trains on other batches. (The random
    strategy does not have this problem: accelerate swaps its RandomSampler for a seedable one.)"""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from unipeft.trainer import AdapterCheckpointsMixin

    class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
        def __init__(self, batch_size: int, lengths: list[int], seed: int):
            super().__init__(batch_size, lengths=lengths)
            self.seed, self.epoch = seed, 0

        def set_epoch(self, epoch: int) -> None:  # Trainer calls it (through the dataloader) before each epoch
            self.epoch = epoch

        def __iter__(self):
            self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
            return super().__iter__()

    # checkpoints of only what trains (unipeft.trainer): a BART-large checkpoint would otherwise be 1.6 GB
    class ResumableTrainer(AdapterCheckpointsMixin, trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # Gradient accumulation: Trainer.__init__ sets model_accepts_loss_kwargs for any forward with **kwargs
            # (BART, mBART, EncoderDecoderModel, RoBERTa/BERT classifiers all have one), and then trusts the
            # model's loss to be normalized by num_items_in_batch, the label tokens of all the step's micro-batches:
            # Trainer.training_step divides the loss by the accumulation steps only when not (model_accepts_loss_kwargs
            # and num_items_in_batch is not None). These models ignore num_items_in_batch and return a plain mean
            # CrossEntropyLoss over their micro-batch, so with accumulation N the gradient (and the loss logged) was
            # the sum of N means, N times the mean, and max_grad_norm clipped at 1/N of its value. Without the label
            # smoother, the model's loss is the loss: say it takes no loss kwargs, so that _get_num_items_in_batch
            # counts nothing, compute_loss passes nothing, and training_step divides by the accumulation steps
            # (by 1 without accumulation: bit-identical). The label smoother (compute_loss) does divide its sum by
            # num_items_in_batch, and needs it, with average_tokens_across_devices (training_arguments) for several
            # processes; so does a compute_loss_func. Those keep Trainer's inference.
            if self.label_smoother is None and self.compute_loss_func is None:
                self.model_accepts_loss_kwargs = False

        def _get_train_sampler(self, train_dataset=None):
            sampler = super()._get_train_sampler(train_dataset)
            if type(sampler) is LengthGroupedSampler and sampler.generator is None:
                seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
                # Grouped by the batch of all processes (accelerate then deals its consecutive per-process
                # batches out), so that N processes train on the global batches one process would train on; by
                # Trainer's per-process batch size, the mega-batches, and so the batches, would change with N.
                return EpochSeededLengthGroupedSampler(sampler.batch_size * self.args.world_size, sampler.lengths,
                                                       seed)
            return sampler

    ResumableTrainer.__name__ = ResumableTrainer.__qualname__ = trainer_class.__name__
    return ResumableTrainer


def divergence_guard():
    """A callback that stops a run whose training loss or gradient norm is NaN or infinite, in one line naming the
    step and the value, before anything is saved as its output (Trainer would otherwise train on with NaN weights,
    and the adapter would score chance). Trainer logs the mean loss since the last log (with
    logging_nan_inf_filter=False, so a NaN step makes it NaN), the last gradient norm, and train_loss at the end."""
    import math

    from transformers import TrainerCallback

    class DivergenceGuard(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm", "train_loss"):
                value = (logs or {}).get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    raise DataError(f"training diverged at step {state.global_step}: {key} is {value}; "
                                    "lower the learning rate (or max_grad_norm)")

    return DivergenceGuard()


def compute_metrics_for(metric: str, tokenizer):
    """Validation scores from Trainer's predictions: generated ids for ROUGE/BLEU, logits for accuracy."""
    from . import metrics
    from .generation import decode_labels

    def decode(ids):  # references are the (eval_target-truncated) labels, as in the evaluate stage
        return decode_labels(tokenizer, ids)

    def compute(prediction) -> dict:
        predictions, labels = prediction.predictions, prediction.label_ids
        if metric == "accuracy":
            logits = predictions[0] if isinstance(predictions, tuple) else predictions
            return {"accuracy": float((logits.argmax(-1) == labels).mean() * 100)}
        hypotheses, references = decode(predictions), decode(labels)
        scores = metrics.rouge(hypotheses, references) if metric == "rouge" else metrics.bleu(hypotheses, references)
        return {k: v for k, v in scores.items() if not isinstance(v, str)}

    return compute


TRAINER_STATE = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME, without importing the Trainer


def resume_point(checkpoint_dir: Path, fingerprint: str) -> str | None:
    """The last complete checkpoint of an interrupted run of the same configuration, short of the one where its
    training ended; anything else there is cleared, incomplete checkpoints included (a process killed while
    saving one would otherwise wedge every later run: Trainer refuses to resume from it). Under torchrun /
    accelerate every process asks, and only the main one (RANK 0) clears and marks."""
    marker = checkpoint_dir / "run.json"
    if checkpoint_dir.is_dir():
        same = _marked(marker) == fingerprint
        complete, incomplete = _checkpoints(checkpoint_dir) if same else ([], [])
        # Where training had ended (a kill after it, in a callback's on_train_end): Trainer resumed from there
        # would train on, one step past the last or to the next evaluation after an early stop. The checkpoint
        # before it replays the end exactly.
        ended = [complete.pop()] if complete and _training_ended_at(complete[-1]) else []
        if main_process():
            for checkpoint, why in [(c, "its save was interrupted") for c in incomplete] + [
                    (c, "training had ended there") for c in ended]:
                print(f"removing {checkpoint}: {why}")
                shutil.rmtree(checkpoint, ignore_errors=True)
        if complete:
            print(f"resuming from {complete[-1]}")
            return str(complete[-1])
        if main_process():
            shutil.rmtree(checkpoint_dir)
    if main_process():
        checkpoint_dir.mkdir(parents=True)
        marker.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
    return None


def _marked(marker: Path) -> str | None:
    """The fingerprint in run.json; None where it is missing or unreadable (a kill while writing it), which
    only means starting over."""
    try:
        content = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return content.get("fingerprint") if isinstance(content, dict) else None


def _checkpoints(checkpoint_dir: Path) -> tuple[list[Path], list[Path]]:
    """The checkpoint-N directories, complete and incomplete, by step. Trainer._save_checkpoint writes
    trainer_state.json last (after the weights, optimizer, scheduler and RNG states), so a checkpoint is complete
    once that file exists and reads as JSON (not cut short by a kill while being written)."""

    def step(path: Path) -> int:
        return int(path.name.rsplit("-", 1)[1])

    checkpoints = sorted((path for path in checkpoint_dir.glob("checkpoint-*")
                          if path.is_dir() and path.name.rsplit("-", 1)[1].isdigit()), key=step)
    # a checkpoint of the whole model (before adapter-only checkpoints) has no unipeft_config.json: cleared
    complete = [path for path in checkpoints if _reads_as_json(path / TRAINER_STATE)
                and (path / "unipeft_config.json").is_file()]
    return complete, [path for path in checkpoints if path not in complete]


def _training_ended_at(checkpoint: Path) -> bool:
    """Trainer saves its control flags with each checkpoint, after the step's evaluation: should_training_stop is
    set at the last step and by early stopping."""
    state = json.loads((checkpoint / TRAINER_STATE).read_text())
    control = (state.get("stateful_callbacks") or {}).get("TrainerControl") or {}
    return bool(control.get("args", {}).get("should_training_stop"))


def _reads_as_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def training_clock(resumed_from: str | None):
    """A callback whose `seconds` is the training time across interruptions: the seconds trained before the
    checkpoint `resumed_from` plus those since the clock was made. Trainer saves a callback's state() in each
    checkpoint's trainer_state.json, written with the checkpoint and so always the time up to that checkpoint."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class TrainingClock(TrainerCallback, ExportableState):
        def __init__(self, earlier_seconds: float = 0.0):
            self.earlier_seconds = earlier_seconds
            self.started = time.perf_counter()

        @property
        def seconds(self) -> float:
            return self.earlier_seconds + time.perf_counter() - self.started

        def state(self) -> dict:  # as arguments: from_state(state) makes a clock that goes on from here
            return {"args": {"earlier_seconds": self.seconds}, "attributes": {}}

    earlier = 0.0
    if resumed_from:
        saved = json.loads((Path(resumed_from) / TRAINER_STATE).read_text()).get("stateful_callbacks") or {}
        earlier = (saved.get(TrainingClock.__name__) or {}).get("args", {}).get("earlier_seconds", 0.0)
    return TrainingClock(earlier)


def inputs_identity(data_dir: Path, model: str) -> dict:
    """What a run trains on, for its checkpoint fingerprint, so that a rerun on other data or another base model
    starts over instead of resuming: the tokenized data's metadata (datasets' save_to_disk writes a fingerprint of
    each split's content and transformations into its state.json) with its files' sizes, and the base model's
    config.json (its name where it is a Hub name: no download for this)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(data_dir).as_posix()
        digest.update(f"{relative}\0{path.stat().st_size}\0".encode())
        if path.suffix == ".json":  # metadata and the tokenizer: small, unlike the data files
            digest.update(path.read_bytes())
    config = Path(model) / "config.json"
    return {"data": digest.hexdigest()[:16],
            "model": config.read_text() if config.is_file() else model}


def main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def processes() -> int:
    """How many processes torchrun or accelerate launched for this run (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def abandon_checkpoints(checkpoint_dir: Path, error: BaseException) -> Path | None:
    """After a failed run: its checkpoints stay only where a rerun can resume from them, i.e. after an interruption
    (a kill, Ctrl-C) and once one is complete. A refusal (DataError: divergence, bad data) would fail again at the
    same point from any checkpoint of the same configuration, so nothing of it is kept. Returns the checkpoint a
    rerun resumes from, if one is kept."""
    if not main_process() or not checkpoint_dir.is_dir():
        return None
    complete = _checkpoints(checkpoint_dir)[0]
    if isinstance(error, DataError) or not complete:
        remove_checkpoints(checkpoint_dir)
        return None
    return complete[-1]


def remove_checkpoints(checkpoint_dir: Path) -> None:
    """The run's checkpoint folder, and the folders above it that it leaves empty (checkpoints/<task>/)."""
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    for parent in list(checkpoint_dir.parents)[:-1]:  # not the working directory itself
        try:
            parent.rmdir()
        except OSError:  # not empty (another run's checkpoints) or gone
            break


def peak_memory_mb() -> float:
    """Peak accelerator memory on a GPU; otherwise the process's peak resident memory."""
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB
