"""The train and evaluate stages on a damaged or foreign intermediate file: one line naming the file (io.reading,
and the evaluate stage's check that the adapter is the run's), never a library's traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from unipeft_bench.errors import DataError
from unipeft_bench.runs import Run

SETTINGS = {"steps": 2, "batch_size": 4, "eval_batch_size": 8, "eval_every": 2, "eval_examples": 8,
            "learning_rate": 1e-3, "warmup": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "select": "accuracy"}
LORA = Run("sentiment", "lora-small", "lora", {"attn_bn": 2}, seed=3, model="minilm")
PA = Run("sentiment", "pa-small", "pa", {"ffn_bn": 4}, seed=3, model="minilm")
DATA = "data/tokenized/sentiment"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tokenized sentiment project with two tiny trained runs (LoRA and PA)."""
    import os

    import data_fixtures as fx
    from prepare import prepare
    from test_data import PARAMS as DATA_PARAMS
    from tokenize_splits import tokenize
    from train import train

    root = tmp_path_factory.mktemp("damaged")
    fx.offline_assets(root / "assets")
    prepare("sentiment", DATA_PARAMS, root)
    tokenize("sentiment", {"profile": "offline", "tokenize": {"offline": {
        "tokenizer": "minilm", "sentiment": {"source": 16, "limit": {"train": 16}}}}}, root)
    here = os.getcwd()
    os.chdir(root)
    try:
        for run in (LORA, PA):
            train(run, dict(SETTINGS))
    finally:
        os.chdir(here)
    return root


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _one(root: Path, pattern: str) -> Path:
    return sorted(root.glob(pattern))[0]


# (stage, what is damaged, how, the path the one line must start with)
CASES = [
    ("train", f"{DATA}/dataset_dict.json", _cut, DATA),
    ("train", f"{DATA}/train/data-*.arrow", _cut, DATA),
    ("train", f"{DATA}/tokenizer/tokenizer.json", lambda p: p.write_text("{garbled"), DATA),
    ("train", DATA, shutil.rmtree, f"{DATA}: not found"),
    ("evaluate", f"{DATA}/validation/data-*.arrow", lambda p: p.write_bytes(b"\xff" * 64), DATA),
    ("evaluate", DATA, shutil.rmtree, f"{DATA}: not found"),
    ("evaluate", "runs/sentiment/lora-small/seed3/*.safetensors", _cut, "runs/sentiment/lora-small/seed3"),
    ("evaluate", "runs/sentiment/lora-small/seed3/training.json", lambda p: p.write_text("{\"steps"),
     "runs/sentiment/lora-small/seed3"),
    ("evaluate", "runs/sentiment/lora-small/seed3/training.json", Path.unlink,
     "runs/sentiment/lora-small/seed3/training.json: not found"),
    # another run's adapter copied in: scored under this run's name, it would say `lora` with PA's weights
    ("evaluate", "runs/sentiment/lora-small/seed3",
     lambda p: (shutil.rmtree(p), shutil.copytree(p.parents[1] / "pa-small/seed3", p)),
     "runs/sentiment/lora-small/seed3: holds an adapter of 'pa' (ffn_bn=4), not this run's 'lora' (attn_bn=2)"),
]


@pytest.mark.parametrize("stage, target, damage, message", CASES,
                         ids=[f"{stage}-{Path(target).name}-{i}" for i, (stage, target, _, _) in enumerate(CASES)])
def test_a_damaged_file_is_one_line_naming_it(trained, tmp_path, monkeypatch, stage, target, damage, message):
    from evaluate import evaluate_and_save
    from train import train

    project = tmp_path / "project"
    shutil.copytree(trained, project, ignore=shutil.ignore_patterns("assets"))
    monkeypatch.chdir(project)
    damage(_one(project, target))
    with pytest.raises(DataError) as refusal:
        if stage == "train":
            train(Run("sentiment", "lora-fresh", "lora", {"attn_bn": 2}, seed=3, model="minilm"), dict(SETTINGS))
        else:
            evaluate_and_save(LORA, {"batch_size": 8})
    line = str(refusal.value)
    assert line.startswith(message) and "\n" not in line, line
    assert not Path("metrics/sentiment/lora-small").exists() or stage == "train"  # nothing written


def test_the_undamaged_project_evaluates(trained, tmp_path, monkeypatch):  # the table's control case
    from evaluate import evaluate_and_save

    project = tmp_path / "project"
    shutil.copytree(trained, project, ignore=shutil.ignore_patterns("assets"))
    monkeypatch.chdir(project)
    assert set(evaluate_and_save(LORA, {"batch_size": 8})) == {"accuracy"}
    assert json.loads(LORA.metrics_path.read_text())["method"] == "lora"
