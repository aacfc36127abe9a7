"""Each new insertion point of the decoder-only and gated-FFN maps against its formula written out by hand on one
layer (independent of the hooks): grouped-query prefixes and MH PA after rotary positions, prompt tuning before the
first token, the gated FFN's W_1, GPT-2's fused c_attn, RMSNorm adapters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import unipeft

from conftest import batch, build, logits
from test_methods import perturb, sized

X = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(4))
POSITIONS = torch.arange(6)[None]


def _attached(arch, method, **budget):
    reference, model = build(arch), build(arch)
    attachment = unipeft.attach(model, method, **sized(method, **({"attn_bn": 3, "ffn_bn": 5} | budget)))
    perturb(attachment)
    return reference, model, attachment


def _rotary(model):
    return model.model.rotary_emb(X, position_ids=POSITIONS)


def _heads(t, head_dim):  # (B, T, n·dh) → (B, n, T, dh)
    return t.unflatten(-1, (-1, head_dim)).transpose(1, 2)


def _query_key_value(attn, x, rotary):
    """The attention's own q, k, v: projections, Qwen3's q/k norms, rotary positions."""
    dh = attn.head_dim
    q, k, v = (_heads(F.linear(x, p.weight, p.bias), dh) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rotary_pos_emb(q, k, *rotary)
    return q, k, v


def _per_query_head(t, heads):  # key/value head j serves query heads j·g … (j+1)·g − 1
    return t.repeat_interleave(heads // t.shape[-3], dim=-3)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_prefix_joins_each_key_value_head_unrotated_under_grouped_query_attention(arch):
    """head_i = softmax(q_i [P_k,g(i); k_g(i)]^T / sqrt(d_h)) [P_v,g(i); v_g(i)], causal over the tokens, the l prefix
    vectors visible to every query, no rotation on them; 2·l·n_kv·d_h parameters a layer."""
    _, model, attachment = _attached(arch, "prefix_direct")
    attn, rotary = model.model.layers[1].self_attn, _rotary(model)
    p_k, p_v = (_heads(p[None], attn.head_dim) for p in attachment.container[0]["decoder"]["vectors"]()[1])
    with torch.no_grad():
        q, k, v = _query_key_value(attn, X, rotary)
        heads = q.shape[1]
        k = _per_query_head(torch.cat([p_k.expand(2, -1, -1, -1), k], 2), heads)
        v = _per_query_head(torch.cat([p_v.expand(2, -1, -1, -1), v], 2), heads)
        allowed = torch.cat([torch.ones(6, 3, dtype=torch.bool), torch.ones(6, 6, dtype=torch.bool).tril()], 1)
        scores = (q @ k.transpose(-1, -2) * attn.head_dim ** -0.5).masked_fill(~allowed, float("-inf"))
        expected = F.linear((scores.softmax(-1) @ v).transpose(1, 2).flatten(-2), attn.o_proj.weight,
                            attn.o_proj.bias)
        got = attn(X, position_embeddings=rotary, attention_mask=None)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    n_kv, layers = model.config.num_key_value_heads, model.config.num_hidden_layers
    assert attachment.counts().paper == 2 * 3 * n_kv * attn.head_dim * layers


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_multi_head_adapter_uses_the_attention_query_after_rotary_and_q_norm(arch):
    """MH PA per query head i: ReLU(q_i P_k,g(i)^T) P_v,g(i), q_i exactly as the attention computes it (q-norm,
    rotary positions) scaled by 1/sqrt(d_h), added before W_o."""
    reference, model, attachment = _attached(arch, "mh_pa")
    attn, base, rotary = model.model.layers[1].self_attn, reference.model.layers[1].self_attn, _rotary(model)
    p_k, p_v = (_heads(p[None], attn.head_dim) for p in attachment.container[0]["decoder"]["vectors"]()[1])
    with torch.no_grad():
        q, _, _ = _query_key_value(attn, X, rotary)
        heads = q.shape[1]
        hidden = torch.relu(q * attn.head_dim ** -0.5 @ _per_query_head(p_k, heads).transpose(-1, -2))
        delta = (hidden @ _per_query_head(p_v, heads)).transpose(1, 2).flatten(-2)
        expected = base(X, position_embeddings=rotary, attention_mask=None)[0] + F.linear(delta, attn.o_proj.weight)
        got = attn(X, position_embeddings=rotary, attention_mask=None)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _llama_layer(layer, x, rotary, ffn_extra=lambda h, normed, ffn: 0):
    """A pre-RMSNorm Llama layer: h = x + Attn(LN1(x)); h + down(silu(gate(LN2(h))) · up(LN2(h))) + extra."""
    h = x + layer.self_attn(layer.input_layernorm(x), position_embeddings=rotary, attention_mask=None)[0]
    normed = layer.post_attention_layernorm(h)
    mlp = layer.mlp
    ffn = F.linear(F.silu(F.linear(normed, mlp.gate_proj.weight)) * F.linear(normed, mlp.up_proj.weight),
                   mlp.down_proj.weight)
    return h + ffn + ffn_extra(h, normed, ffn)


def test_scaled_parallel_adapter_reads_the_residual_stream_of_a_gated_ffn():
    """PA (ffn) on a pre-norm model, as the mBART rule: Δh from the residual stream h (the input of the pre-FFN
    RMSNorm), added to the output of down_proj."""
    _, model, attachment = _attached("llama", "scaled_pa")
    layer, site = model.model.layers[0], attachment.container[0]["decoder"]["layers"][0]
    rotary = _rotary(model)
    with torch.no_grad():
        expected = _llama_layer(layer, X, rotary, lambda h, normed, ffn: 4.0 * site.delta(h))
        torch.testing.assert_close(layer(X, position_embeddings=rotary, attention_mask=None), expected,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,gate,up", [("llama", "gate_proj", "up_proj"), ("t5_gated", "wi_0", "wi_1")])
def test_ffn_lora_adapts_gate_and_up_as_the_papers_w1(arch, gate, up):
    """fc1 on a gated FFN is W_1 = gate and up, one LoRA each of rank r; fc2 is down (wo): 3·r·(d + d_ff) a layer."""
    _, model, attachment = _attached(arch, "lora_ffn")
    mlp = model.model.layers[0].mlp if arch == "llama" else model.encoder.block[0].layer[-1].DenseReluDense
    sites = attachment.container[0]["decoder" if arch == "llama" else "encoder"]["layers"][0]
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        for name in (gate, up):
            site, linear = sites[name], getattr(mlp, name)
            expected = F.linear(x, linear.weight) + 4.0 * (x @ site.delta.down.weight.T @ site.delta.up.weight.T)
            torch.testing.assert_close(linear(x), expected)
    d, d_ff, r = 16, 64, 5
    stacks = 1 if arch == "llama" else 2
    assert attachment.counts().paper == stacks * 2 * 3 * r * (d + d_ff)


def test_gpt2_lora_adapts_the_q_and_v_thirds_of_c_attn_and_nothing_of_k():
    _, model, attachment = _attached("gpt2", "lora")
    attn = model.transformer.h[0].attn
    q_site, v_site = (attachment.container[i]["decoder"]["layers"][0] for i in (0, 1))
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        plain = x @ attn.c_attn.weight + attn.c_attn.bias  # Conv1D: weight stored (in, out)
        lora = lambda site: 2.0 * (x @ site.delta.down.weight.T @ site.delta.up.weight.T)  # noqa: E731
        expected = torch.cat([plain[..., :16] + lora(q_site), plain[..., 16:32], plain[..., 32:] + lora(v_site)], -1)
        torch.testing.assert_close(attn.c_attn(x), expected)
    assert attachment.counts().paper == 2 * 2 * 3 * (16 + 16)  # q and v, 2 layers, r = 3


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen3"])
def test_lora_merges_into_fused_gated_and_grouped_projections(arch):
    for method in ("lora", "lora_ffn"):
        model, attachment = build(arch), None
        attachment = unipeft.attach(model, method, **sized(method))
        perturb(attachment)
        expected = logits(model, batch(arch))
        attachment.merge()
        torch.testing.assert_close(logits(model, batch(arch)), expected, rtol=1e-5, atol=1e-5)
        attachment.unmerge()
        torch.testing.assert_close(logits(model, batch(arch)), expected, rtol=1e-5, atol=1e-5)


def test_pfeiffer_adapter_with_an_input_norm_uses_the_models_rmsnorm():
    """On a pre-RMSNorm model the adapter's own `layer_norm: in` is an RMSNorm with the model's epsilon:
    y + f(RMSNorm(y)) with y the layer's output (the residual stream)."""
    model = build("llama")
    attachment = unipeft.attach(model, {"name": "pfeiffer-in", "modifications": [
        {"position": "layer", "insertion": "sequential", "function": "relu", "size": 5, "layer_norm": "in"}]})
    perturb(attachment)
    layer, site = model.model.layers[0], attachment.container[0]["decoder"]["layers"][0]
    norm = site.delta.norm_in
    assert isinstance(norm, nn.RMSNorm) and norm.eps == model.config.rms_norm_eps
    rotary = _rotary(model)
    with torch.no_grad():
        y = _llama_layer(layer, X, rotary)
        down, up = site.delta.down, site.delta.up
        hand_norm = norm.weight * y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + norm.eps)
        expected = y + F.linear(torch.relu(F.linear(hand_norm, down.weight, down.bias)), up.weight, up.bias)
        torch.testing.assert_close(layer(X, position_embeddings=rotary, attention_mask=None), expected,
                                   rtol=1e-5, atol=1e-5)


def test_post_ln_models_keep_layernorm_adapters():
    _, _, attachment = _attached("gpt2", "adapter")
    assert isinstance(attachment.container[0]["decoder"]["layers"][0].delta.norm_in, nn.LayerNorm)


@pytest.mark.parametrize("bos", [True, False])
def test_prompt_goes_before_the_first_token_after_bos_and_takes_positions(bos):
    """[BOS] P x_1 … x_n (or P x_1 … x_n without BOS), left padding before it all, positions counted from the first
    real token; the base model's output drops the l prompt positions again."""
    reference, model = build("llama"), build("llama")
    attachment = unipeft.attach(model, "prompt", attn_bn=3)
    perturb(attachment)
    prompt = attachment.container[0]["decoder"]["prompt"].vectors
    tokens = torch.tensor([[1, 7, 8, 9, 10]] if bos else [[7, 8, 9, 10, 11]])
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), tokens], 1)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        split = 1 if bos else 0
        embeds = reference.model.embed_tokens(tokens)
        embeds = torch.cat([embeds[:, :split], prompt[None], embeds[:, split:]], 1)
        hidden = reference.model(inputs_embeds=embeds).last_hidden_state
        expected = torch.cat([hidden[:, :split], hidden[:, split + 3:]], 1)
        got = model.model(input_ids=padded, attention_mask=mask,
                          position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).last_hidden_state[:, 2:]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.model(input_ids=tokens).last_hidden_state, expected, rtol=1e-5, atol=1e-5)


def test_prompt_on_a_decoder_only_classifier_reads_the_last_real_token():
    """LlamaForSequenceClassification picks the last non-pad token of input_ids: the prompt must not move it."""
    model = build("llama_classifier")
    unipeft.attach(model, "prompt", attn_bn=3)
    ids = torch.tensor([[5, 6, 7, 8, 0, 0], [5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        together = model(input_ids=ids, attention_mask=(ids != 0).long()).logits
        alone = model(input_ids=ids[:1, :4]).logits
    torch.testing.assert_close(together[0], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,budget", [("prompt", {"attn_bn": 64}), ("prompt", {"attn_bn": 100})])
def test_a_prompt_longer_than_the_models_positions_is_refused(method, budget):
    with pytest.raises(unipeft.ConfigError, match=r"size: \d+ prompt vectors leave no room .* 64 positions"):
        unipeft.attach(build("gpt2"), method, **budget)


def test_inputs_that_overflow_the_positions_with_the_prompt_are_refused():
    model = build("gpt2")
    unipeft.attach(model, "prompt", attn_bn=10)
    with pytest.raises(unipeft.ConfigError, match="60 tokens \\+ 10 prompt vectors exceed the model's 64 positions"):
        model(input_ids=torch.randint(3, 60, (1, 60)))


@pytest.mark.parametrize("arch,target", [("llama", "encoder"), ("gpt2", "cross"), ("qwen3", "cross")])
def test_a_target_the_decoder_only_model_lacks_is_refused(arch, target):
    method = {"name": "lora-x", "modifications": [{"position": "q", "function": "identity", "size": 2,
                                                   "targets": [target]}]}
    with pytest.raises(unipeft.ConfigError, match=rf"has no '{target}' sublayer .* \(it has: decoder\)"):
        unipeft.attach(build(arch), method)


def test_an_unmapped_architecture_names_the_mapped_ones():
    from transformers import OPTConfig, OPTForCausalLM
    model = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                                     num_attention_heads=4, word_embed_proj_dim=16, max_position_embeddings=32))
    with pytest.raises(unipeft.ConfigError, match="'opt' has no map; mapped: .*llama, mistral, qwen2, qwen3, gpt2"):
        unipeft.attach(model, "lora")


def test_shift_positions_is_for_prefixes_on_decoder_only_models():
    shifted = {"name": "p", "modifications": [{"position": "head", "size": 3, "shift_positions": True}]}
    with pytest.raises(unipeft.ConfigError, match="shift_positions applies to decoder-only models"):
        unipeft.attach(build("bart"), shifted)
    with pytest.raises(unipeft.ConfigError, match="shift_positions: shifts the positions .* softmax"):
        unipeft.Method.from_dict({"name": "x", "modifications": [
            {"position": "ffn", "size": 3, "shift_positions": True}]})


def test_shifted_prefix_moves_the_tokens_by_l_positions():
    """shift_positions: the tokens' positions start at l, so the output equals the unshifted prefix run with
    position ids l … l+n−1 given explicitly (rotary attention depends on the positions relative to the unrotated
    prefix keys)."""
    outputs = {}
    for shift in (False, True):
        model = build("llama")
        torch.manual_seed(7)
        unipeft.attach(model, {"name": "p", "modifications": [
            {"position": "head", "size": 3, "reparam": "direct", "shift_positions": shift}]})
        ids = batch("llama")["input_ids"][:1]
        with torch.no_grad():
            outputs[shift] = model(input_ids=ids).logits
            if not shift:
                outputs["explicit"] = model(input_ids=ids, position_ids=torch.arange(3, 3 + ids.shape[1])[None]).logits
    torch.testing.assert_close(outputs[True], outputs["explicit"], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outputs[True], outputs[False])


@pytest.mark.parametrize("budget,key", [({"attn_bn": 10**9}, "size"), ({"ffn_bn": 10**12}, "size")])
def test_a_budget_the_architecture_cannot_hold_is_refused_before_allocating(budget, key):
    method = "mam"
    with pytest.raises(unipeft.ConfigError, match=rf"modifications\[\d\]\.{key}: .* the architecture cannot hold"):
        unipeft.attach(build("llama"), method, **budget)
