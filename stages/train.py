"""DVC stage `train`: fine-tune one method at one budget on one task, and save only what the method trains.

    python stages/train.py <task> <run> [<seed>]   # a point of params.yaml's grid, each of grid.seeds without one
    python stages/train.py experiment              # the top-level task/model/method/budget/seed (exp_train)
    accelerate launch stages/train.py ...          # several GPUs (or torchrun --nproc_per_node N); same script

HF Trainer (Seq2SeqTrainer for generation tasks on an encoder-decoder; on a decoder-only model, prompt →
completion with the loss on the completion: src/unipeft_bench/causal_lm.py) with the library attached, the task's
hyperparameters from train.<profile>.<task>, DVCLive through transformers' callback, checkpoint selection as the
paper (ROUGE-2, loss, accuracy). Checkpoints go to checkpoints/<run>/ and an interrupted run resumes from the last one.
Writes runs/<run>/ (adapter_model.safetensors, unipeft_config.json, training.json), or nothing on an error.
"""

from __future__ import annotations

import contextlib
import json
import sys

from unipeft_bench import io
from unipeft_bench.causal_lm import completion_trainer, training_collator
from unipeft_bench.errors import DataError
from unipeft_bench.run_settings import check_settings_file
from unipeft_bench.runs import Run, exit_now, load_base_model, load_tokenized, stage_main
from unipeft_bench.tasks import task as get_task
from unipeft_bench.models import resolve as resolve_model
from unipeft_bench.training import (abandon_checkpoints, check_settings, compute_metrics_for, curves_logger,
                                    divergence_guard, early_stopping, inputs_identity, peak_memory_mb, processes,
                                    resolved_settings, remove_checkpoints, resumable_trainer, resume_point,
                                    training_arguments, training_clock)


def method_for(run: Run, settings: dict):
    """The run's method; `train_head: false` keeps the task head at its (seeded) random initialisation, as the
    official code did: PETLEncModel (petl/petl_enc_model.py) trains only `ef_*` parameters, so RoBERTa's
    classification head never trained on GLUE (exps/run_glue.sh). Set on the Method rather than by freezing
    parameters after attaching, so that the saved unipeft_config.json says so and evaluate loads it as trained.
    Methods that unfreeze all (full fine-tuning) still train the head, as the official full fine-tuning did."""
    import dataclasses

    import unipeft

    method = unipeft.preset(run.method)
    train_head = settings.get("train_head", True)
    if not isinstance(train_head, bool):
        raise DataError(f"params.yaml train.{run.profile}.{run.task}.train_head: expected true or false, "
                        f"got {train_head!r}")
    return dataclasses.replace(method, train_head=train_head)


def token_sampler(run: Run, settings: dict, train_set, seq2seq: bool):
    """Batches of max_tokens_per_batch tokens (the official en-ro setting), or None for sentence batches."""
    if settings.get("max_tokens_per_batch") is None:
        return None
    from unipeft_bench.token_batching import check_max_tokens, sampler_for

    where = f"train.{run.profile}.{run.task}"
    max_tokens = check_max_tokens(settings["max_tokens_per_batch"], f"{where}.max_tokens_per_batch")
    multiple = check_max_tokens(settings.get("batch_size_multiple", 1), f"{where}.batch_size_multiple")
    if not seq2seq:
        raise DataError(f"params.yaml {where}.max_tokens_per_batch: token batching is for seq2seq tasks")
    return sampler_for(train_set, max_tokens, run.seed, multiple)


def shortest_first(validation):
    """The validation examples by length: an evaluation batch is padded to its longest example, and on the
    sentiment stand-in's 500 (batches of 128) sorted batches take 1.5 s against 2.8 s in stored order (measured
    on two cores), a fifth of a run's time at eight evaluations. Accuracy and ROUGE do not depend on the order;
    the loss, a mean of batch means, moves a little."""
    lengths = [len(ids) for ids in validation["input_ids"]]
    return validation.select(sorted(range(len(lengths)), key=lengths.__getitem__))


def train(run: Run, settings: dict) -> dict:
    import torch
    import unipeft
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, Seq2SeqTrainer, Trainer, set_seed
    from transformers.integrations import DVCLiveCallback

    # by_method and the rate tables applied: what this run trains with, refused here before anything is written
    settings = check_settings(resolved_settings(settings, run), run)
    task = get_task(run.task)
    data_dir, data, tokenizer = load_tokenized(run.task)
    method = method_for(run, settings)
    set_seed(run.seed)  # before the model: a classification head starts from the run's seed (evaluate does the same)
    model = load_base_model(run, tokenizer, settings, data_dir)
    try:
        attachment = unipeft.attach(model, method, **run.budget)
    except unipeft.ConfigError as err:
        raise DataError(str(err)) from None
    seq2seq = task.kind == "seq2seq"
    causal = seq2seq and not model.config.is_encoder_decoder  # prompt → completion (load_base_model checked it)
    validation = shortest_first(data["validation"].select(range(min(settings["eval_examples"],
                                                                     len(data["validation"])))))
    columns = ["input_ids", "attention_mask", "labels"] + (["token_type_ids"] if "token_type_ids" in
                                                            data["train"].column_names else [])
    train_set = data["train"].select_columns(columns)
    sampler = token_sampler(run, settings, train_set, seq2seq)
    args = training_arguments(settings, run, seq2seq, len(data["train"]), sampler and len(sampler))
    generation = {"validation_generation": settings.get("validation_generation", {})} if causal else {}
    if causal:
        collator, trainer_class = training_collator(tokenizer), completion_trainer(Trainer)
    elif seq2seq:
        model.generation_config.update(**settings.get("validation_generation", {}))
        collator, trainer_class = DataCollatorForSeq2Seq(tokenizer, model=model), Seq2SeqTrainer
    else:
        collator, trainer_class = DataCollatorWithPadding(tokenizer), Trainer
    trainer_class = resumable_trainer(trainer_class)
    if sampler is not None:
        from unipeft_bench.token_batching import token_batching_trainer

        trainer_class = token_batching_trainer(trainer_class, sampler)
    if processes() > 1 and args.world_size != processes():  # else each process would train alone and write
        raise DataError(f"launched as {processes()} processes but the Trainer sees {args.world_size}: no "
                        f"distributed backend for device {args.device}")
    stopping = early_stopping(settings, run)  # refused here, before Live below clears the previous run's curves
    fingerprint = run.fingerprint({**settings, "inputs": inputs_identity(data_dir, resolve_model(run.model)),
                                   # another number of processes is another global batch: start over
                                   **({"processes": processes()} if processes() > 1 else {})})
    with args.main_process_first(local=False, desc="checkpoints"):  # the others read what the main one cleared
        resume_from = resume_point(run.checkpoint_dir, fingerprint)
    main = args.process_index == 0  # the only one to write curves and outputs
    try:
        with curves_logger(run.live_dir, run.checkpoint_dir) if main else contextlib.nullcontext() as live:
            clock = training_clock(resume_from)  # counts the interrupted parts too
            trainer = trainer_class(model=model, args=args, data_collator=collator, train_dataset=train_set,
                                    eval_dataset=validation.select_columns(columns),
                                    processing_class=tokenizer,
                                    callbacks=[*([DVCLiveCallback(live=live)] if main else []), clock,
                                               divergence_guard(), *stopping],
                                    compute_metrics=None if settings["select"] == "loss" else
                                    compute_metrics_for(task.metric, tokenizer), **generation)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            trainer.train(resume_from_checkpoint=resume_from)
            seconds = clock.seconds
    except BaseException as error:
        kept = abandon_checkpoints(run.checkpoint_dir, error)
        if isinstance(error, KeyboardInterrupt):  # one line for stage_failed: which run, and where it resumes
            raise KeyboardInterrupt(f"{run.slug} interrupted; the next `dvc repro` resumes it from {kept}" if kept
                                    else f"{run.slug} interrupted before its first checkpoint; the next `dvc repro` "
                                    "trains it from the start") from None
        raise
    state = trainer.state
    report = {"steps": state.global_step, "max_steps": state.max_steps,
              "stopped_early": state.global_step < state.max_steps, "seconds": round(seconds, 1),
              "best_step": _best_step(state),
              "best_metric": {"name": args.metric_for_best_model, "value": state.best_metric},
              "peak_memory_mb": peak_memory_mb(), "device": str(args.device),
              "precision": "bf16 autocast" if args.bf16 else "fp16 autocast" if args.fp16 else "fp32",
              "learning_rate": args.learning_rate, "train_examples": len(data["train"]),
              "batches": (f"at most {settings['max_tokens_per_batch']} tokens (padded), {len(sampler)} per epoch"
                          if sampler else f"{args.per_device_train_batch_size} examples")
                         + (f" in each of {args.world_size} processes" if args.world_size > 1 else ""),
              "head_trained": _head_trained(attachment),
              **({"inputs": "prompt → completion, the loss on the completion"} if causal else {})}
    if main:
        with io.atomic_directory(run.adapter_dir) as staging:
            attachment.save(staging)
            (staging / "training.json").write_text(json.dumps(report, indent=2) + "\n")
        remove_checkpoints(run.checkpoint_dir)  # finished: nothing left to resume
    return report


def _head_trained(attachment) -> bool | None:
    """Whether the task head trained; None where the model has no separate head (a tied LM head)."""
    head = attachment.head_parameters()
    return any(p.requires_grad for p in head.values()) if head else None


def _best_step(state) -> int | None:
    if not state.best_model_checkpoint:
        return None
    return int(state.best_model_checkpoint.rsplit("-", 1)[-1])


if __name__ == "__main__":
    exit_now(stage_main(sys.argv[1:], "train", train, check_settings_file))
