"""The library as other tools use it: copies, pickles, weight writes, dtype moves, misuse, checkpointing, compile,
half-precision bases, switching off, and what it tells about itself."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import unipeft
from unipeft.attachment import attachment_of

from conftest import GENERATIVE, batch, build, logits
from test_methods import attach, perturb, sized

# Every kind of hook: LoRA on projections, FFN/attention adapters, Pfeiffer, prompts, prefixes, MH PA, combinations.
HOOKED = ["lora", "pa", "adapter", "adapter_pfeiffer", "prompt", "prefix", "prefix_direct", "mh_pa", "mam",
          "prefix_lora_ffn"]
PREFIX_MLP = ["prefix", "mam", "mh_pa", "prefix_lora_ffn"]  # methods with Li & Liang's prefix MLP


def own(model):
    return {n: p for n, p in model.named_parameters() if n.startswith("unipeft.")}


# 1. copies and pickles ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", HOOKED)
@pytest.mark.parametrize("arch", ["bart", "llama"])
def test_a_deep_copy_runs_and_trains_its_own_adapter(method, arch):
    model, attachment = attach(method, arch)
    perturb(attachment, own_only=True)
    original = logits(model, batch(arch))
    clone = copy.deepcopy(model)
    torch.testing.assert_close(logits(clone, batch(arch)), original)
    with torch.no_grad():
        for p in own(clone).values():
            p.add_(torch.randn_like(p))
    assert not torch.allclose(logits(clone, batch(arch)), original), "the copy ignores its own adapter"
    torch.testing.assert_close(logits(model, batch(arch)), original)
    clone.train()
    clone(**batch(arch)).loss.backward()
    assert all(p.grad is None for p in model.parameters()), "the copy's backward reached the original"
    assert all(p.grad is not None for p in own(clone).values())
    assert attachment_of(clone).model is clone and attachment_of(clone).container is clone.unipeft


@pytest.mark.parametrize("method", HOOKED)
@pytest.mark.parametrize("arch", ["bart", "llama"])
def test_a_pickled_model_loads_with_equal_outputs_and_detaches(method, arch):
    model, attachment = attach(method, arch)
    perturb(attachment, own_only=True)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(logits(loaded, batch(arch)), logits(model, batch(arch)))
    if arch in GENERATIVE:
        kwargs = dict(input_ids=batch(arch)["input_ids"], attention_mask=batch(arch)["attention_mask"],
                      num_beams=2, max_new_tokens=4)
        assert torch.equal(loaded.generate(**kwargs), model.generate(**kwargs))
    attachment_of(loaded).detach()
    torch.testing.assert_close(logits(loaded, batch(arch)), logits(build(arch), batch(arch)))


def _data_parallel_replica(model):
    """What nn.DataParallel's replicate() builds per device, here on the CPU: new module objects sharing the
    originals' hook dictionaries and plain attributes, the parameters' copies set as plain tensors. Returns the
    replica and those copies by name."""
    copies = {p: p.detach().clone().requires_grad_(p.requires_grad) for p in model.parameters()}
    replicas = {m: m._replicate_for_data_parallel() for m in model.modules()}
    for module, replica in replicas.items():
        replica._modules = {k: None if c is None else replicas[c] for k, c in module._modules.items()}
        for key, p in module._parameters.items():
            if p is None:
                replica._parameters[key] = None
            else:
                setattr(replica, key, copies[p])
    return replicas[model], {n: copies[p] for n, p in model.named_parameters()}


@pytest.mark.parametrize("method", ["lora", "adapter_pfeiffer", "prefix", "mh_pa", "mam", "prompt"])
@pytest.mark.parametrize("arch", ["bart", "llama"])
def test_a_data_parallel_replica_runs_and_trains_its_own_modules(method, arch):
    model, attachment = attach(method, arch)
    perturb(attachment, own_only=True)
    original = logits(model, batch(arch))
    replica, params = _data_parallel_replica(model)
    replica_own = {n: t for n, t in params.items() if n.startswith("unipeft.")}
    with torch.no_grad():
        for t in replica_own.values():
            t.add_(torch.randn_like(t))
    twin = build(arch)
    unipeft.attach(twin, method, **sized(method))
    twin.load_state_dict({**model.state_dict(), **{n: t.detach() for n, t in replica_own.items()}})
    torch.testing.assert_close(logits(replica, batch(arch)), logits(twin, batch(arch)))
    torch.testing.assert_close(logits(model, batch(arch)), original)
    replica.train()
    replica(**batch(arch)).loss.backward()
    assert all(p.grad is None for p in model.parameters()), "the replica's backward reached the original"
    assert all(t.grad is not None for t in replica_own.values())


# 2. no stale prefix vectors ----------------------------------------------------------------------------------------
def _twin(model, method):
    """A second model with the same weights, built from scratch: what the current parameters give."""
    twin = build("bart")
    unipeft.attach(twin, method, **sized(method))
    twin.load_state_dict(model.state_dict())
    return twin.to(next(model.parameters()).dtype)


@pytest.mark.parametrize("method", PREFIX_MLP + ["prefix_direct"])
@pytest.mark.parametrize("grad", [False, True])
def test_prefix_vectors_follow_writes_through_data(method, grad):
    model, attachment = attach(method, "bart")
    with torch.set_grad_enabled(grad):
        before = model(**batch("bart")).logits.detach()
        model(**batch("bart"))
        for p in own(model).values():
            p.data.mul_(1.5).add_(0.01)  # as EMA and weight-averaging utilities write
        after = model(**batch("bart")).logits.detach()
    assert not torch.allclose(after, before)
    twin = _twin(model, method)
    torch.testing.assert_close(after, logits(twin, batch("bart")))
    if not grad:
        kwargs = dict(input_ids=batch("bart")["input_ids"], num_beams=2, max_new_tokens=4)
        model.generate(**kwargs)
        for p in own(model).values():
            p.data.mul_(1.5)
            twin.get_parameter(next(n for n, q in model.named_parameters() if q is p)).data.mul_(1.5)
        assert torch.equal(model.generate(**kwargs), twin.generate(**kwargs))


def test_an_averaged_model_evaluates_the_averaged_weights():
    """torch.optim.swa_utils.AveragedModel deep-copies the model and writes the averages into the copy."""
    model, attachment = attach("mam", "bart")
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.5))
    ema.update_parameters(model)  # the first update copies
    perturb(attachment, own_only=True)
    ema.update_parameters(model)
    averaged = logits(ema, batch("bart"))
    torch.testing.assert_close(averaged, logits(_twin(ema.module, "mam"), batch("bart")))
    assert not torch.allclose(averaged, logits(model, batch("bart")))


@pytest.mark.parametrize("method", PREFIX_MLP)
def test_prefix_vectors_follow_a_dtype_move(method):
    model, attachment = attach(method, "bart")
    perturb(attachment)
    logits(model, batch("bart"))
    model.to(torch.float64)
    out = logits(model, batch("bart"))
    assert out.dtype == torch.float64
    vectors = [m for m in attachment.container.modules() if isinstance(m, unipeft.functions.PrefixVectors)]
    assert all(v().dtype == torch.float64 for v in vectors)
    torch.testing.assert_close(out, logits(_twin(model, method), batch("bart")))


# 3. use after detach -----------------------------------------------------------------------------------------------
def test_use_after_detach_is_refused_and_leaves_the_model_alone(tmp_path):
    model, attachment = attach("lora", "bart")
    perturb(attachment, own_only=True)
    attachment.detach()
    weights = {n: p.clone() for n, p in model.state_dict().items()}
    for action in (attachment.merge, attachment.unmerge, lambda: attachment.save(tmp_path / "a"),
                   attachment.counts, attachment.state_dict, attachment.summary,
                   lambda: attachment.disabled().__enter__()):
        with pytest.raises(RuntimeError, match="detached") as err:
            action()
        assert "\n" not in str(err.value)
    attachment.detach()  # a second detach is what "make sure it is gone" means: a no-op
    assert not (tmp_path / "a").exists()
    assert all(torch.equal(p, weights[n]) for n, p in model.state_dict().items())
    again = unipeft.attach(model, "lora", **sized("lora"))
    attachment.detach()  # the old handle must not remove the new attachment
    assert attachment_of(model) is again and "unipeft" in model._modules


# 5. torch.compile --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["prefix", "mam"])
def test_compiled_prefix_methods_have_few_graphs_and_no_recompilation(method):
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    model, attachment = attach(method, "bart")
    perturb(attachment)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    expected = logits(model, batch("bart"))
    torch.testing.assert_close(logits(compiled, batch("bart")), expected)
    model.train()
    compiled(**batch("bart")).loss.backward()
    model.eval()
    first = counter.frame_count
    assert first <= 4, f"{first} graphs: a graph break per layer"
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):
            torch.testing.assert_close(logits(compiled, batch("bart")), expected)
            model.train()
            compiled(**batch("bart")).loss.backward()
            model.eval()
    assert counter.frame_count == first


# 8. half-precision base models -------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", HOOKED)
def test_adapters_stay_fp32_on_a_bf16_base_unless_asked(method):
    model = build("bart").to(torch.bfloat16)
    attachment = unipeft.attach(model, method, **sized(method))
    assert {p.dtype for p in own(model).values()} == {torch.float32}
    assert {p.dtype for n, p in model.named_parameters() if not n.startswith("unipeft.")} == {torch.bfloat16}
    model.train()
    out = model(**batch("bart"))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in own(model).values())
    attachment.detach()
    unipeft.attach(model, method, adapter_dtype="base", **sized(method))
    assert {p.dtype for p in own(model).values()} == {torch.bfloat16}


def test_an_unknown_adapter_dtype_is_refused():
    with pytest.raises(unipeft.ConfigError, match="adapter_dtype"):
        unipeft.attach(build("bart"), "lora", adapter_dtype="fp8")


# 9. switching the attachment off -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", HOOKED)
def test_disabled_runs_the_base_model_and_keeps_the_attachment(method, arch="bart"):
    base = logits(build(arch), batch(arch))
    model, attachment = attach(method, arch)
    perturb(attachment, own_only=True)
    adapted = logits(model, batch(arch))
    with attachment.disabled():
        torch.testing.assert_close(logits(model, batch(arch)), base)
        if arch in GENERATIVE:
            reference = build(arch).generate(input_ids=batch(arch)["input_ids"], max_new_tokens=4)
            assert torch.equal(model.generate(input_ids=batch(arch)["input_ids"], max_new_tokens=4), reference)
    torch.testing.assert_close(logits(model, batch(arch)), adapted)
    assert attachment_of(model) is attachment


@pytest.mark.parametrize("arch", ["roberta", "t5", "bert2bert", "llama", "gpt2", "t5_gated"])
def test_disabled_on_other_architectures(arch):
    for method in ("prompt", "mam", "adapter_pfeiffer"):
        test_disabled_runs_the_base_model_and_keeps_the_attachment(method, arch)


def test_disabled_refuses_what_it_cannot_switch_off():
    _, full = attach("full", "bart")
    with pytest.raises(RuntimeError, match="base weights"):
        with full.disabled():
            pass
    _, lora = attach("lora", "bart")
    lora.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        with lora.disabled():
            pass


# 11. what is attached where ----------------------------------------------------------------------------------------
def test_summary_and_repr_name_every_adapted_sublayer():
    model, attachment = attach("mam", "bart")
    text = attachment.summary()
    for path in ("model.encoder.layers.0.self_attn", "model.decoder.layers.1.encoder_attn",
                 "model.encoder.layers.1.fc1", "model.decoder.layers.0.fc2"):
        assert any(line.strip().startswith(path + ":") for line in text.splitlines()), path
    assert "prefix" in text and "l=4" in text and "r=8" in text
    printed = repr(model)
    assert printed.count("unipeft:") == len([line for line in text.splitlines() if line.startswith("  ")])
    lora_model, lora = attach("lora", "bart")
    q_line = next(line for line in repr(lora_model).splitlines() if "(q_proj)" in line)
    assert "unipeft:" in q_line and "r=4" in q_line
    lora.detach()
    assert "unipeft" not in repr(lora_model)
