"""LoRA in peft's own format, both ways, and LoRA folded into a plain transformers model.

A LoRA-style modification (a linear parallel Δh = s·x W_down W_up on one projection, no LayerNorm) is exactly
peft's LoRA layer: W_down is `lora_A`, W_up is `lora_B`, s is `lora_alpha / r`, and both read the projection's
input and add to its output. `save_peft` writes such a method as peft writes it (adapter_config.json +
adapter_model.safetensors, keys `base_model.model.<module>.lora_A.weight`), `load_peft` reads a peft LoRA adapter as
the equivalent method, and `merge_and_unload` folds the method into the base weights and removes it.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .architectures import architecture_of, features, get, paths
from .attachment import Attachment, attach, attachment_of
from .design import POSITIONS, ConfigError, Method, Modification

PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts before every module name
# peft features with no unipeft equivalent: a config that turns one on is refused rather than read wrongly.
_UNSUPPORTED = ("use_dora", "lora_bias", "layer_replication", "target_parameters",
                "trainable_token_indices", "alora_invocation_tokens", "use_qalora", "use_bdlora")


def is_lora_style(mod: Modification) -> bool:
    """A linear parallel Δh on one projection: what peft's LoRA computes and what folds into a weight."""
    return (mod.position in ("q", "k", "v", "o", "fc1", "fc2") and mod.insertion == "parallel"
            and mod.function == "identity" and mod.layer_norm == "none")


class _Projection(NamedTuple):
    position: str
    target: str
    layer: int
    member: str | None  # one matrix of a gated FFN's fc1 (gate_proj, up_proj), else None
    columns: slice | None  # GPT-2's fused c_attn: the q, k or v third of its output


def _projections(model: nn.Module) -> dict[str, list[_Projection]]:
    """Module name in `model.named_modules()` → what a LoRA-style modification there adapts, for every projection
    of the mapped layers; found by identity, so that any prefix of the task class is included. GPT-2's c_attn is
    three projections (q, k, v), a gated FFN's fc1 two modules."""
    arch = architecture_of(model)
    names = {id(module): name for name, module in model.named_modules()}
    targets = list(arch.stacks) + (["cross"] if arch.cross_attention is not None else [])
    out: dict[str, list[_Projection]] = {}
    for target in targets:
        attn = arch.cross_attention if target == "cross" else arch.self_attention
        positions = {"q": attn.q, "k": attn.k, "v": attn.v, "o": attn.o}
        if target != "cross":
            positions |= {"fc1": arch.fc1, "fc2": arch.fc2}
        layers = get(model.base_model, arch.stacks["encoder" if target == "encoder" else "decoder"])
        for position, value in positions.items():
            members = paths(value)
            for i, layer in enumerate(layers):
                for path in members:
                    module = get(layer, path)
                    columns = None
                    if attn.fused and position in "qkv":
                        width = features(module)[1] // 3
                        columns = slice("qkv".index(position) * width, ("qkv".index(position) + 1) * width)
                    member = path.rsplit(".", 1)[-1] if len(members) > 1 else None
                    out.setdefault(names[id(module)], []).append(_Projection(position, target, i, member, columns))
    return out


def _lora_sites(attachment: Attachment, purpose: str):
    """(modification, site, projection module name, state-key prefix) of every site, refusing other modifications."""
    method = attachment.method
    for i, mod in enumerate(method.modifications):
        if not is_lora_style(mod):
            raise ConfigError(f"method {method.name!r}.modifications[{i}]: {purpose} takes LoRA-style modifications "
                              f"only (a linear parallel Δh on q, k, v, o, fc1 or fc2, no layer_norm); this one is "
                              f"position {mod.position!r}, function {mod.function!r}, insertion {mod.insertion!r}, "
                              f"layer_norm {mod.layer_norm!r}")
    names = {id(module): name for name, module in attachment.model.named_modules()}
    return [(mod, site, names[id(module)], names[id(site)]) for _, mod, _, _, site, module
            in attachment.projection_sites()]


def _fused_lora(method: Method, name: str, parts: list) -> tuple[torch.Tensor, torch.Tensor, float]:
    """LoRAs on the q, k or v thirds of one fused projection (GPT-2's c_attn) as the one LoRA peft puts on the whole
    module: A stacks their down-projections, B holds each up-projection in its own rows and columns and zeros
    elsewhere (nothing of k when only q and v are adapted), so x A^T B^T is exactly their sum. Returns A, B, s."""
    scales = {mod.scale for mod, _ in parts}
    columns = [site.columns for _, site in parts]
    if len(scales) > 1 or None in columns or len({c.start for c in columns}) < len(columns):
        raise ConfigError(f"method {method.name!r}: the modifications on {name} overlap or differ in scale "
                          f"{sorted(map(str, scales))}; a peft LoRA adapter has one per module, with one lora_alpha")
    rank = sum(mod.size for mod, _ in parts)
    down = torch.cat([site.delta.down.weight for _, site in parts])
    up = parts[0][1].delta.up.weight.new_zeros(3 * (columns[0].stop - columns[0].start), rank)
    offset = 0
    for mod, site in parts:
        up[site.columns, offset:offset + mod.size] = site.delta.up.weight
        offset += mod.size
    return down, up, scales.pop()


def _head_modules(attachment: Attachment) -> list[str]:
    """The top-level modules that hold the trained task head, as peft's modules_to_save names them."""
    head = {n for n, p in attachment.head_parameters().items() if p.requires_grad}
    modules = sorted({n.split(".")[0] for n in head})
    for name in modules:
        module = attachment.model._modules.get(name)
        owned = {f"{name}.{n}" for n, _ in module.named_parameters()} if module is not None else set()
        if owned != {n for n in head if n.split(".")[0] == name}:
            raise ConfigError(f"model: the task head {name!r} is not a module trained whole; peft's modules_to_save "
                              "cannot express it")
    return modules


def save_peft(attachment: Attachment, directory: str | os.PathLike) -> Path:
    """Write a LoRA-only method in peft's format: `PeftModel.from_pretrained(base, directory)` gives the outputs
    of the attached model. Other methods are refused in one line naming the modification peft cannot express."""
    method, directory = attachment.method, Path(directory)
    if method.unfreeze != "none":
        raise ConfigError(f"method {method.name!r}.unfreeze: {method.unfreeze!r} trains base-model weights, which a "
                          "peft LoRA adapter does not hold")
    by_module: dict[str, list] = {}
    for mod, site, name, _ in _lora_sites(attachment, "a peft LoRA adapter"):
        if mod.scale == "learned":
            raise ConfigError(f"method {method.name!r}: a learned scale has no peft LoRA equivalent (lora_alpha is "
                              "a constant)")
        if name in by_module and site.columns is None:
            raise ConfigError(f"method {method.name!r}: two modifications adapt {name}; a peft LoRA adapter has one "
                              "per module")
        by_module.setdefault(name, []).append((mod, site))
    state, ranks, alphas, dropouts, conv1d = {}, {}, {}, set(), set()
    for name, parts in by_module.items():
        if parts[0][1].columns is None:  # one projection, one LoRA
            (mod, site), = parts
            down, up, scale = site.delta.down.weight, site.delta.up.weight, mod.scale
        else:
            down, up, scale = _fused_lora(method, name, parts)
        state[f"{_PREFIX}{name}.lora_A.weight"], state[f"{_PREFIX}{name}.lora_B.weight"] = down, up
        ranks[name] = down.shape[0]
        alphas[name] = float(scale) * ranks[name]  # peft's scaling is lora_alpha / r
        dropouts |= {site.delta.dropout.p for _, site in parts}
        conv1d.add(not isinstance(attachment.model.get_submodule(name), nn.Linear))
    if len(conv1d) > 1:
        raise ConfigError(f"method {method.name!r}: adapts both nn.Linear and Conv1D projections; peft's "
                          "fan_in_fan_out is one setting for all of them")
    if len(dropouts) > 1:
        raise ConfigError(f"method {method.name!r}.dropout: the modifications use dropouts {sorted(dropouts)}; a peft "
                          "LoRA adapter has one lora_dropout")
    heads = _head_modules(attachment) if method.train_head else []
    for name in heads:
        for key, p in attachment.model.get_submodule(name).named_parameters():
            state[f"{_PREFIX}{name}.{key}"] = p
    (r, alpha), _ = Counter(zip(ranks.values(), alphas.values())).most_common(1)[0]
    config = {
        "peft_type": "LORA", "task_type": None, "inference_mode": True,
        "base_model_name_or_path": getattr(attachment.model.config, "name_or_path", None) or None,
        "r": r, "lora_alpha": alpha, "lora_dropout": dropouts.pop(), "bias": "none",
        "fan_in_fan_out": conv1d.pop(),  # GPT-2's Conv1D stores its weight (in, out)
        "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "target_modules": sorted(ranks), "modules_to_save": heads or None,
        # peft reads pattern keys as regular expressions anchored at a module-name boundary
        "rank_pattern": {re.escape(n): ranks[n] for n in sorted(ranks) if ranks[n] != r},
        "alpha_pattern": {re.escape(n): alphas[n] for n in sorted(ranks) if alphas[n] != alpha},
    }
    directory.mkdir(parents=True, exist_ok=True)
    from .checkpoint import CONFIG
    if (directory / CONFIG).is_file():  # the two adapters would share adapter_model.safetensors
        raise ConfigError(f"{directory / CONFIG}: this folder holds a unipeft adapter; export the peft adapter to "
                          "another folder")
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(directory / PEFT_WEIGHTS),
              metadata={"format": "pt"})
    (directory / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def _pattern_value(patterns: dict, name: str, default):
    """peft's lookup: the first pattern that matches the end of the module name at a dot boundary."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return value
    return default


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


# adapter_config.json values read as numbers or flags, checked before use (a text lora_alpha would be a TypeError)
_VALUES = {
    "lora_alpha": (_positive, "a positive number"),
    "lora_dropout": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
                     "a number in [0, 1)"),
    "alpha_pattern": (lambda v: isinstance(v, dict) and all(map(_positive, v.values())),
                      "a mapping of module names to positive numbers"),
    "use_rslora": (lambda v: isinstance(v, bool), "true or false"),
    "fan_in_fan_out": (lambda v: isinstance(v, bool), "true or false"),
}


def load_peft(model: nn.Module, directory: str | os.PathLike) -> Attachment:
    """Attach a peft LoRA adapter (adapter_config.json + adapter_model.safetensors) to `model` as the equivalent
    unipeft method, with the outputs PeftModel gives; what unipeft cannot express is refused in one line."""
    directory = Path(directory)
    path, weights = directory / PEFT_CONFIG, directory / PEFT_WEIGHTS
    if not path.is_file():
        raise ConfigError(f"{path}: not found; a peft adapter folder holds {PEFT_CONFIG} and {PEFT_WEIGHTS}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not a readable JSON file ({' '.join(str(err).split())})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise ConfigError(f"{path}: peft_type is {config.get('peft_type') if isinstance(config, dict) else None!r}; "
                          "only peft LORA adapters have a unipeft equivalent")
    for key in _UNSUPPORTED:
        if config.get(key):
            raise ConfigError(f"{path}: {key} is set; unipeft has no equivalent of it")
    if config.get("bias", "none") != "none":
        raise ConfigError(f"{path}: bias is {config['bias']!r}; unipeft reads LoRA adapters with bias 'none' only")
    for key, (valid, expected) in _VALUES.items():
        if config.get(key) is not None and not valid(config[key]):
            raise ConfigError(f"{path}: {key} is {config[key]!r}; expected {expected}")
    if not weights.is_file():
        raise ConfigError(f"{weights}: not found (unipeft reads safetensors adapters only)")
    try:
        state = {k.removeprefix(_PREFIX): v for k, v in load_file(str(weights)).items()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ConfigError(f"{weights}: not a readable safetensors file ({' '.join(str(err).split())})") from None

    where = _projections(model)
    lora = {k.removesuffix(".lora_A.weight") for k in state if k.endswith(".lora_A.weight")}
    buffers = {n for n, _ in model.named_buffers()}  # modules_to_save may carry a head's buffers: loaded, not checked
    head = {k: v for k, v in state.items() if ".lora_" not in k and k not in buffers}
    head_buffers = {k: v for k, v in state.items() if k in buffers}
    pieces: dict[tuple[str, str, int, str], tuple[torch.Tensor, torch.Tensor]] = {}  # (position, target, layer, module)
    groups: dict[tuple[str, int, float], dict[str, set]] = {}
    for name in sorted(lora):
        if name not in where:
            raise ConfigError(f"{weights}: {name} is not a projection unipeft adapts on {type(model).__name__} "
                              "(q, k, v, o, fc1, fc2 of the mapped layers)")
        if config.get("fan_in_fan_out") and isinstance(model.get_submodule(name), nn.Linear):
            raise ConfigError(f"{path}: fan_in_fan_out is set but {name} is an nn.Linear; unipeft has no equivalent")
        down, up = state[f"{name}.lora_A.weight"], state.get(f"{name}.lora_B.weight")
        if up is None:
            raise ConfigError(f"{weights}: {name}.lora_B.weight is missing")
        alpha = _pattern_value(config.get("alpha_pattern"), name, config.get("lora_alpha", 8))
        scale = alpha / (math.sqrt(down.shape[0]) if config.get("use_rslora") else down.shape[0])
        for projection, (a, b) in _split_fused(where[name], down, up):
            pieces[(projection.position, projection.target, projection.layer, name)] = a, b
            groups.setdefault((projection.position, a.shape[0], scale), {}).setdefault(projection.target, set()).add(
                (projection.layer, projection.member))
    modifications = []
    for (position, rank, scale), per_target in sorted(groups.items(), key=lambda g: (POSITIONS.index(g[0][0]), g[0])):
        for target, layers in per_target.items():
            count = sum(1 for ps in where.values() for p in ps if (p.position, p.target) == (position, target))
            if len(layers) != count:
                raise ConfigError(f"{weights}: adapts {len(layers)} of the {count} {target} {position!r} projections; "
                                  "unipeft adapts every layer of a stack (on a gated FFN, fc1 is gate and up)")
        try:
            modifications.append(Modification(
                position=position, size=rank, function="identity", insertion="parallel",
                composition="add" if scale == 1.0 else "scale", scale=scale, init="lora",
                dropout=float(config.get("lora_dropout", 0.0)), targets=tuple(sorted(per_target))))
        except (TypeError, ValueError) as err:  # ConfigError included
            raise ConfigError(f"{path}: no unipeft equivalent for the {position!r} projections: {err}") from None
    if not modifications:
        raise ConfigError(f"{weights}: holds no lora_A weights")
    method = Method(name="peft_lora", modifications=tuple(modifications), train_head=bool(head),
                    notes=f"read from the peft LoRA adapter {directory}")
    attachment = attach(model, method)
    try:
        ours = dict(head)
        names = {id(module): name for name, module in model.named_modules()}
        for _, mod, target, layer, site, module in attachment.projection_sites():
            key = names[id(site)]
            down, up = pieces[(mod.position, target, layer, names[id(module)])]
            ours[f"{key}.delta.down.weight"], ours[f"{key}.delta.up.weight"] = down, up
        from .checkpoint import _mismatch
        problems = _mismatch(ours, attachment.state_dict(fold=False))
        problems += [f"unexpected {k}" for k in state if k not in head and k not in head_buffers
                     and k.rsplit(".lora_", 1)[0] not in lora]
        if problems:
            raise ConfigError(f"{weights}: does not match its {PEFT_CONFIG}: {problems[0]}"
                              + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        model.load_state_dict({**ours, **head_buffers}, strict=False)
    except BaseException:
        attachment.detach()
        raise
    return attachment


def _split_fused(projections: list[_Projection], down: torch.Tensor, up: torch.Tensor):
    """A peft LoRA (A, B) on one module as the (A, B) of each projection it holds. A fused c_attn holds q, k and v:
    a rank component whose column of B is non-zero in one third only belongs to that projection (what save_peft
    writes); if some component spans several thirds, or B is all zero, every projection gets all components (A
    shared, so repeated): the sum x A^T B^T is the same either way."""
    if len(projections) == 1 and projections[0].columns is None:
        return [(projections[0], (down, up))]
    used = torch.stack([up[p.columns].abs().sum(0) > 0 for p in projections])  # (projections, rank)
    exclusive = used.any() and bool((used.sum(0) <= 1).all())
    out = []
    for p, mask in zip(projections, used):
        keep = mask if exclusive else torch.ones_like(mask)
        if keep.any():
            out.append((p, (down[keep], up[p.columns][:, keep])))
    return out


@torch.no_grad()
def merge_and_unload(model: nn.Module | Attachment) -> nn.Module:
    """Fold an attached LoRA-style method into the base weights (W ← W + s·W_up W_down) and remove it: what is
    left is a plain transformers model, for `save_pretrained` / `from_pretrained` with no unipeft needed. A task head
    or biases the method trained stay trained. Methods with another modification are refused, the model untouched."""
    attachment = model if isinstance(model, Attachment) else attachment_of(model)
    names = sorted({name for _, _, name, _ in _lora_sites(attachment, "merge_and_unload")})
    attachment.merge()
    merged = {name: attachment.model.get_submodule(name).weight.detach().clone() for name in names}
    attachment.detach()  # removes hooks and modules, and unmerges: the merged weights are written back below
    for name, weight in merged.items():
        attachment.model.get_submodule(name).weight.copy_(weight)
    return attachment.model


__all__ = ["is_lora_style", "load_peft", "merge_and_unload", "save_peft"]
