"""Each task's trivial baseline: the floor a trained run has to clear before its score says anything.

Summarization: the document's first sentence (the lead baseline of the summarization literature); translation: the
source sentence copied; classification: the training split's most frequent label. Scored on the test split with the
evaluate stage's metrics and references (the tokenized labels, decoded), so a baseline's row sits in the same table
as the runs (aggregate) and the findings can ask whether full fine-tuning clears it (findings.stand_in_check).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from . import metrics
from .errors import DataError

NAMES = {"summarization": "first sentence", "translation": "source copied", "nli": "majority class",
         "sentiment": "majority class"}
CLASSIFICATION_SPLITS = ("test", "test_mismatched")  # as the evaluate stage scores them


def tokenized(task: str, root: Path):
    """data/tokenized/<task>, or None where the tokenize stage has not written it."""
    from datasets import load_from_disk

    folder = root / "data" / "tokenized" / task
    return load_from_disk(str(folder)) if (folder / "dataset_dict.json").is_file() else None


def majority_label(labels) -> int:
    """The most frequent label; a tie goes to the smallest, so the choice does not depend on the data's order."""
    counts = Counter(labels)
    return min(counts, key=lambda label: (-counts[label], label))


def predictions(task: str, data) -> dict[str, list]:
    """The baseline's predictions for each test split, in the dataset's order."""
    needed = ("test", "source") if task in ("summarization", "translation") else ("train", "labels")
    if needed[0] not in data or needed[1] not in data[needed[0]].column_names:
        raise DataError(f"data/tokenized/{task}: no {needed[0]} split with {needed[1]!r}, which the trivial "
                        "baseline needs; rerun the tokenize stage")
    if task in ("summarization", "translation"):
        sources = data["test"]["source"]
        return {"test": [metrics.lead_sentence(s) for s in sources] if task == "summarization" else list(sources)}
    if task not in NAMES:
        raise DataError(f"task {task!r}: no trivial baseline; known: {', '.join(NAMES)}")
    label = majority_label(data["train"]["labels"])
    return {split: [label] * len(data[split]) for split in CLASSIFICATION_SPLITS if split in data}


def references(task: str, root: Path, data) -> list[str]:
    """The generation references the evaluate stage scores against: the tokenized labels, decoded."""
    from transformers import AutoTokenizer

    from .generation import decode_labels

    tokenizer = AutoTokenizer.from_pretrained(str(root / "data" / "tokenized" / task / "tokenizer"))
    return decode_labels(tokenizer, data["test"]["labels"])


def scores(task: str, root: Path, romanian: bool = False) -> dict[str, float] | None:
    """The baseline's test scores under the keys of a run's metrics file (with the paper's Romanian BLEU where the
    targets are Romanian, as the evaluate stage); None without tokenized data."""
    data = tokenized(task, root)
    if data is None:
        return None
    predicted = predictions(task, data)
    if task == "summarization":
        return metrics.rouge(predicted["test"], references(task, root, data))
    if task == "translation":
        refs = references(task, root, data)
        scores = {"bleu": metrics.bleu(predicted["test"], refs)["bleu"]}
        if romanian:
            from .romanian import paper_bleu

            scores["bleu_paper"] = paper_bleu(predicted["test"], refs)["bleu_paper"]
        return scores
    keys = {"test": "accuracy", "test_mismatched": "accuracy_mismatched"}
    return {keys[split]: round(100 * sum(p == y for p, y in zip(labels, data[split]["labels"], strict=True))
                               / len(labels), 2) for split, labels in predicted.items()}
