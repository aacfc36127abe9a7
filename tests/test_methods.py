"""The method × architecture table: mathematical properties of every preset on every mapped architecture."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import unipeft
from unipeft.functions import PrefixVectors

from conftest import BUILDERS, CAUSAL, GENERATIVE, SEQ2SEQ, batch, build, logits

BUDGET = {"attn_bn": 4, "ffn_bn": 8}  # small sizes keep every case fast; counts are checked on real configs too
NO_BIASES = ("t5", "t5_gated", "llama", "mistral", "qwen3", "llama_classifier")  # see test_bitfit_on_a_model_...
CASES = [(method, arch) for method in unipeft.preset_names() for arch in BUILDERS
         if not (method == "bitfit" and arch in NO_BIASES)]
# Methods whose Δh is zero at initialisation (LoRA init: W_up = 0, or P_v = 0), so the model's output must not change.
ZERO_INIT = ("lora", "lora_ffn", "scaled_pa", "scaled_pa_learned", "mh_pa_lora_init")
MERGEABLE = ("lora", "lora_ffn", "prefix_lora_ffn")


def sized(method, **budget):
    """BUDGET, or `budget`, restricted to the keys the method uses (the library refuses the others)."""
    return unipeft.preset(method).applicable_budget({**BUDGET, **budget})


def attach(method, arch, **kwargs):
    model = build(arch)
    return model, unipeft.attach(model, method, **sized(method, **kwargs))


def perturb(attachment, seed=3, own_only=False):
    """Move trainable tensors off their initial values, as training would (zero-init Δh become non-zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in attachment.model.named_parameters():
            if p.requires_grad and (name.startswith("unipeft.") or not own_only):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("method,arch", CASES)
def test_gradients_reach_only_trainable_parameters(method, arch):
    model, attachment = attach(method, arch)
    model.train()
    model(**batch(arch)).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad <= trainable
    own = {n for n in trainable if n.startswith("unipeft.")}
    assert own <= with_grad, f"modification parameters without gradient: {sorted(own - with_grad)[:3]}"
    assert with_grad, "nothing received a gradient"
    for name, p in attachment.head_parameters().items():
        assert p.requires_grad, f"task head {name} must train"


@pytest.mark.parametrize("method,arch", CASES)
def test_save_load_round_trip_reproduces_outputs(method, arch, tmp_path):
    model, attachment = attach(method, arch)
    perturb(attachment)
    expected = logits(model, batch(arch))
    attachment.save(tmp_path)
    fresh = build(arch)
    loaded = unipeft.load(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh, batch(arch)), expected, rtol=1e-5, atol=1e-5)
    assert loaded.counts().stored == attachment.counts().stored


@pytest.mark.parametrize("method,arch", CASES)
def test_detach_restores_the_base_model(method, arch):
    model = build(arch)
    expected = logits(model, batch(arch))
    attachment = unipeft.attach(model, method, **sized(method))
    perturb(attachment, own_only=True)
    if attachment.container:  # full and bitfit own no modules: their change is the base weights themselves
        attachment.detach()
        torch.testing.assert_close(logits(model, batch(arch)), expected)
        assert "unipeft" not in dict(model.named_children())


@pytest.mark.parametrize("method,arch", CASES)
def test_every_attached_modification_reaches_the_output(method, arch):
    """No dead hook: perturbing one modification at one target (encoder, decoder, cross) changes the logits."""
    model, attachment = attach(method, arch)
    perturb(attachment, own_only=True)
    reference = logits(model, batch(arch))
    for index, per_target in enumerate(attachment.container):
        for target, parts in per_target.items():
            saved = copy.deepcopy(parts.state_dict())
            with torch.no_grad():
                for p in parts.parameters():
                    p.add_(torch.randn_like(p))
            assert not torch.allclose(logits(model, batch(arch)), reference), f"modification {index} at {target}"
            parts.load_state_dict(saved)


def prompts(arch):
    """Generation inputs: two sources, the second one padded (left-padded on a decoder-only model)."""
    inputs = batch(arch)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    if arch in CAUSAL:
        ids, mask = ids.clone(), mask.flip(-1)
        ids[1] = torch.cat([torch.zeros(3, dtype=ids.dtype), ids[1, :6]])  # pad id 0 first, then the 6 tokens
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("method,arch", [(m, a) for m, a in CASES if a in GENERATIVE])
def test_beam_search_with_cache_equals_without(method, arch):
    model, attachment = attach(method, arch)
    perturb(attachment)
    kwargs = dict(**prompts(arch), num_beams=3, max_new_tokens=6, min_new_tokens=6)
    assert torch.equal(model.generate(**kwargs, use_cache=True), model.generate(**kwargs, use_cache=False))


@pytest.mark.parametrize("method,arch", [(m, a) for m, a in CASES if a in GENERATIVE])
def test_padded_batched_generation_equals_one_by_one(method, arch):
    model, attachment = attach(method, arch)
    perturb(attachment)
    inputs = prompts(arch)
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, output_scores=True,
                  return_dict_in_generate=True)
    together = model.generate(**inputs, **kwargs)
    for row in range(2):
        keep = inputs["attention_mask"][row].bool()
        alone = model.generate(input_ids=inputs["input_ids"][row, keep][None],
                               attention_mask=inputs["attention_mask"][row, keep][None], **kwargs)
        new = alone.sequences.shape[1] - 5
        assert torch.equal(together.sequences[row, -5:], alone.sequences[0, new:])
        for step_together, step_alone in zip(together.scores, alone.scores):
            torch.testing.assert_close(step_together[row], step_alone[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ZERO_INIT)
def test_zero_initialised_methods_leave_outputs_unchanged(method, arch):
    model = build(arch)
    expected = logits(model, batch(arch))
    unipeft.attach(model, method, **sized(method))
    torch.testing.assert_close(logits(model, batch(arch)), expected)


def test_non_zero_init_methods_do_change_outputs(arch):
    model = build(arch)
    expected = logits(model, batch(arch))
    unipeft.attach(model, "adapter", **BUDGET)
    assert not torch.allclose(logits(model, batch(arch)), expected)


@pytest.mark.parametrize("reparam", ["mlp", "direct"])
def test_prefix_concat_equals_gated_parallel_adapter_form(arch, reparam):
    """Eq. 7-9: attention over [P_k; K] equals (1-λ) Attn(q, K, V) + λ Attn(q, P_k, P_v)."""
    outputs = {}
    for form in ("concat", "gated"):
        method = unipeft.Method.from_dict({"name": f"prefix-{form}", "modifications": [
            {"position": "head", "function": "softmax", "composition": "gate", "size": 5, "form": form,
             "reparam": reparam, "mid_dim": 12}]})
        model = build(arch)
        torch.manual_seed(7)
        attachment = unipeft.attach(model, method)
        outputs[form] = logits(model, batch(arch))
        if arch in GENERATIVE:
            outputs[form + "-beams"] = model.generate(**prompts(arch), num_beams=3, max_new_tokens=6)
        del attachment
    torch.testing.assert_close(outputs["concat"], outputs["gated"], rtol=1e-5, atol=1e-5)
    if arch in GENERATIVE:
        assert torch.equal(outputs["concat-beams"], outputs["gated-beams"])


def test_removing_the_gate_changes_prefix_tuning(arch):
    """The -gating ablation (h + Δh) is a different function from prefix tuning with the same vectors."""
    outputs = []
    for composition in ("gate", "add"):
        model = build(arch)
        torch.manual_seed(7)
        unipeft.attach(model, {"name": composition, "modifications": [
            {"position": "head", "function": "softmax", "composition": composition, "size": 5, "reparam": "direct"}]})
        outputs.append(logits(model, batch(arch)))
    assert not torch.allclose(*outputs)


def test_lora_equals_a_parallel_linear_adapter():
    """Eq. 6: a LoRA'd projection computes x W + s · x W_down W_up, with W_down, W_up its two factors."""
    model, attachment = attach("lora_ffn", "bart")
    perturb(attachment)
    layer = model.model.encoder.layers[0]
    site = attachment.container[0]["encoder"]["layers"][0]
    x = torch.randn(3, 5, layer.fc1.in_features)
    with torch.no_grad():
        expected = torch.nn.functional.linear(x, layer.fc1.weight, layer.fc1.bias) \
            + site.compose.scale * (x @ site.delta.down.weight.T @ site.delta.up.weight.T)
        torch.testing.assert_close(layer.fc1(x), expected)


@pytest.mark.parametrize("method", MERGEABLE)
def test_merged_equals_unmerged(method, arch):
    model, attachment = attach(method, arch)
    perturb(attachment)
    weights = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    expected = logits(model, batch(arch))
    attachment.merge()
    torch.testing.assert_close(logits(model, batch(arch)), expected, rtol=1e-5, atol=1e-5)
    changed = [n for n, p in model.named_parameters() if n in weights and not torch.equal(p, weights[n])]
    assert changed, "merge changed no base weight"
    attachment.unmerge()
    for name, p in model.named_parameters():
        if name in weights:
            torch.testing.assert_close(p, weights[name])
    torch.testing.assert_close(logits(model, batch(arch)), expected, rtol=1e-5, atol=1e-5)


def test_merge_refuses_methods_without_a_linear_delta():
    _, attachment = attach("mam", "bart")
    with pytest.raises(unipeft.ConfigError, match="nothing to merge"):
        attachment.merge()


@pytest.mark.parametrize("method", ["prefix", "mh_pa", "mam"])
def test_generation_computes_prefixes_once_per_call(method, monkeypatch):
    model, attachment = attach(method, "bart")
    calls = []
    original = PrefixVectors.compute
    monkeypatch.setattr(PrefixVectors, "compute", lambda self: calls.append(self) or original(self))
    inputs = batch("bart")
    model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], num_beams=4,
                   max_new_tokens=8, min_new_tokens=8)
    vectors = [m for m in attachment.container.modules() if isinstance(m, PrefixVectors)]
    assert len(calls) == len(vectors) == 3  # encoder self, decoder self, cross: once each for 8 steps × 4 beams


def test_training_recomputes_prefixes_once_per_step(monkeypatch):
    model, attachment = attach("prefix", "bart")  # eval mode: no dropout noise, gradients still on
    calls = []
    original = PrefixVectors.compute
    monkeypatch.setattr(PrefixVectors, "compute", lambda self: calls.append(self) or original(self))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        loss = model(**batch("bart")).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert len(calls) == 4 * 3
    assert losses[-1] < losses[0]


def test_prompt_keeps_the_classification_token_first():
    model, attachment = attach("prompt", "roberta")
    seen = {}
    model.roberta.encoder.register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(states=args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    inputs = batch("roberta")
    model(**inputs)
    assert seen["states"].shape[1] == inputs["input_ids"].shape[1] + 4


def test_attaching_is_deterministic_under_a_seed():
    states = []
    for _ in range(2):
        model = build("bart")
        torch.manual_seed(11)
        states.append(unipeft.attach(model, "mam", **BUDGET).state_dict(fold=False))
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key])


def test_custom_combination_is_configuration_only():
    """Table 6's 'Prefix (attn, l=30) + LoRA (ffn, r=102)', written as data instead of code."""
    method = unipeft.Method.from_dict({"name": "table6", "modifications": [
        {"position": "head", "size": 3},
        {"position": "fc1", "size": 2, "composition": "scale", "scale": 4.0},
        {"position": "fc2", "size": 2, "composition": "scale", "scale": 4.0}]})
    model = build("bart")
    counts = unipeft.attach(model, method).counts()
    d, layers = 16, 2
    assert counts.paper == 2 * 3 * d * 3 * layers + 10 * 2 * d * 2 * layers


def test_layer_norm_options_build_and_run(arch):
    for option in ("in", "out", "none"):
        model = build(arch)
        mod = dataclasses.replace(unipeft.preset("sa_ffn").modifications[0], layer_norm=option, size=4)
        unipeft.attach(model, unipeft.Method("ln-" + option, (mod,)))
        assert torch.isfinite(logits(model, batch(arch))).all()


def test_model_copy_after_attach_is_independent():
    model, attachment = attach("lora", "bart")
    clone = copy.deepcopy(model)
    assert torch.equal(logits(clone, batch("bart")), logits(model, batch("bart")))


# reentrant: layers run twice, the second time in backward, so prefix MLPs must not hold a graph across them
@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("method", ["mam", "prompt", "mh_pa", "adapter", "prefix", "prefix_lora_ffn", "lora"])
@pytest.mark.parametrize("arch", ["bart", "llama"])
def test_gradient_checkpointing_gives_the_same_gradients(method, reentrant, arch):
    grads = []
    for checkpointing in (False, True):
        model, attachment = attach(method, arch)
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": reentrant})
        model.train()
        torch.manual_seed(5)
        model(**batch(arch)).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", NO_BIASES)
def test_bitfit_on_a_model_without_biases_is_refused(arch):
    with pytest.raises(unipeft.ConfigError, match="has no bias parameters"):
        unipeft.attach(build(arch), "bitfit")
