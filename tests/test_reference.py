"""Each insertion point against the paper's formula written out by hand on one layer (independent of the hooks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import unipeft

from conftest import build
from test_methods import perturb

X = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(4))


def _attached(arch, method):
    reference, model = build(arch), build(arch)
    attachment = unipeft.attach(model, method, attn_bn=3, ffn_bn=5)
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


def test_parallel_adapter_reads_the_un_normalised_residual_in_pre_ln_mbart():
    _, model, attachment = _attached("mbart", "scaled_pa")
    layer, site = model.model.encoder.layers[0], attachment.container[0]["encoder"]["layers"][0]
    with torch.no_grad():
        h = X + layer.self_attn(layer.self_attn_layer_norm(X), attention_mask=None)[0]
        ffn_in = layer.final_layer_norm(h)
        ffn = F.linear(F.gelu(F.linear(ffn_in, layer.fc1.weight, layer.fc1.bias)), layer.fc2.weight, layer.fc2.bias)
        torch.testing.assert_close(layer(X, attention_mask=None), h + ffn + 4.0 * site.delta(h), rtol=1e-5, atol=1e-5)


def test_attention_parallel_adapter_is_added_before_the_output_projection():
    reference, model, attachment = _attached("bart", "pa_attn")
    attn, base_attn = model.model.encoder.layers[0].self_attn, reference.model.encoder.layers[0].self_attn
    site = attachment.container[0]["encoder"]["layers"][0]
    with torch.no_grad():
        expected = base_attn(X, attention_mask=None)[0] + F.linear(site.delta(X), attn.out_proj.weight)
        torch.testing.assert_close(attn(X, attention_mask=None)[0], expected, rtol=1e-5, atol=1e-5)


def test_multi_head_parallel_adapter_reuses_the_frozen_query_per_head():
    reference, model, attachment = _attached("bart", "mh_pa")
    attn, base_attn = model.model.encoder.layers[1].self_attn, reference.model.encoder.layers[1].self_attn
    parts = attachment.container[0]["encoder"]
    norm = parts["layers"][1].delta.norm_in
    p_k, p_v = (p.unflatten(-1, (4, 4)) for p in parts["vectors"]()[1])  # (l, H, dh)
    with torch.no_grad():
        q = F.linear(norm(X), attn.q_proj.weight, attn.q_proj.bias).unflatten(-1, (4, 4))  # (B, T, H, dh)
        per_head = [torch.relu(q[:, :, i] @ p_k[:, i].T) @ p_v[:, i] for i in range(4)]
        expected = base_attn(X, attention_mask=None)[0] + F.linear(torch.cat(per_head, -1), attn.out_proj.weight)
        torch.testing.assert_close(attn(X, attention_mask=None)[0], expected, rtol=1e-5, atol=1e-5)
