"""DVC stage `tokenize@<task>`: tokenized train/validation/test splits (datasets' Arrow format) for the task.
(Not named tokenize.py: that would shadow the standard library module of the same name.)

    python stages/tokenize_splits.py <task>

Reads tokenize.<profile> from params.yaml: the tokenizer, max lengths and (offline) how many examples per split;
with a `prompt` (a generation task for a decoder-only model) each example is one prompt → completion sequence
(src/unipeft_bench/prompts.py), and prompt.json says so. A tokenizer without a pad token pads with its EOS.
Writes data/tokenized/<task>/ and metrics/data/<task>_tokens.json, or nothing on an error: a data/<task>/*.jsonl
line that is not a JSON record, a record without the task's fields or with a label outside its classes, an empty or
missing split, or a `limit` that would leave a split empty is refused in one line naming the file or key.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from unipeft_bench import io, prompts, schema
from unipeft_bench.errors import DataError
from unipeft_bench.models import offline_environment, resolve
from unipeft_bench.tasks import SPLITS, check_records, task as get_task
from unipeft_bench.tokenization import encode_classification, encode_seq2seq, subsample, token_stats


LENGTHS = "lengths.json"  # the max lengths the splits were cut to; evaluate names the references' length


def lengths(kind: str, options: dict) -> dict:
    if kind != "seq2seq":
        return {"source": options["source"]}
    return {"source": options["source"], "target": options["target"],
            "eval_target": options.get("eval_target", options["target"])}


def _check_unique_ids(used: list[dict], records: list[dict], path: Path) -> None:
    """An evaluated example's id is its own: predictions, and the findings' pairing of two runs, go by id. (Training
    examples are keyed by nothing; the Debian stand-in's training split repeats 11 package names.)"""
    counts = Counter(record["id"] for record in used)
    repeated = next((i for i, count in counts.items() if count > 1), None)
    if repeated is not None:
        first, second = [number for number, record in enumerate(records, start=1) if record["id"] == repeated][:2]
        raise DataError(f"{path}: record {second} (id {repeated!r}): the same id as record {first}")


def _check_no_leak(ids: dict[str, dict[str, int]], folder: Path) -> None:
    """No test id in the training or validation split (split id → record number). The offline prepare stage's
    splits promise it; a real dataset numbers each split's ids from 0, so it is not checked there."""
    for split in ("train", "validation"):
        shared = [(number, i) for i, number in ids[split].items() if i in ids["test"]]
        if shared:
            number, i = min(shared)
            raise DataError(f"{folder / f'{split}.jsonl'}: record {number} (id {i!r}) is also in the test split")


def tokenize(task_name: str, params: dict, root: Path = Path(".")) -> dict:
    task = get_task(task_name)
    profile = io.need(params, "profile")
    if profile == "offline":
        offline_environment()
    settings = io.need(params, f"tokenize.{profile}")
    options = io.need(settings, task_name, f"params.yaml tokenize.{profile}")
    limit = schema.check_tokenize(options, f"tokenize.{profile}.{task_name}").get("limit") or {}
    prompting = prompts.options(options, task.kind, f"tokenize.{profile}.{task_name}")
    tokenizer_name = settings["tokenizer"]
    tokenizer_name = tokenizer_name[task_name] if isinstance(tokenizer_name, dict) else tokenizer_name
    folder = root / "data" / task_name
    splits = sorted(p.stem for p in folder.glob("*.jsonl"))
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise DataError(f"{folder}: no {', '.join(f'{s}.jsonl' for s in missing)}; run the prepare stage")
    prepared, ids = {}, {}
    for split in splits:  # all of it checked before the tokenizer loads
        path = folder / f"{split}.jsonl"
        records = io.read_jsonl(path)
        check_records(task, records, str(path))
        prepared[split] = subsample(records, limit.get(split), options.get("seed", 0))
        if split != "train":
            _check_unique_ids(prepared[split], records, path)
        ids[split] = {record["id"]: number for number, record in enumerate(records, start=1)}
    if profile == "offline":
        _check_no_leak(ids, folder)
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve(tokenizer_name), **options.get("tokenizer_kwargs", {}))
    if tokenizer.pad_token is None:  # decoder-only tokenizers (Llama 3, GPT-2) have none
        tokenizer.pad_token = tokenizer.eos_token
    datasets, report = {}, {}
    for split, records in prepared.items():
        if task.kind == "seq2seq":
            target = options["target"] if split == "train" else options.get("eval_target", options["target"])
            if prompting:
                encoded, stats = prompts.encode(tokenizer, records, prompting, options["source"], target,
                                                f"tokenize.{profile}.{task_name}")
            else:
                encoded = encode_seq2seq(tokenizer, records, options["source"], target)
        else:
            target, encoded = None, encode_classification(tokenizer, records, options["source"])
        datasets[split] = Dataset.from_dict(encoded)
        if not prompting:
            stats = token_stats(encoded, options["source"], target)
        report[split] = {"count": len(records), **stats}
    with io.atomic_directory(root / "data" / "tokenized" / task_name) as staging:
        DatasetDict(datasets).save_to_disk(str(staging))
        tokenizer.save_pretrained(str(staging / "tokenizer"))
        io.write_json_atomic(staging / LENGTHS, lengths(task.kind, options))
        if prompting:
            io.write_json_atomic(staging / prompts.PROMPT_FILE, prompting)
    io.write_json_atomic(root / "metrics" / "data" / f"{task_name}_tokens.json", report)
    return report


if __name__ == "__main__":
    sys.exit(io.run_task_stage("stages/tokenize_splits.py", tokenize, sys.argv[1:]))
