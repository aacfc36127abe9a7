"""Each insertion point against the paper's formula written out by hand on one layer (independent of the hooks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import unipeft

from conftest import build
from test_methods import perturb, sized

X = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(4))


def _attached(arch, method):
    reference, model = build(arch), build(arch)
    attachment = unipeft.attach(model, method, **sized(method, attn_bn=3, ffn_bn=5))
    perturb(attachment)
    return reference, model, attachment


def _hand_prefix_attention(attn, p_k, p_v, x, allowed):
    """Li & Liang's Eq. 5: head_i = Attn(x W_q, [P_k; x W_k], [P_v; x W_v]), then W_o."""
    heads, dh = attn.num_heads, attn.head_dim
    split = lambda t: t.unflatten(-1, (heads, dh)).transpose(-3, -2)  # noqa: E731  (..., T, d) → (..., H, T, dh)
    q = split(F.linear(x, attn.q_proj.weight, attn.q_proj.bias)) * dh ** -0.5
    k = torch.cat([split(p_k).expand(x.shape[0], -1, -1, -1), split(F.linear(x, attn.k_proj.weight, attn.k_proj.bias))], 2)
    v = torch.cat([split(p_v).expand(x.shape[0], -1, -1, -1), split(F.linear(x, attn.v_proj.weight, attn.v_proj.bias))], 2)
    allowed = torch.cat([torch.ones(*allowed.shape[:-1], p_k.shape[0], dtype=torch.bool), allowed], -1)
    logits = (q @ k.transpose(-1, -2)).masked_fill(~allowed, float("-inf"))
    heads_out = (logits.softmax(-1) @ v).transpose(1, 2).flatten(-2)
    return F.linear(heads_out, attn.out_proj.weight, attn.out_proj.bias)


def test_prefix_tuning_is_attention_over_prepended_keys_and_values():
    _, model, attachment = _attached("bart", "prefix")
    with torch.no_grad():
        for target, layers, causal in (("encoder", model.model.encoder.layers, False),
                                       ("decoder", model.model.decoder.layers, True)):
            attn = layers[1].self_attn
            p_k, p_v = attachment.container[0][target]["vectors"]()[1]
            padding = torch.ones(2, 1, 6, 6, dtype=torch.bool)
            padding[1, ..., 4:] = False
            allowed = torch.ones(6, 6, dtype=torch.bool).tril()[None, None].expand(2, 1, 6, 6) if causal else padding
            got = attn(X, attention_mask=None if causal else padding)[0]
            torch.testing.assert_close(got, _hand_prefix_attention(attn, p_k, p_v, X, allowed), rtol=1e-5, atol=1e-5)


def _hand_bart_layer(layer, x, ffn_extra):
    """BART's post-LN encoder layer: LN(h + FFN(h) + extra(h)), h = LN(x + SelfAttn(x))."""
    h = layer.self_attn_layer_norm(x + layer.self_attn(x, attention_mask=None)[0])
    ffn = F.linear(F.gelu(F.linear(h, layer.fc1.weight, layer.fc1.bias)), layer.fc2.weight, layer.fc2.bias)
    return layer.final_layer_norm(h + ffn + ffn_extra(h, ffn))


def test_scaled_parallel_adapter_reads_the_ffn_input_in_post_ln_bart():
    _, model, attachment = _attached("bart", "scaled_pa")
    layer, site = model.model.encoder.layers[0], attachment.container[0]["encoder"]["layers"][0]
    with torch.no_grad():
        expected = _hand_bart_layer(layer, X, lambda h, ffn: 4.0 * site.delta(h))
        torch.testing.assert_close(layer(X, attention_mask=None), expected, rtol=1e-5, atol=1e-5)


def test_sequential_adapter_reads_the_ffn_output():
    _, model, attachment = _attached("bart", "sa_ffn")
    layer, site = model.model.encoder.layers[0], attachment.container[0]["encoder"]["layers"][0]
    with torch.no_grad():
        expected = _hand_bart_layer(layer, X, lambda h, ffn: site.delta(ffn))
        torch.testing.assert_close(layer(X, attention_mask=None), expected, rtol=1e-5, atol=1e-5)


def _hand_mbart_sublayers(layer, x):
    """mBART's pre-LN encoder layer: h = x + SelfAttn(LN(x)), and the FFN's output FFN(LN(h))."""
    h = x + layer.self_attn(layer.self_attn_layer_norm(x), attention_mask=None)[0]
    ffn_in = layer.final_layer_norm(h)
    return h, F.linear(F.gelu(F.linear(ffn_in, layer.fc1.weight, layer.fc1.bias)), layer.fc2.weight, layer.fc2.bias)


def test_parallel_adapter_reads_the_un_normalised_residual_in_pre_ln_mbart():
    _, model, attachment = _attached("mbart", "scaled_pa")
    layer, site = model.model.encoder.layers[0], attachment.container[0]["encoder"]["layers"][0]
    with torch.no_grad():
        h, ffn = _hand_mbart_sublayers(layer, X)
        torch.testing.assert_close(layer(X, attention_mask=None), h + ffn + 4.0 * site.delta(h), rtol=1e-5, atol=1e-5)


def test_attention_parallel_adapter_is_added_before_the_output_projection():
    reference, model, attachment = _attached("bart", "pa_attn")
    attn, base_attn = model.model.encoder.layers[0].self_attn, reference.model.encoder.layers[0].self_attn
    site = attachment.container[0]["encoder"]["layers"][0]
    with torch.no_grad():
        expected = base_attn(X, attention_mask=None)[0] + F.linear(site.delta(X), attn.out_proj.weight)
        torch.testing.assert_close(attn(X, attention_mask=None)[0], expected, rtol=1e-5, atol=1e-5)


def _hand_multi_head_adapter(x, w_q, b_q, p_k, p_v, heads, scaling):
    """Per head i: ReLU(q_i P_k,i^T) P_v,i with q = (x W_q + b)·scaling, heads concatenated (before W_o)."""
    q = ((x @ w_q.T + b_q) * scaling).unflatten(-1, (heads, -1))  # (B, T, H, dh)
    p_k, p_v = p_k.unflatten(-1, (heads, -1)), p_v.unflatten(-1, (heads, -1))  # (l, H, dh)
    return torch.cat([torch.relu(q[:, :, i] @ p_k[:, i].T) @ p_v[:, i] for i in range(heads)], -1)


# The official code's forms: mBART's `cross_attn_relu` reuses `query_states` (x W_q + b)·d_h^-1/2 with no extra
# LayerNorm, as does its RoBERTa code; only its BART file puts an input LayerNorm first and drops the scaling.
MH_PA_FORMS = [("mh_pa", "mbart", True, False), ("mh_pa", "roberta", True, False), ("mh_pa", "bart", True, False),
               ("mh_pa_bart", "bart", False, True)]


@pytest.mark.parametrize("method,arch,scaled,layer_norm", MH_PA_FORMS)
def test_multi_head_parallel_adapter_reuses_the_attention_query_per_head(method, arch, scaled, layer_norm):
    reference, model, attachment = _attached(arch, method)
    path = {"roberta": lambda m: m.roberta.encoder.layer[1].attention}.get(arch, lambda m: m.model.encoder.layers[1])
    attn, base = path(model), path(reference)
    parts = attachment.container[0]["encoder"]
    norm = parts["layers"][1].delta.norm_in if layer_norm else None  # the scaled form runs inside the attention
    p_k, p_v = parts["vectors"]()[1]
    if arch == "roberta":
        q_proj, o_proj, run = attn.self.query, attn.output.dense, lambda a: a(X)[0]
    else:
        attn, base = attn.self_attn, base.self_attn
        q_proj, o_proj, run = attn.q_proj, attn.out_proj, lambda a: a(X, attention_mask=None)[0]
    scaling = 4 ** -0.5 if scaled else 1.0  # d_h = 16 / 4 heads
    with torch.no_grad():
        x = norm(X) if layer_norm else X
        delta = _hand_multi_head_adapter(x, q_proj.weight, q_proj.bias, p_k, p_v, 4, scaling)
        if arch == "roberta":  # BertSelfOutput: LN(W_o(heads + Δh) + b + x)
            expected = attn.output.LayerNorm(F.linear(base.self(X)[0] + delta, o_proj.weight, o_proj.bias) + X)
        else:
            expected = run(base) + F.linear(delta, o_proj.weight)
        torch.testing.assert_close(run(attn), expected, rtol=1e-5, atol=1e-5)


def test_multi_head_parallel_adapter_lora_init_starts_at_zero_and_trains_p_v():
    """init: lora zeroes the P_v half of the prefix MLP's last layer: Δh = 0, yet P_v gets a gradient."""
    model = build("bart")
    expected = model(**_ids()).logits
    attachment = unipeft.attach(model, "mh_pa_lora_init", attn_bn=3)
    vectors = attachment.container[0]["encoder"]["vectors"]
    assert torch.count_nonzero(vectors.compute()[:, 1]) == 0 and torch.count_nonzero(vectors.compute()[:, 0]) > 0
    out = model(**_ids())
    torch.testing.assert_close(out.logits, expected)
    out.logits.sum().backward()
    assert vectors.mlp[-1].weight.grad.abs().sum() > 0


def _ids():
    return {"input_ids": torch.tensor([[0, 5, 6, 7, 8, 2]]), "decoder_input_ids": torch.tensor([[2, 9, 10]])}


def test_ffn_parallel_adapter_has_no_input_layer_norm():
    """PA (ffn) as every official script trains it (`ffn_adapter_layernorm_option none`): LN(h + FFN(h) + Δ(h)),
    Δ(h) = ReLU(h W_down + b) W_up + b."""
    _, model, attachment = _attached("bart", "pa")
    layer, site = model.model.encoder.layers[0], attachment.container[0]["encoder"]["layers"][0]
    down, up = site.delta.down, site.delta.up
    assert site.delta.norm_in is None
    with torch.no_grad():
        expected = _hand_bart_layer(layer, X, lambda h, ffn: F.linear(F.relu(F.linear(h, down.weight, down.bias)),
                                                                      up.weight, up.bias))
        torch.testing.assert_close(layer(X, attention_mask=None), expected, rtol=1e-5, atol=1e-5)


def test_pfeiffer_adapter_on_post_ln_joins_the_residual_before_the_layer_norm():
    """The adapter authors' library and the official RoBERTa code: LN(x + h + f(LN(x + h))), the layer's own LN."""
    _, model, attachment = _attached("bart", "adapter_pfeiffer")
    layer, site = model.model.encoder.layers[0], attachment.container[0]["encoder"]["layers"][0]
    with torch.no_grad():
        h = layer.self_attn_layer_norm(X + layer.self_attn(X, attention_mask=None)[0])
        ffn = F.linear(F.gelu(F.linear(h, layer.fc1.weight, layer.fc1.bias)), layer.fc2.weight, layer.fc2.bias)
        norm = layer.final_layer_norm  # hooked: written out, not called
        layer_norm = lambda z: F.layer_norm(z, norm.normalized_shape, norm.weight, norm.bias, norm.eps)  # noqa: E731
        expected = layer_norm(h + ffn + site.delta(layer_norm(h + ffn)))
        torch.testing.assert_close(layer(X, attention_mask=None), expected, rtol=1e-5, atol=1e-5)


def test_pfeiffer_adapter_on_pre_ln_adds_to_the_residual_stream():
    """mBART (pre-LN, the official mBART code): y + f(y) with y the residual stream after the FFN."""
    _, model, attachment = _attached("mbart", "adapter_pfeiffer")
    layer, site = model.model.encoder.layers[0], attachment.container[0]["encoder"]["layers"][0]
    with torch.no_grad():
        y = sum(_hand_mbart_sublayers(layer, X))
        torch.testing.assert_close(layer(X, attention_mask=None), y + site.delta(y), rtol=1e-5, atol=1e-5)


def _prompted(arch):
    """A model with prompt tuning attached, and an identical one without (whose modules carry no hooks)."""
    reference, model = build(arch), build(arch)
    attachment = unipeft.attach(model, "prompt", attn_bn=3)
    perturb(attachment)
    return reference, model, attachment.container[0]["encoder"]["prompt"].vectors


IDS = torch.tensor([[5, 6, 7, 8, 9]])


def test_prompt_tuning_on_bart_prepends_vectors_that_have_no_position():
    """The official BART code: LN_emb([P; E(x)·scale + pos(0..T-1)]), the encoder's attention covering P too."""
    reference, model, prompt = _prompted("bart")
    encoder = reference.model.encoder
    with torch.no_grad():
        tokens = encoder.embed_tokens(IDS) + encoder.embed_positions(IDS)
        hidden = encoder.layernorm_embedding(torch.cat([prompt[None], tokens], 1))
        for layer in encoder.layers:
            hidden = layer(hidden, attention_mask=None)
        got = model.model.encoder(input_ids=IDS).last_hidden_state
        torch.testing.assert_close(got, hidden, rtol=1e-5, atol=1e-5)


def test_prompt_tuning_on_bert2bert_prepends_vectors_that_have_no_position():
    reference, model, prompt = _prompted("bert2bert")
    emb = reference.encoder.embeddings
    with torch.no_grad():
        tokens = (emb.word_embeddings(IDS) + emb.position_embeddings(torch.arange(5)[None])
                  + emb.token_type_embeddings(torch.zeros_like(IDS)))
        hidden = emb.LayerNorm(torch.cat([prompt[None], tokens], 1))
        for layer in reference.encoder.encoder.layer:
            out = layer(hidden)
            hidden = out[0] if isinstance(out, tuple) else out
        torch.testing.assert_close(model.encoder(input_ids=IDS).last_hidden_state, hidden, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,position,dropout", [("pa_attn", "attn", 0.3), ("mh_pa", "head", 0.3),
                                                     ("adapter", "attn", 0.3), ("pa", "ffn", 0.1),
                                                     ("sa_ffn", "ffn", 0.1)])
def test_delta_dropout_is_the_models_attention_or_hidden_dropout(method, position, dropout):
    """The official code: adapters inside the attention (and MH PA) drop with the attention dropout, FFN ones
    with the hidden dropout."""
    torch.manual_seed(0)
    from conftest import BUILDERS  # noqa: F401  (tiny configs live there; this one differs in its dropouts)
    from transformers import BartConfig, BartForConditionalGeneration
    model = BartForConditionalGeneration(BartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1,
                                                    encoder_attention_heads=4, decoder_attention_heads=4,
                                                    encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=0.1,
                                                    attention_dropout=0.3, max_position_embeddings=32))
    attachment = unipeft.attach(model, method, **sized(method, attn_bn=3, ffn_bn=5))
    index = [m.position for m in attachment.method.modifications].index(position)
    if position == "head":  # the multi-head PA runs inside the attention function, its dropout on the slot
        slot = model.model.encoder.layers[0].self_attn.__dict__["_unipeft_prefixes"][index]
        assert slot.dropout == dropout
        return
    site = attachment.container[index]["encoder"]["layers"][0]
    assert site.delta.dropout.p == dropout


def test_prefix_plus_lora_ffn_uses_the_papers_alpha():
    """Table 6's Prefix + LoRA (ffn) ran with r=102, lora_alpha=204: s = alpha / r = 2."""
    method = unipeft.preset("prefix_lora_ffn")
    assert [m.scale for m in method.modifications if m.position in ("fc1", "fc2")] == [204 / 102] * 2


@pytest.mark.parametrize("method,budget,key", [("pa", {"attn_bn": 8}, "attn_bn"), ("prefix", {"ffn_bn": 8}, "ffn_bn"),
                                               ("pa", {"scale": 4.0}, "scale"), ("full", {"attn_bn": 8}, "attn_bn")])
def test_a_budget_no_modification_uses_is_refused(method, budget, key):
    with pytest.raises(unipeft.ConfigError, match=rf"method '{method}'\.{key}: .* no modification"):
        unipeft.attach(build("bart"), method, **budget)


@pytest.mark.parametrize("method", unipeft.preset_names())
def test_a_general_budget_applies_to_the_sides_each_preset_has(method):
    budget = unipeft.preset(method).applicable_budget({"attn_bn": 8, "ffn_bn": 16, "scale": 2.0})
    unipeft.attach(build("bart"), method, **budget)  # never refused
    assert set(budget) == set(unipeft.preset(method).budget_keys())
