"""AdapterHub's `adapters` on a tiny random Llama: reference weights, configs and logits for tests/test_adapterhub.py.

    .venv-adapters/bin/python benchmarks/adapterhub_reference.py OUT_DIR

AdapterHub pins transformers 4.57, so this runs in its own venv; the test loads the results into transformers 5 and
unipeft. No downloads of models. The venv (torch 2.13.0+cpu, adapters 1.3.0, transformers 4.57.6):

    python3 -m venv .venv-adapters
    .venv-adapters/bin/pip install torch==2.13.0 && .venv-adapters/bin/pip install adapters==1.3.0 torch==2.13.0

OUT_DIR gets:

    base/                     the random base model (save_pretrained, safetensors)
    inputs.safetensors        input_ids, attention_mask (row 2 is right-padded)
    base_logits.safetensors   logits of the bare model
    manifest.json             versions, methods, and for each its config, AdapterHub class and placement
    METHOD/adapter.safetensors   the adapter's weights by AdapterHub's names (every one perturbed, see below)
    METHOD/config.json           its full AdapterHub config, the bottleneck size and the placement
    METHOD/logits.safetensors    the adapted model's logits

Where each method reads and writes on Llama, from the source of adapters 1.3.0 (paths under site-packages/adapters;
LlamaDecoderLayerWithAdapters.forward in models/llama/modeling_llama.py):

    r = x (l.126); a = self_attn(input_layernorm(x)) (l.128-141); h = attention_adapters(a, r, None) (l.142)
    r = h (l.145); m = mlp(post_attention_layernorm(h)) (l.146-147); out = output_adapters(m, r, None) (l.148)

The `None` is the layer norm that BERT's adapters re-apply: on Llama no norm ever enters an adapter layer, so
original_ln_before/after only decide whether the sub-block residual r is added before and/or after the adapter
(methods/modeling.py l.183-200, l.255-259). A single adapter name becomes Stack(name) (composition.py l.236-238), whose
compose_stack calls pre_block → pre_forward before the adapter (methods/adapter_layer_base.py l.393-395,
methods/bottleneck.py l.176-190), then post_forward (methods/bottleneck.py l.375). Adapter module: f(x) =
up(act(down(LN?(x)))) · scaling, with biases (methods/modeling.py l.63-107, l.210-217).
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from pathlib import Path

import adapters
import torch
import transformers
from adapters import DoubleSeqBnConfig, LoRAConfig, ParBnConfig, SeqBnConfig
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

SEED = 0
NOISE = 0.2  # std of the noise added to every adapter weight, so zero-initialised parts (up, lora_B) count too

# SeqBn, residual_before_ln=True: residual = m (modeling.py l.177-178); original_ln_before with no norm: x = m + r
# (l.199-200); adapter: m + f(m + r) (l.227-235); original_ln_after: + r (l.255-259). Net: y + f(y), y = r + m.
PFEIFFER = "sequential on the decoder layer output y = r + mlp(...): y + f(y) (reads and writes after the FFN's add)"
# DoubleSeqBn, original_ln_before=False: x = m, residual = m (modeling.py l.177-203); m + f(m); + r (l.255-259).
HOULSBY = ("sequential on o_proj's output a (attention_adapters, modeling_llama.py l.142): r + a + f(a); and on "
           "down_proj's output m (output_adapters, l.148): r + m + f(m); both before the residual add")
# ParallelAdapter.pre_forward returns (r, r) (modeling.py l.307): x = r, the residual stream = input of
# post_attention_layernorm; forward gives s·f(r), no residual (l.309-329); post_forward adds m, then r (l.345-350).
PARALLEL = ("parallel at the FFN: reads r (the input of post_attention_layernorm), adds scaling·f(r) to down_proj's "
            "output: r + m + s·f(r)")
# LoRALinear.forward: W x + b + scaling · x A^T B^T, scaling = alpha / r (lora.py l.100, l.165, l.172, l.969).
# mixin_llama.py l.14-16 wraps q/k/v_proj ("selfattn", attn_matrices picks which); l.26 wraps down_proj as
# "intermediate" and l.27 up_proj as "output" (names swapped relative to BERT's W_1/W_2); gate_proj never gets LoRA.
LORA = ("W x + (alpha/r) x A^T B^T on the projections chosen: selfattn_lora with attn_matrices (q_proj, k_proj, "
        "v_proj), intermediate_lora = mlp.down_proj, output_lora = mlp.up_proj; never mlp.gate_proj")

METHODS = {
    "seq_bn": (SeqBnConfig(reduction_factor=4), PFEIFFER),
    # ln_before puts a new nn.LayerNorm (with bias, mean-centred) first in adapter_down (modeling.py l.63-66)
    "seq_bn_ln_before": (SeqBnConfig(reduction_factor=4, ln_before=True), PFEIFFER + "; f = up(relu(down(LN(y))))"),
    "double_seq_bn_relu": (DoubleSeqBnConfig(reduction_factor=4, non_linearity="relu"), HOULSBY),
    # AdapterHub's Houlsby default is swish = SiLU (adapter_config.py l.334; transformers activations.py l.333)
    "double_seq_bn": (DoubleSeqBnConfig(reduction_factor=4), HOULSBY + "; act = swish (SiLU)"),
    "par_bn": (ParBnConfig(reduction_factor=4), PARALLEL),
    "lora_qv": (LoRAConfig(r=4, alpha=8), LORA),
    "lora_qv_intermediate": (LoRAConfig(r=4, alpha=8, intermediate_lora=True), LORA),
    "lora_qv_ffn": (LoRAConfig(r=4, alpha=8, intermediate_lora=True, output_lora=True), LORA),
}


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(SEED)
    config = LlamaConfig(vocab_size=64, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=2, intermediate_size=64, max_position_embeddings=64, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(3, 64, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    ids[2, 6:], mask[2, 6:] = 0, 0  # right padding: a padded row without a fully masked query
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def logits(model, batch) -> torch.Tensor:
    return model(**batch).logits.float().contiguous()


def adapter_weights(model, name: str) -> dict[str, torch.Tensor]:
    # bottleneck modules live under .adapters.NAME., LoRA under .loras.NAME.; clone: safetensors refuses shared
    # storage (adapter_norm_before is also adapter_down.0)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
            if f".adapters.{name}." in k or f".loras.{name}." in k}


def run_method(base, name: str, config, placement: str, batch, out: Path) -> dict:
    model = copy.deepcopy(base)
    adapters.init(model)
    model.add_adapter(name, config=config)
    model.set_active_adapters(name)
    model.eval()
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for key, param in sorted((k, p) for k, p in model.named_parameters() if f".{name}." in k):
            param.add_(NOISE * torch.randn(param.shape, generator=g))
    weights = adapter_weights(model, name)
    full = model.adapters_config.get(name).to_dict()
    hidden = base.config.hidden_size
    entry = {"class": type(config).__name__, "config": full, "placement": placement,
             "parameters": sum(p.numel() for k, p in model.named_parameters() if f".{name}." in k)}
    if "reduction_factor" in full:
        entry["bottleneck_size"] = int(hidden // full["reduction_factor"])  # bottleneck.py l.107
    else:
        entry["lora_scaling"] = full["alpha"] / full["r"]  # lora.py l.100
    (out / name).mkdir(parents=True, exist_ok=True)
    save_file(weights, out / name / "adapter.safetensors")
    save_file({"logits": logits(model, batch)}, out / name / "logits.safetensors")
    (out / name / "config.json").write_text(json.dumps(entry, indent=2, default=str))
    return entry


def main(out: Path) -> None:
    # set_active_adapters' reset_adapter runs a forward context before activating, which warns "none are activated"
    logging.getLogger("adapters").setLevel(logging.ERROR)
    out.mkdir(parents=True, exist_ok=True)
    base = tiny_llama()
    base.save_pretrained(out / "base", safe_serialization=True)
    batch = inputs()
    save_file(batch, out / "inputs.safetensors")
    save_file({"logits": logits(base, batch)}, out / "base_logits.safetensors")
    manifest = {"versions": {"adapters": adapters.__version__, "transformers": transformers.__version__,
                             "torch": torch.__version__},
                "seed": SEED, "noise": NOISE, "methods": {}}
    for name, (config, placement) in METHODS.items():
        manifest["methods"][name] = run_method(base, name, config, placement, batch, out)
        print(f"{name}: {manifest['methods'][name]['parameters']} parameters")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: .venv-adapters/bin/python benchmarks/adapterhub_reference.py OUT_DIR")
    main(Path(sys.argv[1]))
