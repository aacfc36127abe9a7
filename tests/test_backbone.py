"""The offline backbone's construction (MiniLM warm start) and a two-step run of its denoising stage."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

import data_fixtures as fx
from backbone import build, main as backbone_main
from prepare import prepare
from unipeft_bench.models import resolve

P = {"decoder_layers": 2, "cross_attention_init": "self_attention"}


def test_warm_start_copies_self_attention_into_cross_attention():
    model, tokenizer = build(P, resolve("minilm"))
    layers = model.decoder.bert.encoder.layer
    assert len(layers) == 2 and len(model.encoder.encoder.layer) == 6
    for layer in layers:
        for name, value in layer.attention.state_dict().items():
            assert torch.equal(layer.crossattention.state_dict()[name], value)
    transform = model.decoder.cls.predictions.transform.dense.weight
    assert torch.equal(transform, torch.eye(transform.shape[0]))
    batch = tokenizer(["a short input"], return_tensors="pt")
    assert model.generate(**batch, max_new_tokens=4, num_beams=2).shape[0] == 1


def test_backbone_stage_trains_and_saves(tmp_path, monkeypatch):
    fx.offline_assets(tmp_path / "assets")
    data = {"assets": "assets", "summarization": {"seed": 0, "validation_fraction": 0.2, "test_fraction": 0.2},
            "translation": {"validation_books": ["Ruth"], "test_books": ["Acts"]}}
    for task in ("summarization", "translation"):
        prepare(task, {"profile": "offline", "data": data}, tmp_path)
    params = {"profile": "offline", "backbone": {
        **P, "encoder": "minilm", "tasks": ["summarization", "translation"], "texts": 16, "eval_texts": 4,
        "max_length": 16, "mask_ratio": 0.3, "poisson_lambda": 3.0, "steps": 2, "batch_size": 4, "learning_rate": 1e-4,
        "learning_rate_new": 1e-3, "warmup_steps": 0, "bf16": True, "dropout": 0.0, "log_every": 1, "eval_every": 2,
        "seed": 0}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert backbone_main() == 0
    config = json.loads((tmp_path / "models" / "backbone" / "config.json").read_text())
    assert config["encoder"]["hidden_dropout_prob"] == 0.1  # trained without dropout, saved with MiniLM's
    curve = (tmp_path / "metrics" / "backbone" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert curve[0].split("\t") == ["step", "loss"] and len(curve) >= 2
    assert not [p for p in os.listdir(tmp_path / "models") if p.startswith(".")]


def test_backbone_is_not_built_in_the_real_profile(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"profile": "real"}))
    monkeypatch.chdir(tmp_path)
    assert backbone_main() == 0
    assert sorted(p.name for p in (tmp_path / "models" / "backbone").iterdir()) == ["UNUSED.md"]
