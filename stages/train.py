"""DVC stage `train`: fine-tune one method at one budget on one task, and save only what the method trains.

    python stages/train.py <task> <run> <seed>     # a point of params.yaml's grid (matrix stage train)
    python stages/train.py experiment              # the top-level task/model/method/budget/seed (exp_train)
    accelerate launch stages/train.py ...          # several GPUs (or torchrun --nproc_per_node N); same script

HF Trainer (Seq2SeqTrainer for generation tasks) with the library attached, the task's hyperparameters from
train.<profile>.<task>, DVCLive through transformers' callback, checkpoint selection as the paper (ROUGE-2,
loss, accuracy). Checkpoints go to checkpoints/<run>/ and an interrupted run resumes from the last one.
Writes runs/<run>/ (adapter_model.safetensors, adapter_config.json, training.json), or nothing on an error.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from unipeft_bench import io
from unipeft_bench.errors import DataError
from unipeft_bench.runs import Run, exit_now, load_base_model, stage_main
from unipeft_bench.tasks import task as get_task
from unipeft_bench.training import compute_metrics_for, peak_memory_mb, resume_point, training_arguments


def train(run: Run, settings: dict) -> dict:
    import torch
    import unipeft
    from datasets import load_from_disk
    from dvclive import Live
    from transformers import (AutoTokenizer, DataCollatorForSeq2Seq, DataCollatorWithPadding, Seq2SeqTrainer,
                              Trainer, set_seed)
    from transformers.integrations import DVCLiveCallback

    task = get_task(run.task)
    data_dir = Path("data/tokenized") / run.task
    if not (data_dir / "dataset_dict.json").is_file():
        raise DataError(f"{data_dir}: not found; run the tokenize stage")
    data = load_from_disk(str(data_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(data_dir / "tokenizer"))
    set_seed(run.seed)  # before the model: a classification head starts from the run's seed
    model = load_base_model(run, tokenizer, settings)
    try:
        attachment = unipeft.attach(model, run.method, **run.budget)
    except unipeft.ConfigError as err:
        raise DataError(str(err)) from None
    seq2seq = task.kind == "seq2seq"
    validation = data["validation"].select(range(min(settings["eval_examples"], len(data["validation"]))))
    args = training_arguments(settings, run, seq2seq, len(data["train"]))
    if seq2seq:
        model.generation_config.update(**settings.get("validation_generation", {}))
        collator = DataCollatorForSeq2Seq(tokenizer, model=model)
    else:
        collator = DataCollatorWithPadding(tokenizer)
    columns = ["input_ids", "attention_mask", "labels"] + (["token_type_ids"] if "token_type_ids" in
                                                            data["train"].column_names else [])
    trainer_class = Seq2SeqTrainer if seq2seq else Trainer
    with Live(str(run.live_dir), dvcyaml=None, save_dvc_exp=False) as live:
        trainer = trainer_class(model=model, args=args, data_collator=collator,
                                train_dataset=data["train"].select_columns(columns),
                                eval_dataset=validation.select_columns(columns),
                                processing_class=tokenizer, callbacks=[DVCLiveCallback(live=live)],
                                compute_metrics=None if settings["select"] == "loss" else
                                compute_metrics_for(task.metric, tokenizer))
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        trainer.train(resume_from_checkpoint=resume_point(run.checkpoint_dir, run.fingerprint(settings)))
        seconds = time.perf_counter() - started
    state = trainer.state
    report = {"steps": state.global_step, "seconds": round(seconds, 1), "best_step": _best_step(state),
              "best_metric": {"name": args.metric_for_best_model, "value": state.best_metric},
              "peak_memory_mb": peak_memory_mb(), "device": str(args.device),
              "precision": "bf16 autocast" if args.bf16 else "fp16 autocast" if args.fp16 else "fp32",
              "learning_rate": args.learning_rate, "train_examples": len(data["train"])}
    if trainer.is_world_process_zero():
        with io.atomic_directory(run.adapter_dir) as staging:
            attachment.save(staging)
            (staging / "training.json").write_text(json.dumps(report, indent=2) + "\n")
        shutil.rmtree(run.checkpoint_dir, ignore_errors=True)  # finished: nothing left to resume
    return report


def _best_step(state) -> int | None:
    if not state.best_model_checkpoint:
        return None
    return int(state.best_model_checkpoint.rsplit("-", 1)[-1])


if __name__ == "__main__":
    exit_now(stage_main(sys.argv[1:], "train", train))
