"""Files and checkpoints: no clash with peft's loaders, LoRA in peft's format both ways, merge_and_unload, adapter-only
Trainer checkpoints that resume exactly, and a command line that imports no torch for what needs none."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import TrainingArguments
from transformers.utils.peft_utils import find_adapter_config_file

import unipeft
from unipeft.checkpoint import CONFIG, LEGACY_CONFIG, WEIGHTS

from conftest import batch, build, logits
from test_methods import attach, perturb

LORA_TWO_RANKS = {"name": "lora_two_ranks", "modifications": [  # rank_pattern and alpha_pattern in peft's file
    {"position": "q", "size": 4, "function": "identity", "composition": "scale", "scale": 2.0, "init": "lora"},
    {"position": "v", "size": 8, "function": "identity", "init": "lora", "targets": ["encoder"]}]}
LORA_TWO_RANKS_CAUSAL = {"name": "lora_two_ranks_causal", "modifications": [  # one scale: GPT-2's block LoRA has one
    {"position": "q", "size": 4, "function": "identity", "composition": "scale", "scale": 2.0, "init": "lora"},
    {"position": "v", "size": 8, "function": "identity", "composition": "scale", "scale": 2.0, "init": "lora"}]}
EXPORTABLE = [("lora", "bart"), ("lora", "roberta"), ("lora", "t5"), ("lora", "bert2bert"), ("lora_ffn", "bart"),
              ("lora_ffn", "bert"), (LORA_TWO_RANKS, "mbart"), (LORA_TWO_RANKS, "roberta"),
              # decoder-only and gated FFNs: GPT-2's q and v thirds of c_attn become one block LoRA on c_attn; a gated
              # FFN's fc1 is a LoRA on gate_proj (wi_0) and one on up_proj (wi_1)
              ("lora", "llama"), ("lora", "qwen2"), ("lora", "qwen3"), ("lora", "gpt2"), ("lora_ffn", "llama"),
              ("lora_ffn", "gpt2"), ("lora_ffn", "t5_gated"), (LORA_TWO_RANKS_CAUSAL, "gpt2"),
              (LORA_TWO_RANKS_CAUSAL, "mistral")]
NOT_LORA = ["mam", "pa", "prefix", "prompt", "prefix_lora_ffn", "adapter_pfeiffer"]


def ident(case):
    return "-".join(c if isinstance(c, str) else c["name"] for c in case)


def attached(method, arch):
    if isinstance(method, dict):
        model = build(arch)
        return model, unipeft.attach(model, method)
    return attach(method, arch)


# --- file names: nothing the library writes is taken for a peft adapter ---------------------------------------------

@pytest.mark.parametrize("method", ["mam", "lora", "prefix"])
def test_a_saved_adapter_is_not_mistaken_for_a_peft_adapter(method, tmp_path):
    model, attachment = attach(method, "bart")
    attachment.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG, WEIGHTS])
    assert find_adapter_config_file(str(tmp_path)) is None  # how transformers (and so peft) spot an adapter
    with pytest.raises(OSError, match="no file named"):  # transformers' "no model here", not a TypeError on peft_type
        type(model).from_pretrained(tmp_path)


def test_an_adapter_saved_by_0_1_under_adapter_config_json_still_loads(tmp_path):
    model, attachment = attach("mam", "bart")
    perturb(attachment)
    expected = logits(model, batch("bart"))
    attachment.save(tmp_path)
    (tmp_path / CONFIG).rename(tmp_path / LEGACY_CONFIG)  # exactly the files unipeft 0.1 wrote (runs/ today)
    assert unipeft.read_config(tmp_path)["library"] == "unipeft"
    fresh = build("bart")
    loaded = unipeft.load(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh, batch("bart")), expected, rtol=1e-5, atol=1e-5)
    loaded.save(tmp_path)  # saving over it replaces the old name, which would break peft's loaders
    assert not (tmp_path / LEGACY_CONFIG).exists() and (tmp_path / CONFIG).is_file()


# --- LoRA in peft's format, both ways -------------------------------------------------------------------------------

@pytest.mark.parametrize("method,arch", EXPORTABLE, ids=[ident(c) for c in EXPORTABLE])
def test_lora_exported_in_peft_format_gives_the_same_outputs_in_peft(method, arch, tmp_path):
    model, attachment = attached(method, arch)
    perturb(attachment)
    expected = logits(model, batch(arch))
    unipeft.save_peft(attachment, tmp_path)
    peft_model = PeftModel.from_pretrained(build(arch), tmp_path).eval()
    torch.testing.assert_close(logits(peft_model, batch(arch)), expected, rtol=1e-6, atol=1e-6)
    fresh = build(arch)  # and back: the peft folder loads into the library as the same method
    reloaded = unipeft.load(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh, batch(arch)), expected, rtol=1e-6, atol=1e-6)
    assert reloaded.counts().stored == attachment.counts().stored


def test_the_two_formats_never_share_a_folder(tmp_path):
    _, attachment = attach("lora", "bart")
    unipeft.save_peft(attachment, tmp_path / "peft")
    with pytest.raises(unipeft.ConfigError, match=r"peft/adapter_config\.json: this folder holds a peft adapter"):
        attachment.save(tmp_path / "peft")  # its adapter_model.safetensors would be replaced under peft's config
    attachment.save(tmp_path / "ours")
    with pytest.raises(unipeft.ConfigError, match=r"ours/unipeft_config\.json: this folder holds a unipeft adapter"):
        unipeft.save_peft(attachment, tmp_path / "ours")
    assert PeftModel.from_pretrained(build("bart"), tmp_path / "peft") is not None


PEFT_ADAPTERS = [  # (arch, LoraConfig arguments): peft's own adapters, as peft users write them
    ("bart", {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
    ("bart", {"r": 4, "lora_alpha": 4, "target_modules": ["fc1", "fc2", "out_proj"], "use_rslora": True,
              "rank_pattern": {"fc2": 2}, "alpha_pattern": {"out_proj": 16}}),
    ("roberta", {"r": 8, "lora_alpha": 16, "target_modules": ["query", "key", "value"],
                 "modules_to_save": ["classifier"]}),
    ("t5", {"r": 2, "lora_alpha": 6, "target_modules": ["q", "v", "wo"]}),
    ("llama", {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
    ("qwen2", {"r": 2, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"]}),
    ("t5_gated", {"r": 2, "lora_alpha": 4, "target_modules": ["wi_0", "wi_1", "wo"]}),
    # peft's LoRA on GPT-2's c_attn has one A for q, k and v: it loads as three LoRAs sharing (repeating) that A
    ("gpt2", {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "fan_in_fan_out": True}),
    ("gpt2", {"r": 4, "lora_alpha": 8, "target_modules": ["c_fc", "c_proj"], "fan_in_fan_out": True}),
]


@pytest.mark.parametrize("arch,kwargs", PEFT_ADAPTERS, ids=[f"{a}-{i}" for i, (a, _) in enumerate(PEFT_ADAPTERS)])
def test_a_peft_lora_adapter_loads_into_the_library_with_peft_outputs(arch, kwargs, tmp_path):
    peft_model = get_peft_model(build(arch), LoraConfig(**kwargs))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    peft_model.save_pretrained(tmp_path)
    expected = logits(peft_model.eval(), batch(arch))
    model = build(arch)
    attachment = unipeft.load(model, tmp_path)
    torch.testing.assert_close(logits(model, batch(arch)), expected, rtol=1e-6, atol=1e-6)
    assert attachment.method.train_head == ("modules_to_save" in kwargs)


# peft's LoRA and ours, side by side from the same weights: (arch, peft target modules, our positions)
SIDE_BY_SIDE = [("llama", ["q_proj", "v_proj"], ["q", "v"]), ("qwen2", ["q_proj", "v_proj"], ["q", "v"]),
                ("gpt2", ["c_fc", "c_proj"], ["fc1", "fc2", "o"]),
                ("llama", ["gate_proj", "up_proj", "down_proj"], ["fc1", "fc2"])]


@pytest.mark.parametrize("arch,modules,positions", SIDE_BY_SIDE, ids=[f"{c[0]}-{c[1][0]}" for c in SIDE_BY_SIDE])
def test_lora_equals_peft_in_counts_outputs_gradients_and_merged_weights(arch, modules, positions):
    peft_model = get_peft_model(build(arch), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=modules,
                                                        fan_in_fan_out=arch == "gpt2"))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model = build(arch)
    attachment = unipeft.attach(model, {"name": "ours", "train_head": False, "modifications": [
        {"position": p, "size": 4, "function": "identity", "composition": "scale", "scale": 2.0, "dropout": 0.0}
        for p in positions]})
    names = {id(m): n for n, m in model.named_modules()}
    peft_names = {n.removeprefix("base_model.model."): m for n, m in peft_model.named_modules()}
    pairs = []  # (our site, peft's LoRA layer)
    for *_, site, module in attachment.projection_sites():
        pairs.append((site, peft_names[names[id(module)]]))
        with torch.no_grad():
            site.delta.down.weight.copy_(pairs[-1][1].lora_A["default"].weight)
            site.delta.up.weight.copy_(pairs[-1][1].lora_B["default"].weight)
    assert attachment.counts().trainable == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    inputs = batch(arch)
    ours, theirs = model(**inputs), peft_model(**inputs)
    torch.testing.assert_close(ours.logits, theirs.logits, rtol=1e-6, atol=1e-6)
    ours.loss.backward()
    theirs.loss.backward()
    for site, layer in pairs:
        torch.testing.assert_close(site.delta.down.weight.grad, layer.lora_A["default"].weight.grad)
        torch.testing.assert_close(site.delta.up.weight.grad, layer.lora_B["default"].weight.grad)
    merged_ours, merged_theirs = unipeft.merge_and_unload(model), peft_model.merge_and_unload()
    theirs_state = merged_theirs.state_dict()
    for name, weight in merged_ours.state_dict().items():
        torch.testing.assert_close(weight, theirs_state[name], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", NOT_LORA)
def test_methods_peft_cannot_express_are_refused_in_one_line(method, tmp_path):
    _, attachment = attach(method, "bart")
    with pytest.raises(unipeft.ConfigError, match=r"modifications\[\d\]") as info:
        unipeft.save_peft(attachment, tmp_path)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "adapter_config.json").exists()


def test_a_peft_adapter_unipeft_cannot_express_is_refused_naming_the_file(tmp_path):
    get_peft_model(build("bart"), LoraConfig(r=2, target_modules=["q_proj"], layers_to_transform=[0])
                   ).save_pretrained(tmp_path)
    with pytest.raises(unipeft.ConfigError, match=r"adapter_model\.safetensors: adapts 1 of the 2") as info:
        unipeft.load(build("bart"), tmp_path)
    assert "\n" not in str(info.value)
    get_peft_model(build("bart"), LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)).save_pretrained(tmp_path)
    with pytest.raises(unipeft.ConfigError, match=r"adapter_config\.json: use_dora is set"):
        unipeft.load(build("bart"), tmp_path)


@pytest.mark.parametrize("key, value, expected", [
    ("lora_alpha", "16", "a positive number"), ("lora_alpha", 0, "a positive number"),
    ("lora_dropout", 1.5, r"a number in \[0, 1\)"), ("alpha_pattern", {"q_proj": "x"}, "a mapping"),
    ("use_rslora", "yes", "true or false"),
])
def test_a_peft_config_value_of_the_wrong_type_is_one_line_naming_file_and_key(tmp_path, key, value, expected):
    import json

    get_peft_model(build("bart"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(unipeft.ConfigError, match=rf"adapter_config\.json: {key} is .*; expected {expected}") as info:
        unipeft.load(build("bart"), tmp_path)
    assert "\n" not in str(info.value)


# --- merge_and_unload ---------------------------------------------------------------------------------------------

MERGE_CASES = [("lora", "bart"), ("lora", "roberta"), ("lora_ffn", "t5"), ("lora_ffn", "bert"),
               (LORA_TWO_RANKS, "bart")]


@pytest.mark.parametrize("method,arch", MERGE_CASES, ids=[ident(c) for c in MERGE_CASES])
def test_merge_and_unload_gives_a_plain_model_that_round_trips_save_pretrained(method, arch, tmp_path):
    model, attachment = attached(method, arch)
    perturb(attachment)  # the head, where the model has one, trains too and must survive
    expected = logits(model, batch(arch))
    plain = unipeft.merge_and_unload(model)
    assert plain is model and not any(n.startswith("unipeft.") for n in plain.state_dict())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in plain.modules())
    torch.testing.assert_close(logits(plain, batch(arch)), expected, rtol=1e-5, atol=1e-5)
    plain.save_pretrained(tmp_path)
    reloaded = type(plain).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, batch(arch)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", NOT_LORA)
def test_merge_and_unload_refuses_what_does_not_fold_and_leaves_the_model_attached(method):
    model, attachment = attach(method, "bart")
    perturb(attachment)
    expected = logits(model, batch("bart"))
    with pytest.raises(unipeft.ConfigError, match=r"merge_and_unload takes LoRA-style") as info:
        unipeft.merge_and_unload(model)
    assert "\n" not in str(info.value)
    assert unipeft.attachment_of(model) is attachment
    torch.testing.assert_close(logits(model, batch("bart")), expected, rtol=0, atol=0)


# --- Trainer checkpoints ------------------------------------------------------------------------------------------

def _examples(n=8):
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(4, 64, (n, 9), generator=g)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(9, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(n)]


def _trainer(method, out, **extra):
    model = build("roberta")
    attachment = unipeft.attach(model, method, **({"attn_bn": 4} if method == "prefix" else {}))
    args = TrainingArguments(output_dir=str(out), max_steps=6, per_device_train_batch_size=4, learning_rate=0.01,
                             save_strategy="steps", save_steps=3, logging_steps=100, report_to=[], use_cpu=True,
                             seed=0, dataloader_num_workers=0, disable_tqdm=True, **extra)
    model.train()
    return unipeft.AdapterTrainer(model=model, args=args, train_dataset=_examples()), attachment


@pytest.mark.parametrize("method", ["lora", "prefix", "bitfit"])
def test_trainer_checkpoints_hold_what_trains_and_resume_bit_for_bit(method, tmp_path):
    trainer, attachment = _trainer(method, tmp_path / "a")
    trainer.train()
    uninterrupted = {n: t.clone() for n, t in attachment.state_dict(fold=False).items()}
    checkpoint = tmp_path / "a" / "checkpoint-3"
    stored = load_file(checkpoint / WEIGHTS)
    assert sum(t.numel() for t in stored.values()) == attachment.counts().trainable  # the prefix MLP unfolded
    assert not list(checkpoint.glob("model*.safetensors")) and (checkpoint / "optimizer.pt").is_file()
    resumed_trainer, resumed = _trainer(method, tmp_path / "b")
    resumed_trainer.train(resume_from_checkpoint=str(checkpoint))
    after = resumed.state_dict(fold=False)
    assert after.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert torch.equal(after[name], tensor), name
    assert not torch.equal(stored[next(iter(stored))], uninterrupted[next(iter(stored))])  # it did train on


def test_trainer_save_model_is_loadable_and_never_silently_the_base_model(tmp_path):
    trainer, attachment = _trainer("prefix", tmp_path / "out")
    trainer.train()
    model = attachment.model.eval()
    expected = logits(model, batch("roberta"))
    trainer.save_model(str(tmp_path / "final"))
    with pytest.raises(OSError, match="no file named"):  # finds no model rather than the base without the adapter
        type(model).from_pretrained(tmp_path / "final")
    fresh = build("roberta")
    loaded = unipeft.load(fresh, tmp_path / "final")
    torch.testing.assert_close(logits(fresh, batch("roberta")), expected, rtol=1e-5, atol=1e-5)
    assert loaded.method.modifications[0].reparam == "direct"  # stored folded, as unipeft.save does


def test_an_adapter_trainer_without_a_method_attached_fails_at_once(tmp_path):
    with pytest.raises(unipeft.ConfigError, match="no unipeft method is attached"):
        unipeft.AdapterTrainer(model=build("roberta"), args=TrainingArguments(output_dir=str(tmp_path), report_to=[]))


def test_a_checkpoint_of_another_method_is_refused_on_resume(tmp_path):
    trainer, _ = _trainer("lora", tmp_path / "a")
    trainer.train()
    other, _ = _trainer("prefix", tmp_path / "b")
    with pytest.raises(unipeft.ConfigError, match=r"unipeft_config\.json: method 'lora' is not the method attached"):
        other.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))


# --- command line ---------------------------------------------------------------------------------------------------

def test_the_presets_command_imports_neither_torch_nor_transformers():
    code = ("import sys, unipeft.__main__ as m; assert m.main(['presets']) == 0; "
            "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'transformers'))))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert out.stdout.splitlines()[0].split()[0] == unipeft.preset_names()[0]


def test_the_command_lines_model_names_are_the_libraries():
    from unipeft.__main__ import PAPER_MODELS
    from unipeft.models import PAPER_MODELS as models
    assert tuple(PAPER_MODELS) == tuple(models)



# --- prefix tuning against peft's -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_prefix_with_shifted_positions_equals_peft_prefix_tuning_on_grouped_query_attention(arch):
    """peft's prefix tuning puts l key/value vectors per key/value head in the cache, so its tokens take positions
    l … l+n−1; ours with `shift_positions: true` and the same vectors gives the same logits. (Not compared: peft's
    own `generate`, whose first step differs from its forward on the same tokens by up to 0.12 here.)"""
    from peft import PrefixTuningConfig
    peft_model = get_peft_model(build(arch), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)).eval()
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    model = build(arch)
    attachment = unipeft.attach(model, {"name": "prefix", "modifications": [
        {"position": "head", "size": 3, "reparam": "direct", "shift_positions": True}]})
    vectors = attachment.container[0]["decoder"]["vectors"].vectors
    layers, width = vectors.shape[0], vectors.shape[-1]
    with torch.no_grad():  # peft's layout: (l, layers · [key, value] · n_kv · d_h)
        vectors.copy_(peft_model.prompt_encoder["default"].embedding.weight.view(3, layers, 2, width)
                      .permute(1, 2, 0, 3))
    inputs = batch(arch)
    torch.testing.assert_close(logits(model, inputs), logits(peft_model, inputs), rtol=1e-5, atol=1e-5)
    ids = inputs["input_ids"][:1]  # and without a mask, positions from the model's default
    torch.testing.assert_close(logits(model, {"input_ids": ids}), logits(peft_model, {"input_ids": ids}),
                               rtol=1e-5, atol=1e-5)
