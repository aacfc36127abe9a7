"""One map per architecture family, naming its sublayers in the design space's vocabulary.

Paths are relative to `model.base_model`, so one map serves every task class of a family
(BartModel, BartForConditionalGeneration, BartForSequenceClassification, ...). Adding a family is
adding a map here; nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .design import ConfigError


@dataclass(frozen=True)
class AttentionMap:
    core: str  # the module that calls transformers' attention function (sees per-head q, k, v)
    q: str
    k: str
    v: str
    o: str  # the output projection W_o
    # GPT-2's c_attn: q, k and v name one projection whose output is [q; k; v], each a third of it. A Δh at q, k or
    # v then reads and writes its own third; the other two are left alone.
    fused: bool = False


@dataclass(frozen=True)
class ArchitectureMap:
    stacks: dict[str, str]  # "encoder"/"decoder" → the list of layers
    self_attention: AttentionMap  # paths below are relative to one layer
    cross_attention: AttentionMap | None
    fc1: str | tuple[str, ...]  # the paper's W_1; a gated FFN (SwiGLU, gated-GELU) has two: gate and up
    fc2: str
    ffn_input: str  # the module whose input is the FFN sublayer input x read by a parallel FFN adapter
    encoder: str  # the module that embeds input_ids (prompt tuning inserts its vectors there)
    word_embeddings: str  # relative to `encoder`
    decoder: str | None  # the module that takes encoder_attention_mask (prompt tuning extends it)
    pre_layer_norm: bool
    # Post-LN models: the layer's output LayerNorm after the FFN, LN(x + FFN(x)), that a Pfeiffer adapter reuses.
    output_norm: str | None = None
    # Encoder-decoder models: where prompt tuning's vectors join the input with no position of their own, as the
    # official code does (relative to `encoder`): the positional embedding module, and the module whose input is
    # token + position embeddings. None on both: the vectors are prepended to the embeddings (T5 has no absolute
    # positions).
    prompt_positions: str | None = None
    prompt_norm: str | None = None
    # The model's kind of normalisation, which an adapter's own `layer_norm: in/out` copies: "layer" (LayerNorm) or
    # "rms" (RMSNorm: Llama, Qwen, Mistral, T5), with the model's epsilon.
    norm: str = "layer"
    # Decoder-only models: one causal stack ("decoder"), whose input embeddings prompt tuning extends.
    causal: bool = False


_BART_ATTENTION = {
    kind: AttentionMap(core=kind, q=f"{kind}.q_proj", k=f"{kind}.k_proj", v=f"{kind}.v_proj", o=f"{kind}.out_proj")
    for kind in ("self_attn", "encoder_attn")
}
_BERT_ATTENTION = {
    kind: AttentionMap(core=f"{kind}.self", q=f"{kind}.self.query", k=f"{kind}.self.key", v=f"{kind}.self.value",
                       o=f"{kind}.output.dense")
    for kind in ("attention", "crossattention")
}

BART = ArchitectureMap(
    stacks={"encoder": "encoder.layers", "decoder": "decoder.layers"},
    self_attention=_BART_ATTENTION["self_attn"], cross_attention=_BART_ATTENTION["encoder_attn"],
    fc1="fc1", fc2="fc2", ffn_input="fc1",
    encoder="encoder", word_embeddings="embed_tokens", decoder="decoder", pre_layer_norm=False,
    output_norm="final_layer_norm", prompt_positions="embed_positions", prompt_norm="layernorm_embedding",
)
# mBART is pre-LN: the FFN consumes final_layer_norm(x), and the official code feeds the parallel
# adapter the un-normalised residual stream x, i.e. the input of final_layer_norm.
MBART = ArchitectureMap(**{**BART.__dict__, "ffn_input": "final_layer_norm", "pre_layer_norm": True,
                           "output_norm": None})

BERT = ArchitectureMap(
    stacks={"encoder": "encoder.layer"},
    self_attention=_BERT_ATTENTION["attention"], cross_attention=None,
    fc1="intermediate.dense", fc2="output.dense", ffn_input="intermediate.dense",
    encoder="", word_embeddings="embeddings.word_embeddings", decoder=None, pre_layer_norm=False,
    output_norm="output.LayerNorm",
)
# transformers' EncoderDecoderModel with BERT-family encoder and decoder (the offline seq2seq backbone).
BERT2BERT = ArchitectureMap(
    **{**BERT.__dict__, "stacks": {"encoder": "encoder.encoder.layer", "decoder": "decoder.bert.encoder.layer"},
       "cross_attention": _BERT_ATTENTION["crossattention"], "encoder": "encoder", "decoder": "decoder",
       "prompt_positions": "embeddings.position_embeddings", "prompt_norm": "embeddings.LayerNorm"},
)

# T5 is pre-LN like mBART; its FFN is the last entry of each block (index 1 in the encoder, 2 in the decoder).
_T5_ATTENTION = {
    kind: AttentionMap(core=f"layer.{i}.{kind}", q=f"layer.{i}.{kind}.q", k=f"layer.{i}.{kind}.k",
                       v=f"layer.{i}.{kind}.v", o=f"layer.{i}.{kind}.o")
    for i, kind in ((0, "SelfAttention"), (1, "EncDecAttention"))
}
T5 = ArchitectureMap(
    stacks={"encoder": "encoder.block", "decoder": "decoder.block"},
    self_attention=_T5_ATTENTION["SelfAttention"], cross_attention=_T5_ATTENTION["EncDecAttention"],
    fc1="layer.-1.DenseReluDense.wi", fc2="layer.-1.DenseReluDense.wo", ffn_input="layer.-1.layer_norm",
    encoder="encoder", word_embeddings="embed_tokens", decoder="decoder", pre_layer_norm=True, norm="rms",
)

# T5 v1.1 and flan-T5 (feed_forward_proj gated-gelu): W_1 is two matrices, wi_0 (through the activation, the gate)
# and wi_1 (linear, the up projection), multiplied elementwise before wo.
T5_GATED = ArchitectureMap(**{**T5.__dict__, "fc1": ("layer.-1.DenseReluDense.wi_0", "layer.-1.DenseReluDense.wi_1")})

# Llama, Mistral, Qwen2 and Qwen3 share one layout: pre-RMSNorm layers, rotary positions inside the attention,
# grouped-query attention (k_proj, v_proj may have fewer heads than q_proj), SwiGLU FFN down(silu(gate(x))·up(x)).
# The parallel FFN adapter reads the residual stream, the input of post_attention_layernorm (the mBART rule).
LLAMA = ArchitectureMap(
    stacks={"decoder": "layers"},
    self_attention=AttentionMap(core="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                                o="self_attn.o_proj"),
    cross_attention=None, fc1=("mlp.gate_proj", "mlp.up_proj"), fc2="mlp.down_proj",
    ffn_input="post_attention_layernorm", encoder="", word_embeddings="embed_tokens", decoder=None,
    pre_layer_norm=True, norm="rms", causal=True,
)
# GPT-2: pre-LN, learned absolute positions, q/k/v fused in one Conv1D (c_attn), FFN c_fc → GELU → c_proj.
GPT2 = ArchitectureMap(
    stacks={"decoder": "h"},
    self_attention=AttentionMap(core="attn", q="attn.c_attn", k="attn.c_attn", v="attn.c_attn", o="attn.c_proj",
                                fused=True),
    cross_attention=None, fc1="mlp.c_fc", fc2="mlp.c_proj", ffn_input="ln_2", encoder="", word_embeddings="wte",
    decoder=None, pre_layer_norm=True, causal=True,
)

MAPS = {"bart": BART, "mbart": MBART, "bert": BERT, "roberta": BERT, "encoder-decoder": BERT2BERT, "t5": T5,
        "llama": LLAMA, "mistral": LLAMA, "qwen2": LLAMA, "qwen3": LLAMA, "gpt2": GPT2}
GATED = {"t5": T5_GATED}  # the map of a family's gated-FFN variant (config.is_gated_act)


def architecture_of(model: nn.Module) -> ArchitectureMap:
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in MAPS:
        raise ConfigError(f"model: architecture {model_type!r} has no map; mapped: {', '.join(MAPS)}")
    if model_type == "encoder-decoder":
        for side in ("encoder", "decoder"):
            inner = getattr(config, side).model_type
            if inner not in ("bert", "roberta"):
                raise ConfigError(f"model: EncoderDecoderModel with a {inner!r} {side} has no map; "
                                  "mapped: BERT/RoBERTa on both sides")
    if getattr(config, "is_gated_act", False) and model_type in GATED:
        return GATED[model_type]
    return MAPS[model_type]


def paths(value: str | tuple[str, ...]) -> tuple[str, ...]:
    """A map entry as a tuple of paths: one module, or several that share one role (a gated FFN's W_1)."""
    return (value,) if isinstance(value, str) else value


def features(module: nn.Module) -> tuple[int, int]:
    """(input, output) width of a projection: nn.Linear, or GPT-2's Conv1D whose weight is stored (in, out)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return module.weight.shape[0], module.weight.shape[1]
    raise ConfigError(f"model: {type(module).__name__} is not a projection unipeft knows (nn.Linear or Conv1D)")


def get(root: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path; a negative index counts from the end of a ModuleList."""
    module = root
    for part in path.split(".") if path else ():
        try:
            module = module[int(part)] if part.lstrip("-").isdigit() else getattr(module, part)
        except (AttributeError, IndexError, TypeError):
            raise ConfigError(f"model: {type(root).__name__} has no submodule {path!r}; its architecture map "
                              "does not fit this model") from None
    return module
