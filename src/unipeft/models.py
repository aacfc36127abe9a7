"""The paper's three checkpoints and four of today's decoder-only LLMs: their shipped config.json, task class and the
'% params' denominator (the paper's own for its models; the base model's size for the others)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import transformers
from torch import nn

from .design import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    hub_name: str
    task_class: str
    paper_denominator: int  # the paper prints BART and mBART percentages over 409.6M (3.6% ↔ 14,745,600)
    num_labels: int | None = None


PAPER_MODELS = {
    "bart-large": ModelSpec("facebook/bart-large", "BartForConditionalGeneration", 409_600_000),
    "mbart-large-cc25": ModelSpec("facebook/mbart-large-cc25", "MBartForConditionalGeneration", 409_600_000),
    "roberta-base": ModelSpec("FacebookAI/roberta-base", "RobertaForSequenceClassification", 124_645_632, 2),
    # decoder-only LLMs: the denominator is every parameter, the untied LM head included (peft's "all params")
    "llama-3-8b": ModelSpec("meta-llama/Meta-Llama-3-8B", "LlamaForCausalLM", 8_030_261_248),
    "mistral-7b": ModelSpec("mistralai/Mistral-7B-v0.1", "MistralForCausalLM", 7_241_732_096),
    "qwen2.5-0.5b": ModelSpec("Qwen/Qwen2.5-0.5B", "Qwen2ForCausalLM", 494_032_768),
    "smollm2-135m": ModelSpec("HuggingFaceTB/SmolLM2-135M", "LlamaForCausalLM", 134_515_008),
}
_ALIASES = {spec.hub_name: name for name, spec in PAPER_MODELS.items()} | {"roberta-base": "roberta-base"}


def paper_denominator_for(model: nn.Module) -> int | None:
    name = str(getattr(model.config, "name_or_path", ""))
    name = _ALIASES.get(name, name)
    return PAPER_MODELS[name].paper_denominator if name in PAPER_MODELS else None


def _is_encoder(config) -> bool:
    """BERT-family configs also map to a causal-LM class (as decoders); a config directory of theirs means a
    classifier, as before."""
    return config.model_type in ("bert", "roberta")


def config_dir(name: str) -> Path:
    return Path(str(resources.files(__package__).joinpath("configs", name)))


def build_without_weights(name: str) -> nn.Module:
    """One of PAPER_MODELS, or a directory holding a config.json, built on the meta device (no memory, instant)."""
    if name in PAPER_MODELS:
        spec, directory = PAPER_MODELS[name], config_dir(name)
    elif (Path(name) / "config.json").is_file():
        spec, directory = None, Path(name)
    else:
        raise ConfigError(f"model: unknown model {name!r}; known: {', '.join(PAPER_MODELS)} or a directory "
                          "with a config.json")
    config = transformers.AutoConfig.from_pretrained(directory)
    if spec is not None and spec.num_labels:
        config.num_labels = spec.num_labels
    with torch.device("meta"):
        if spec is not None:
            model = getattr(transformers, spec.task_class)(config)
        elif config.is_encoder_decoder:
            model = transformers.AutoModelForSeq2SeqLM.from_config(config)
        elif type(config) in transformers.AutoModelForCausalLM._model_mapping and not _is_encoder(config):
            model = transformers.AutoModelForCausalLM.from_config(config)
        else:
            model = transformers.AutoModelForSequenceClassification.from_config(config)
    model.config.name_or_path = spec.hub_name if spec else str(name)
    return model
