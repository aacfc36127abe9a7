"""Tiny random-weight models of every mapped architecture, built in the test (no downloads)."""

from __future__ import annotations

import pytest
import torch
from transformers import (BartConfig, BartForConditionalGeneration, BertConfig, BertForSequenceClassification,
                          EncoderDecoderConfig, EncoderDecoderModel, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, LlamaForSequenceClassification, MBartConfig, MBartForConditionalGeneration,
                          MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM, RobertaConfig, RobertaForSequenceClassification, T5Config,
                          T5ForConditionalGeneration)

D, HEADS, LAYERS, FFN = 16, 4, 2, 64  # FFN = 4d as in the paper, so Appendix B's formulas apply exactly
VOCAB = 64


def _bart(cls, config_cls):
    return cls(config_cls(vocab_size=VOCAB, d_model=D, encoder_layers=LAYERS, decoder_layers=LAYERS,
                          encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
                          decoder_ffn_dim=FFN, max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
                          eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None))


def _bert_config(**extra):
    return BertConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                      intermediate_size=FFN, max_position_embeddings=64, **extra)


def _bert2bert():
    model = EncoderDecoderModel(EncoderDecoderConfig.from_encoder_decoder_configs(
        _bert_config(), _bert_config(is_decoder=True, add_cross_attention=True)))
    for key, value in (("decoder_start_token_id", 2), ("pad_token_id", 0), ("eos_token_id", 3)):
        setattr(model.config, key, value)
        setattr(model.generation_config, key, value)
    return model


def _decoder_only(cls, config_cls, **extra):
    """Grouped-query attention (4 query heads, 2 key/value heads), untied embeddings unless `extra` ties them."""
    return cls(config_cls(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                          num_key_value_heads=HEADS // 2, intermediate_size=FFN, max_position_embeddings=64,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra))


BUILDERS = {
    "bart": lambda: _bart(BartForConditionalGeneration, BartConfig),
    "mbart": lambda: _bart(MBartForConditionalGeneration, MBartConfig),
    "roberta": lambda: RobertaForSequenceClassification(RobertaConfig(
        vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN,
        max_position_embeddings=70, num_labels=3, pad_token_id=1)),
    "bert": lambda: BertForSequenceClassification(_bert_config(num_labels=2)),
    "bert2bert": _bert2bert,
    "t5": lambda: T5ForConditionalGeneration(T5Config(
        vocab_size=VOCAB, d_model=D, d_kv=D // HEADS, d_ff=FFN, num_layers=LAYERS, num_decoder_layers=LAYERS,
        num_heads=HEADS, relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
        eos_token_id=1)),
    # T5 v1.1 / flan-T5: gated-GELU FFN (wi_0, wi_1), untied head
    "t5_gated": lambda: T5ForConditionalGeneration(T5Config(
        vocab_size=VOCAB, d_model=D, d_kv=D // HEADS, d_ff=FFN, num_layers=LAYERS, num_decoder_layers=LAYERS,
        num_heads=HEADS, relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
        eos_token_id=1, feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    "llama": lambda: _decoder_only(LlamaForCausalLM, LlamaConfig, tie_word_embeddings=True),  # as SmolLM2
    "mistral": lambda: _decoder_only(MistralForCausalLM, MistralConfig, sliding_window=4),
    "qwen2": lambda: _decoder_only(Qwen2ForCausalLM, Qwen2Config),  # q, k, v biases
    "qwen3": lambda: _decoder_only(Qwen3ForCausalLM, Qwen3Config, head_dim=8),  # q/k norms, 4·8 ≠ d = 16
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=D, n_layer=LAYERS, n_head=HEADS,
                                               n_inner=FFN, n_positions=64, bos_token_id=1, eos_token_id=2,
                                               pad_token_id=0)),
    "llama_classifier": lambda: _decoder_only(LlamaForSequenceClassification, LlamaConfig, num_labels=2),
}
SEQ2SEQ = ("bart", "mbart", "bert2bert", "t5", "t5_gated")
CAUSAL = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
GENERATIVE = SEQ2SEQ + CAUSAL


def build(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    return BUILDERS[arch]().eval()


def batch(arch: str) -> dict:
    """Two examples, the second one padded, so masks matter."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, VOCAB, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    if arch in SEQ2SEQ:
        labels = torch.randint(4, VOCAB, (2, 5), generator=g)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if arch in CAUSAL:  # language modelling: the labels are the tokens, padding left out of the loss
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1])}


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(params=list(BUILDERS))
def arch(request):
    return request.param
