"""DVC stage `evaluate`: score a trained run on its task's test split, as the paper does.

    python stages/evaluate.py <task> <run> [<seed>]   # a point of the grid, each of grid.seeds without a seed
    python stages/evaluate.py experiment              # the single experiment (exp_evaluate)

Summarization: beam search with evaluate.<profile>.<task>.generation, ROUGE-1/2/L/Lsum (rouge-score, stemming).
Translation: beam search, sacreBLEU with its signature, and for Romanian targets the paper's normalised,
tokenised BLEU beside it. A decoder-only model continues each left-padded prompt, and only its new tokens are
scored (src/unipeft_bench/causal_lm.py). Both against references decoded from the tokenized labels (cut to the evaluation
target length, as the official scripts), with the scores against the full reference texts in
scores_untruncated. Classification: accuracy (MNLI: matched and, when present, mismatched).
Writes metrics/<task>/<run>/seed<seed>.json (scores, the three parameter counts, training time, peak memory,
steps, seed, package versions) and the predictions, or nothing on an error.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from unipeft_bench import io, metrics
from unipeft_bench.errors import DataError
from unipeft_bench.generation import decode_labels, generate
from unipeft_bench.runs import Run, exit_now, load_base_model, load_tokenized, stage_main
from unipeft_bench.tasks import task as get_task

PACKAGES = ("torch", "transformers", "datasets", "unipeft", "sacrebleu", "rouge-score", "dvc")


def versions() -> dict:
    return {"python": platform.python_version(), **{p: metadata.version(p) for p in PACKAGES}}


def score_seq2seq(task_name: str, predictions: list[str], references: list[str], target_language: str | None):
    if task_name == "summarization":
        return metrics.rouge(predictions, references)
    scores = {**metrics.bleu(predictions, references), "bleu_paper": None, "bleu_paper_signature": None}
    if target_language and target_language.startswith("ro"):
        from unipeft_bench.romanian import paper_bleu

        scores.update(paper_bleu(predictions, references))
    return scores


def score_against_references(task_name: str, predictions: list[str], test, tokenizer) -> tuple[dict, dict]:
    """The headline scores against the references as the official scripts had them, decoded from the tokenized
    labels, i.e. cut to the evaluation target length (XSum: val_max_target_length 60 in exps/run_xsum.sh; en-ro:
    150 in exps/run_en_ro.sh); and the same scores against the full, untruncated reference texts."""
    language = getattr(tokenizer, "tgt_lang", None)
    truncated = score_seq2seq(task_name, predictions, decode_labels(tokenizer, test["labels"]), language)
    return truncated, score_seq2seq(task_name, predictions, test["target"], language)


def reference_length(data_dir: Path) -> int | None:
    lengths = data_dir / "lengths.json"  # written by the tokenize stage
    return json.loads(lengths.read_text()).get("eval_target") if lengths.is_file() else None


def classify(model, dataset, tokenizer, batch_size: int) -> list[int]:
    import torch
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer)
    rows = list(dataset.select_columns([c for c in ("input_ids", "attention_mask", "token_type_ids")
                                        if c in dataset.column_names]))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))  # batches of like lengths pad less
    model.eval()
    predicted = [0] * len(rows)
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = order[start:start + batch_size]
            logits = model(**collate([rows[i] for i in batch]).to(model.device)).logits
            for i, label in zip(batch, logits.argmax(-1).tolist()):
                predicted[i] = label
    return predicted


def _design(method) -> tuple:  # not the whole form: a saved prefix is folded (its reparametrisation MLP merged)
    return method.name, [(m.budget_side, m.size, m.scale) for m in method.modifications]


def _sizes(method) -> str:
    return ", ".join(dict.fromkeys(f"{m.budget_side}_bn={m.size}" for m in method.modifications)) or "-"


def check_adapter_is_the_runs(saved, run: Run) -> None:
    """The adapter in the run's folder is this run's method at this run's sizes: one copied from another run (or
    left by an edit of params.yaml that DVC did not see) would otherwise be scored under this run's name."""
    import unipeft

    expected = unipeft.preset(run.method).with_budget(**run.budget)
    if _design(saved) != _design(expected):
        raise DataError(f"{run.adapter_dir}: holds an adapter of {saved.name!r} ({_sizes(saved)}), not this run's "
                        f"{expected.name!r} ({_sizes(expected)}); rerun its train stage")


def evaluate(run: Run, settings: dict) -> tuple[dict, dict[str, list], dict]:
    """The run's metrics report, its predictions per split, and the tokenized dataset they are for."""
    import torch
    import unipeft
    from transformers import set_seed

    training_file = run.adapter_dir / "training.json"
    if not training_file.is_file():
        raise DataError(f"{training_file}: not found; run the train stage")
    task = get_task(run.task)
    data_dir, data, tokenizer = load_tokenized(run.task)
    # The train stage's seed before the model: a task head that stayed frozen (train_head: false) is not in the
    # adapter, so it must be the same random initialisation again.
    set_seed(run.seed)
    model = load_base_model(run, tokenizer, {}, data_dir)
    with io.reading(run.adapter_dir, "the train stage"):
        try:
            attachment = unipeft.load(model, run.adapter_dir)
        except unipeft.ConfigError as err:
            raise DataError(str(err)) from None
        training = json.loads(training_file.read_text())
    check_adapter_is_the_runs(attachment.method, run)
    started = time.perf_counter()
    scores, untruncated, predictions, evaluation = {}, None, {}, {}
    # bf16 autocast: about twice as fast on a CPU with AVX-512 BF16 (benchmarks/cpu_step_costs.py)
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bool(settings.get("bf16"))):
        if task.kind == "seq2seq":
            test = data["test"]
            predictions["test"] = generate(model, tokenizer, test, settings["batch_size"], **settings["generation"])
            scores, untruncated = score_against_references(task.name, predictions["test"], test, tokenizer)
            evaluation["references"] = {"headline": "tokenized labels, decoded", "max_tokens": reference_length(
                data_dir), "scores_untruncated": "the untruncated reference texts"}
            if task.name == "summarization":
                evaluation["sentence_splitter"] = metrics.sentence_splitter()
        else:
            for split, key in (("test", "accuracy"), ("test_mismatched", "accuracy_mismatched")):
                if split in data:
                    predictions[split] = classify(model, data[split], tokenizer, settings["batch_size"])
                    correct = sum(p == label for p, label in zip(predictions[split], data[split]["labels"]))
                    scores[key] = round(100 * correct / len(data[split]), 2)
    sizes = {side: next((m.size for m in attachment.method.modifications if m.budget_side == side), None)
             for side in ("attn", "ffn")}
    sizes["scale"] = next((m.scale for m in attachment.method.modifications if m.composition == "scale"), None)
    report = {"task": run.task, "profile": run.profile, "run": run.name, "method": run.method, "seed": run.seed,
              "model": run.model, "budget": run.budget, "sizes": sizes, "scores": scores,
              **({"scores_untruncated": untruncated} if untruncated is not None else {}),
              "params": attachment.counts().to_dict(), "training": training,
              "evaluation": {"split": "test", "examples": len(data["test"]),
                             **{f"examples_{split}": len(data[split]) for split in predictions if split != "test"},
                             **evaluation, "precision": "bf16 autocast" if settings.get("bf16") else "fp32",
                             "seconds": round(time.perf_counter() - started, 1)},
              "versions": versions()}
    return report, predictions, data


def evaluate_and_save(run: Run, settings: dict) -> dict:
    report, predictions, data = evaluate(run, settings)
    records = [{"split": split, "id": row_id, "prediction": prediction}
               for split, values in predictions.items() for row_id, prediction in zip(data[split]["id"], values)]
    io.write_text_atomic(run.predictions_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    io.write_json_atomic(run.metrics_path, report)
    return report["scores"]


if __name__ == "__main__":
    exit_now(stage_main(sys.argv[1:], "evaluate", evaluate_and_save))
