"""unipeft against AdapterHub's `adapters` on a tiny Llama: AdapterHub's weights in unipeft's modules give its logits.

benchmarks/adapterhub_reference.py runs in .venv-adapters (adapters 1.3.0 pins transformers 4.57) and writes a random
base Llama, inputs, and for each AdapterHub method its perturbed weights, config and logits. Here the base loads into
transformers 5, the equivalent unipeft method is attached as data, AdapterHub's tensors are copied in by name, and the
logits compared. Where AdapterHub computes something no point of unipeft's design space expresses, the case asserts
that the logits differ and says why (see the benchmark's docstring for where each method reads and writes).

    .venv/bin/python tests/test_adapterhub.py [REFERENCE_DIR] > benchmarks/results/adapterhub_llama.txt
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

import unipeft

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS_PYTHON = ROOT / ".venv-adapters" / "bin" / "python"
SCRIPT = ROOT / "benchmarks" / "adapterhub_reference.py"
LAYERS = 2
TOL = 1e-5


def _bottleneck(index: int, location: str, norm: bool = False):
    """AdapterHub's Adapter at `location` (attention_adapters/output_adapters) → unipeft's Bottleneck: adapter_down
    is Sequential([LayerNorm if ln_before,] Linear, act), adapter_up a Linear (adapters/methods/modeling.py
    l.63-97)."""
    down = "adapter_down.1" if norm else "adapter_down.0"
    pairs = {"down.weight": f"{down}.weight", "down.bias": f"{down}.bias",
             "up.weight": "adapter_up.weight", "up.bias": "adapter_up.bias"}
    if norm:  # its LayerNorm's bias has no place in unipeft's RMSNorm
        pairs["norm_in.weight"] = "adapter_down.0.weight"
    return lambda name, i: {f"unipeft.{index}.decoder.layers.{i}.delta.{ours}":
                            f"model.layers.{i}.{location}.adapters.{name}.{theirs}" for ours, theirs in pairs.items()}


def _lora(index: int, module: str, member: str | None = None):
    """LoRA's A (r × in) is unipeft's down, B (out × r) its up (adapters/methods/lora.py l.165)."""
    ours = f"unipeft.{index}.decoder.layers.{{i}}." + (f"{member}." if member else "")
    return lambda name, i: {ours.format(i=i) + "delta.down.weight": f"model.layers.{i}.{module}.loras.{name}.lora_A",
                            ours.format(i=i) + "delta.up.weight": f"model.layers.{i}.{module}.loras.{name}.lora_B"}


def _adapter(position: str, **extra) -> dict:
    """reduction_factor 4 on d = 32: bottleneck 8 (adapters/methods/bottleneck.py l.107)."""
    return {"position": position, "size": 8, "function": "relu", "dropout": 0.0, **extra}


def _lora_mod(position: str) -> dict:
    """LoRAConfig(r=4, alpha=8): scaling alpha/r = 2 (adapters/methods/lora.py l.100)."""
    return {"position": position, "size": 4, "function": "identity", "composition": "scale", "scale": 2.0,
            "dropout": 0.0}


SEQ = {"insertion": "sequential"}
# intermediate_lora is down_proj = unipeft's fc2, output_lora up_proj (adapters/models/llama/mixin_llama.py l.26-27)
LORA_QV = [_lora_mod("q"), _lora_mod("v")]
LORA_QV_MAPS = [_lora(0, "self_attn.q_proj"), _lora(1, "self_attn.v_proj")]

# name → (unipeft method, AdapterHub → unipeft weight maps, unipeft tensors set to zero, expected, why)
CASES = {
    # SeqBn on Llama nets y + f(y), y the decoder layer's output (benchmark: PFEIFFER)
    "seq_bn": ([_adapter("layer", **SEQ)], [_bottleneck(0, "output_adapters")], (), "equal",
               "Pfeiffer = position layer, sequential"),
    "seq_bn_ln_before": ([_adapter("layer", layer_norm="in", **SEQ)], [_bottleneck(0, "output_adapters", norm=True)],
                         (), "differ", "AdapterHub's ln_before is an nn.LayerNorm (mean-centred, with bias; "
                         "modeling.py l.65) even on Llama; unipeft's layer_norm 'in' copies the model's RMSNorm"),
    "double_seq_bn_relu": ([_adapter("attn", **SEQ), _adapter("ffn", **SEQ)],
                           [_bottleneck(0, "attention_adapters"), _bottleneck(1, "output_adapters")], (), "equal",
                           "Houlsby placement = attn + ffn, sequential (AdapterHub's default swish swapped for relu)"),
    "double_seq_bn": ([_adapter("attn", **SEQ), _adapter("ffn", **SEQ)],
                      [_bottleneck(0, "attention_adapters"), _bottleneck(1, "output_adapters")], (), "differ",
                      "AdapterHub's Houlsby default non-linearity is swish (SiLU, adapter_config.py l.334); unipeft's "
                      "functions are relu, identity and softmax"),
    "par_bn": ([_adapter("ffn", composition="scale", scale=4.0)], [_bottleneck(0, "output_adapters")], (), "equal",
               "ParBn = position ffn, parallel (reads post_attention_layernorm's input), scale 4"),
    "lora_qv": (LORA_QV, LORA_QV_MAPS, (), "equal", "LoRA on q_proj, v_proj, s = alpha/r"),
    "lora_qv_intermediate": (LORA_QV + [_lora_mod("fc2")], LORA_QV_MAPS + [_lora(2, "mlp.down_proj")], (),
                             "equal", "AdapterHub's intermediate_lora is down_proj on Llama: unipeft's fc2"),
    "lora_qv_ffn": (LORA_QV + [_lora_mod("fc1"), _lora_mod("fc2")],
                    LORA_QV_MAPS + [_lora(2, "mlp.up_proj", "up_proj"), _lora(3, "mlp.down_proj")],
                    tuple(f"unipeft.2.decoder.layers.{{i}}.gate_proj.delta.{w}.weight" for w in ("down", "up")),
                    "equal",
                    "output_lora is up_proj alone; unipeft's fc1 always pairs it with a gate_proj LoRA, held at zero "
                    "here: same function, more parameters (up_proj-only LoRA is not a unipeft design point)"),
}


def make_reference(out: Path) -> Path:
    """Runs the AdapterHub side into `out`; pytest.skip where it cannot run here."""
    if not ADAPTERS_PYTHON.exists():
        pytest.skip(f"{ADAPTERS_PYTHON} is missing: create it as benchmarks/adapterhub_reference.py says")
    probe = subprocess.run([str(ADAPTERS_PYTHON), "-c", "import adapters"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"{ADAPTERS_PYTHON} has no `adapters` package")
    done = subprocess.run([str(ADAPTERS_PYTHON), str(SCRIPT), str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def compare(ref: Path, name: str) -> dict:
    method, maps, zeroed, _, _ = CASES[name]
    theirs = load_file(ref / name / "adapter.safetensors")
    model = LlamaForCausalLM.from_pretrained(ref / "base", dtype=torch.float32).eval()
    attachment = unipeft.attach(model, {"name": name, "modifications": method})
    ours = attachment.state_dict(fold=False)
    state = {key: theirs[their_key] for m in maps for i in range(LAYERS) for key, their_key in m(name, i).items()}
    state |= {key.format(i=i): torch.zeros_like(ours[key.format(i=i)]) for key in zeroed for i in range(LAYERS)}
    assert sorted(state) == sorted(ours), "every unipeft tensor gets exactly one of AdapterHub's"
    unexpected = model.load_state_dict(state, strict=False).unexpected_keys
    assert not unexpected, unexpected
    batch = load_file(ref / "inputs.safetensors")
    with torch.no_grad():
        logits = model(**batch).logits
    reference = load_file(ref / name / "logits.safetensors")["logits"]
    base = load_file(ref / "base_logits.safetensors")["logits"]
    manifest = json.loads((ref / "manifest.json").read_text())
    return {"max_abs_diff": (logits - reference).abs().max().item(),
            "adapter_effect": (reference - base).abs().max().item(),  # how far the adapter moves AdapterHub's logits
            "params_adapterhub": manifest["methods"][name]["parameters"],
            "params_unipeft": sum(t.numel() for t in ours.values()),
            "logits": logits, "reference": reference}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return make_reference(tmp_path_factory.mktemp("adapterhub"))


def _bare_diff(ref: Path) -> float:
    model = LlamaForCausalLM.from_pretrained(ref / "base", dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(**load_file(ref / "inputs.safetensors")).logits
    return (logits - load_file(ref / "base_logits.safetensors")["logits"]).abs().max().item()


def test_base_model_loads_identically(reference):
    """transformers 4.57 (AdapterHub's) and 5 compute the same bare model, so any difference below is the adapter's."""
    assert _bare_diff(reference) <= TOL


@pytest.mark.parametrize("name", CASES)
def test_same_logits_as_adapterhub(reference, name):
    result = compare(reference, name)
    expected, why = CASES[name][3], CASES[name][4]
    assert result["adapter_effect"] > 0.1, "the perturbed adapter must move the logits for the comparison to mean much"
    if expected == "equal":
        torch.testing.assert_close(result["logits"], result["reference"], rtol=TOL, atol=TOL, msg=why)
    else:  # not a point of unipeft's design space: the nearest one must not pass for it
        assert result["max_abs_diff"] > 100 * TOL, f"expected a difference: {why}"


def report(ref: Path) -> str:
    manifest = json.loads((ref / "manifest.json").read_text())
    versions = ", ".join(f"{k} {v}" for k, v in manifest["versions"].items())
    lines = [f"unipeft vs AdapterHub on a tiny Llama (d=32, 4 heads, 2 kv heads, 2 layers, FFN 64, vocab 64), "
             f"AdapterHub side: {versions}", f"tolerance rtol=atol={TOL}; effect = max |AdapterHub adapted - bare|",
             f"bare model, transformers 5 vs AdapterHub's 4.57: max|diff| {_bare_diff(ref):.2e}",
             "", f"{'method':<22} {'expected':<8} {'max|diff|':>10} {'effect':>8} {'params AH':>9} {'unipeft':>8}  "
             "note"]
    for name, (_, _, _, expected, why) in CASES.items():
        r = compare(ref, name)
        lines.append(f"{name:<22} {expected:<8} {r['max_abs_diff']:>10.2e} {r['adapter_effect']:>8.3f} "
                     f"{r['params_adapterhub']:>9} {r['params_unipeft']:>8}  {why}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(report(Path(sys.argv[1])))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            print(report(make_reference(Path(tmp))))
