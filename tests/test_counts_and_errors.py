"""Parameter counts against the paper's Appendix B, the command line, and one-line errors for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import BartConfig, BartForConditionalGeneration, OPTConfig, OPTForCausalLM

import unipeft
from unipeft.models import build_without_weights

from conftest import D, LAYERS, build
from test_methods import sized

# The paper's own figures (Appendix B, Tables 2, 5, 6, 12), on the shipped configs, built without weights.
PAPER_FIGURES = [
    ("bart-large", "mam", {}, 27_377_664, 6.7),
    ("bart-large", "prefix", {}, 14_745_600, 3.6),
    ("bart-large", "prefix", {"attn_bn": 512}, 37_748_736, 9.2),
    ("bart-large", "lora_ffn", {}, 25_067_520, 6.1),
    ("bart-large", "lora", {"attn_bn": 200}, 29_491_200, 7.2),
    ("bart-large", "sa_ffn", {"ffn_bn": 1024}, 50_331_648, 12.3),
    ("bart-large", "pa", {"ffn_bn": 200}, 9_830_400, 2.4),
    ("bart-large", "adapter_pfeiffer", {}, 29_491_200, 7.2),
    ("bart-large", "prompt", {"attn_bn": 300}, 307_200, 0.075),
    ("mbart-large-cc25", "mam", {}, 27_377_664, 6.7),
    ("roberta-base", "mam_glue", {}, 589_824, 0.5),
    ("roberta-base", "lora", {}, 589_824, 0.5),
    ("roberta-base", "prefix", {"attn_bn": 32}, 589_824, 0.5),
]


@pytest.mark.parametrize("model,method,budget,paper,percent", PAPER_FIGURES)
def test_counts_reproduce_the_paper(model, method, budget, paper, percent):
    counts = unipeft.attach(build_without_weights(model), method, **budget).counts()
    assert counts.paper == paper
    assert round(counts.paper_percent, len(str(percent).split(".")[1])) == percent


def test_base_model_sizes_match_the_published_checkpoints():
    sizes = {name: unipeft.attach(build_without_weights(name), "bitfit").base_params
             for name in ("bart-large", "mbart-large-cc25", "roberta-base")}
    assert sizes == {"bart-large": 406_291_456, "mbart-large-cc25": 610_851_840, "roberta-base": 124_055_040}


LLMS = {  # name → (layers, d, d_ff, query heads, key/value heads, d_h, parameters as published)
    "llama-3-8b": (32, 4096, 14336, 32, 8, 128, 8_030_261_248),
    "mistral-7b": (32, 4096, 14336, 32, 8, 128, 7_241_732_096),
    "qwen2.5-0.5b": (24, 896, 4864, 14, 2, 64, 494_032_768),
    "smollm2-135m": (30, 576, 1536, 9, 3, 64, 134_515_008),
}


@pytest.mark.parametrize("name", LLMS)
def test_decoder_only_counts_follow_the_formulas_and_peft(name):
    """Grouped-query attention: LoRA on W_q (d → H·d_h) and W_v (d → n_kv·d_h), a prefix 2·l·n_kv·d_h a layer; the
    gated FFN's fc1 is gate and up: 3·r·(d + d_ff) a layer. LoRA's count equals what peft prints for the same
    config, and the untied LM head (Llama-3, Mistral) is pretrained, not a task head that trains."""
    from peft import LoraConfig, get_peft_model
    layers, d, d_ff, heads, kv, dh, published = LLMS[name]
    counts = {m: unipeft.attach(build_without_weights(name), m).counts() for m in ("lora", "lora_ffn", "prefix")}
    assert counts["lora"].paper == counts["lora"].trainable == layers * 16 * ((d + heads * dh) + (d + kv * dh))
    assert counts["lora_ffn"].paper == layers * 102 * 3 * (d + d_ff)
    assert counts["prefix"].paper == layers * 2 * 200 * kv * dh
    assert counts["lora"].paper_denominator == published and counts["lora"].head == 0
    peft_model = get_peft_model(build_without_weights(name), LoraConfig(r=16, target_modules=["q_proj", "v_proj"]))
    assert counts["lora"].trainable == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert sum(p.numel() for p in peft_model.parameters()) == published + counts["lora"].trainable


def test_trainable_and_stored_counts_separate_training_cost_from_storage():
    counts = unipeft.attach(build_without_weights("bart-large"), "prefix").counts()
    mlp = 200 * 1024 + (1024 * 800 + 800) + (800 * 24 * 1024 + 24 * 1024)  # per attention type
    assert counts.trainable == 3 * mlp
    assert counts.stored == counts.paper  # the MLP folds into exactly the vectors the paper counts
    head = unipeft.attach(build_without_weights("roberta-base"), "lora").counts()
    assert head.head == 768 * 768 + 768 + 768 * 2 + 2 and head.trainable == head.paper + head.head


# Appendix B, per sublayer, on the tiny test models (d = 16, d_m = 4d, L = 2; BART: 3 attentions, 2 FFNs per layer).
def _formula(method, attn, ffn, n_attn, n_ffn):
    l = r = 4
    rf = 8
    per = {"prefix": 2 * l * D * n_attn, "prefix_direct": 2 * l * D * n_attn, "mh_pa": 2 * r * D * n_attn,
           "pa_attn": 2 * r * D * n_attn, "sa_attn": 2 * r * D * n_attn, "lora": 4 * r * D * n_attn,
           "pa": 2 * rf * D * n_ffn, "scaled_pa": 2 * rf * D * n_ffn, "sa_ffn": 2 * rf * D * n_ffn,
           "adapter_pfeiffer": 2 * rf * D * n_ffn, "lora_ffn": 10 * rf * D * n_ffn,
           "adapter": 2 * r * D * n_attn + 2 * rf * D * n_ffn, "mam": 2 * l * D * n_attn + 2 * rf * D * n_ffn}
    return per[method] * LAYERS


@pytest.mark.parametrize("method", ["prefix", "prefix_direct", "mh_pa", "pa_attn", "sa_attn", "lora", "pa",
                                    "scaled_pa", "sa_ffn", "adapter_pfeiffer", "lora_ffn", "adapter", "mam"])
@pytest.mark.parametrize("arch,n_attn,n_ffn", [("bart", 3, 2), ("mbart", 3, 2), ("roberta", 1, 1), ("bert", 1, 1),
                                               ("bert2bert", 3, 2), ("t5", 3, 2)])
def test_counts_follow_appendix_b(method, arch, n_attn, n_ffn):
    counts = unipeft.attach(build(arch), method, **sized(method)).counts()
    assert counts.paper == _formula(method, None, None, n_attn, n_ffn)


def test_command_line_prints_the_counts_as_json():
    out = subprocess.run([sys.executable, "-m", "unipeft", "params", "--model", "bart-large", "--method", "mam",
                          "--json"], capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    assert result["paper"] == 27_377_664 and round(result["paper_percent"], 1) == 6.7
    assert {"paper", "trainable", "stored", "base_params", "paper_percent"} <= result.keys()


@pytest.mark.parametrize("config, message", [
    ('{"model_type": "bart", "d_model": ', "is not a valid JSON file"),
    ('{"model_type": "nosuch"}', "model type `nosuch`"),
    ("{}", "Should have a `model_type` key"),
])
def test_command_line_refuses_a_broken_or_unknown_config_in_one_line(tmp_path, config, message):
    (tmp_path / "config.json").write_text(config)
    done = subprocess.run([sys.executable, "-m", "unipeft", "params", "--model", str(tmp_path), "--method", "lora"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: --model {tmp_path}: not a model configuration") and message in done.stderr


BAD_INPUT = [
    ("unknown preset", lambda: unipeft.attach(build("bart"), "houlsbee"), "unknown preset 'houlsbee'"),
    ("r <= 0", lambda: unipeft.attach(build("bart"), "pa", ffn_bn=0), r"modifications\[0\]\.size"),
    ("unknown position", lambda: unipeft.Method.from_dict(
        {"name": "x", "modifications": [{"position": "mlp", "size": 4}]}), r"modifications\[0\]\.position"),
    ("unknown key", lambda: unipeft.Method.from_dict(
        {"name": "x", "modifications": [{"position": "ffn", "size": 4, "rank": 2}]}), "unknown key 'rank'"),
    ("architecture cannot take it", lambda: unipeft.attach(build("roberta"), {"name": "x", "modifications": [
        {"position": "head", "size": 4, "targets": ["cross"]}]}), r"targets: roberta has no 'cross'"),
    ("gate without softmax", lambda: unipeft.Method.from_dict(
        {"name": "x", "modifications": [{"position": "ffn", "size": 4, "composition": "gate"}]}), "composition"),
    ("scale without scaled composition", lambda: unipeft.Method.from_dict(
        {"name": "x", "modifications": [{"position": "ffn", "size": 4, "scale": 2.0, "composition": "add"}]}),
     "scale"),
    ("sequential head", lambda: unipeft.Method.from_dict(
        {"name": "x", "modifications": [{"position": "head", "size": 4, "insertion": "sequential"}]}), "insertion"),
    ("unmapped model", lambda: unipeft.attach(OPTForCausalLM(OPTConfig(
        vocab_size=32, hidden_size=8, num_hidden_layers=1, ffn_dim=16, num_attention_heads=2, word_embed_proj_dim=8)),
        "pa"), "architecture 'opt' has no map"),
    ("attached twice", lambda: [unipeft.attach(m := build("bart"), "pa"), unipeft.attach(m, "lora")],
     "already attached"),
    ("saved into a file", lambda: unipeft.save(unipeft.attach(build("bart"), "lora"), Path(__file__)),
     "is a file; an adapter is saved into a folder"),
]


@pytest.mark.parametrize("name,action,pattern", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_fails_with_one_line_naming_the_key(name, action, pattern):
    with pytest.raises(unipeft.ConfigError) as info:
        action()
    message = str(info.value)
    assert "\n" not in message
    assert re.search(pattern, message), message


def test_loading_into_a_mismatched_base_fails_clearly(tmp_path):
    unipeft.attach(build("bart"), "mam", attn_bn=4, ffn_bn=8).save(tmp_path)
    with pytest.raises(unipeft.ConfigError, match="fingerprint"):
        unipeft.load(BartForConditionalGeneration(BartConfig(d_model=32, encoder_layers=1, decoder_layers=1,
                                                             vocab_size=64)), tmp_path)
    with pytest.raises(unipeft.ConfigError, match="model_type"):
        unipeft.load(build("roberta"), tmp_path)


def test_loading_a_checkpoint_that_disagrees_with_its_config_fails_clearly(tmp_path):
    unipeft.attach(build("bart"), "mam", attn_bn=4, ffn_bn=8).save(tmp_path)
    config = json.loads((tmp_path / "unipeft_config.json").read_text())
    config["method"]["modifications"][1]["size"] = 6
    (tmp_path / "unipeft_config.json").write_text(json.dumps(config))
    with pytest.raises(unipeft.ConfigError, match=r"adapter_model\.safetensors: does not match"):
        unipeft.load(build("bart"), tmp_path)


def test_loading_from_a_directory_without_a_config_fails_clearly(tmp_path):
    with pytest.raises(unipeft.ConfigError, match="unipeft_config.json: not found"):
        unipeft.load(build("bart"), tmp_path)


def test_a_failed_attach_leaves_the_model_untouched():
    model = build("roberta")
    expected = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(unipeft.ConfigError, match="no 'cross'"):
        unipeft.attach(model, {"name": "x", "modifications": [
            {"position": "ffn", "size": 4}, {"position": "q", "size": 4, "targets": ["cross"]}]})
    assert {n: p.requires_grad for n, p in model.named_parameters()} == expected
    assert not model._forward_hooks and all(not m._forward_hooks and not m._forward_pre_hooks
                                            for m in model.modules())
    unipeft.attach(model, "lora")  # and it can still take a method


def _cut_short(path):
    path.write_bytes(path.read_bytes()[:-7])


def _empty(path):
    path.write_bytes(b"")


def _bad_header(path):
    data = bytearray(path.read_bytes())
    data[8:20] = b"\xff\x00{not json!!"
    path.write_bytes(bytes(data))


def _latin1(path):
    path.write_bytes(path.read_text().replace('"unipeft"', '"unip\u00e9ft"', 1).encode("latin-1"))


def _no_fingerprint(path):
    config = json.loads(path.read_text())
    del config["base_model"]["fingerprint"]
    path.write_text(json.dumps(config))


def _a_list(path):
    path.write_text(json.dumps([json.loads(path.read_text())]))


BROKEN_FILES = [  # (file, how it is broken)
    ("adapter_model.safetensors", _cut_short),
    ("adapter_model.safetensors", _empty),
    ("adapter_model.safetensors", _bad_header),
    ("unipeft_config.json", _latin1),
    ("unipeft_config.json", _no_fingerprint),
    ("unipeft_config.json", _a_list),
]


@pytest.mark.parametrize("name,breaks", BROKEN_FILES, ids=[b[1].__name__.strip("_") for b in BROKEN_FILES])
def test_a_broken_adapter_file_is_one_line_naming_it(tmp_path, name, breaks):
    unipeft.attach(build("bart"), "mam", attn_bn=4, ffn_bn=8).save(tmp_path)
    breaks(tmp_path / name)
    with pytest.raises(unipeft.ConfigError) as info:
        unipeft.load(build("bart"), tmp_path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(tmp_path / name) + ":"), message


def test_a_pickle_disguised_as_the_weights_is_refused_and_never_runs(tmp_path):
    import os
    import pickle

    unipeft.attach(build("bart"), "mam", attn_bn=4, ffn_bn=8).save(tmp_path)
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (tmp_path / "adapter_model.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(unipeft.ConfigError, match=r"adapter_model\.safetensors: not a readable safetensors file"):
        unipeft.load(build("bart"), tmp_path)
    assert not marker.exists()
