"""Attach a method to a frozen transformers model with module hooks, and detach it again.

The insertion-form dimension is the table READ_WRITE: for each (position, insertion) it names where Δh reads
its input (the input or output of a sublayer module) and where it is composed into h. Everything else, the
per-architecture module names, comes from the architecture map.

Hooks hold no closures: each is an object that names the attachment's modules, so copy.deepcopy, pickle and
nn.DataParallel's replicas (see _retarget) get hooks that run their own modules.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
from collections import OrderedDict
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import attention
from .architectures import ArchitectureMap, architecture_of, features, get, paths
from .design import PROJECTIONS, ConfigError, Method, Modification
from .functions import Bottleneck, Composition, MultiHeadBottleneck, PrefixVectors, Prompt
from .presets import resolve

READ_WRITE: dict[tuple[str, str], tuple[tuple[str, str], tuple[str, str]]] = {
    ("attn", "parallel"): (("core", "input"), ("o", "input")),  # PA (attn): Δh from x, added before W_o
    ("attn", "sequential"): (("o", "output"), ("o", "output")),  # SA (attn): Δh from h, after W_o
    ("head", "parallel"): (("core", "input"), ("o", "input")),  # MH PA: per-head Δh, added before W_o
    ("ffn", "parallel"): (("ffn_input", "input"), ("fc2", "output")),  # PA (ffn)
    ("ffn", "sequential"): (("fc2", "output"), ("fc2", "output")),  # SA (ffn), Houlsby
    ("layer", "sequential"): (("layer", "output"), ("layer", "output")),  # Pfeiffer
    **{(p, "parallel"): ((p, "input"), (p, "output")) for p in PROJECTIONS},  # LoRA
    **{(p, "sequential"): ((p, "output"), (p, "output")) for p in PROJECTIONS},
}


class Site(nn.Module):
    """One Δh at one sublayer: reads x at one hook, composes f(x) into h at another.

    Δh runs in the adapter's dtype (fp32 on a half-precision base by default) and is cast back to h's dtype.
    `columns` selects what it writes (and, sequential, reads) of a fused projection's output: GPT-2's q, k or v
    third of c_attn."""

    def __init__(self, delta: nn.Module, composition: Composition, columns: slice | None = None,
                 read_columns: slice | None = None):
        super().__init__()
        self.delta, self.compose = delta, composition
        self.columns, self.read_columns = columns, read_columns
        self._x: torch.Tensor | None = None
        self.merged = False  # a linear Δh folded into its projection's weight
        self.enabled = True  # False inside Attachment.disabled()

    def read(self, x: torch.Tensor) -> None:
        self._x = x if self.read_columns is None else x[..., self.read_columns]

    def write(self, h: torch.Tensor) -> torch.Tensor:
        x, self._x = self._x, None
        if self.merged or not self.enabled:
            return h
        if self.columns is None:
            return self.compose(h, self.delta(x)).to(h.dtype)
        out = h.clone()
        out[..., self.columns] = self.compose(h[..., self.columns], self.delta(x)).to(h.dtype)
        return out


class RenormalisedSite(Site):
    """A sequential Δh on a post-LN layer's output that joins the residual sum before the layer's own output
    LayerNorm: y = LN(z) is read, LN(z + f(y)) is written (the Pfeiffer adapter of the adapter authors' library
    and of the official RoBERTa code, `ffn_option=pfeiffer`). The LayerNorm is the frozen one of the layer."""

    def __init__(self, delta: nn.Module, composition: Composition, norm: nn.LayerNorm):
        super().__init__(delta, composition)
        self._norm = (norm,)  # a tuple keeps the base model's LayerNorm out of this module's parameters

    def write(self, y: torch.Tensor) -> torch.Tensor:
        z, self._x = self._x, None  # read() kept the LayerNorm's input z = x + h
        if not self.enabled:
            return y
        norm = self._norm[0]
        return F.layer_norm(self.compose(z, self.delta(y)).to(z.dtype), norm.normalized_shape, norm.weight,
                            norm.bias, norm.eps)


# Hooks are instances of module-level classes calling bound methods of the attachment's modules, never closures:
# copy.deepcopy then gives a copy's hooks the copy's modules, and pickle can write them.
class _InputHook:
    """Calls fn on the hidden states a module reads (first argument or `hidden_states`); a result replaces them."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, _, args, kwargs):
        new = self.fn(args[0] if args else kwargs["hidden_states"])
        if new is None:
            return None
        return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})


class _OutputHook:
    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, _, __, output):
        new = self.fn(output[0] if isinstance(output, tuple) else output)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new


def _on_input(module: nn.Module, fn: Callable) -> torch.utils.hooks.RemovableHandle:
    return module.register_forward_pre_hook(_InputHook(fn), with_kwargs=True)


def _on_output(module: nn.Module, fn: Callable) -> torch.utils.hooks.RemovableHandle:
    return module.register_forward_hook(_OutputHook(fn))


_HOOKS = {"input": _on_input, "output": _on_output}


def _sublayers(arch: ArchitectureMap, target: str) -> dict[str, str]:
    attn = arch.cross_attention if target == "cross" else arch.self_attention
    return {"core": attn.core, "q": attn.q, "k": attn.k, "v": attn.v, "o": attn.o,
            "ffn_input": arch.ffn_input, "fc1": arch.fc1, "fc2": arch.fc2, "layer": "",
            "output_norm": arch.output_norm or ""}


def _available_targets(arch: ArchitectureMap, mod: Modification) -> tuple[str, ...]:
    if mod.position == "embeddings":
        return ("decoder",) if arch.causal else ("encoder",)
    stacks = tuple(arch.stacks)
    if mod.budget_side == "attn" and arch.cross_attention is not None:
        stacks += ("cross",)
    return stacks


def _stack(target: str) -> str:
    return "encoder" if target == "encoder" else "decoder"


# Δh's dropout, as the official code: attention-side modifications use the attention dropout (its Adapter_Layer and
# MH PA inside the attention take the attention's `self.dropout`), FFN-side ones the hidden dropout.
_DROPOUT_KEYS = {"attn": ("attention_dropout", "attention_probs_dropout_prob", "dropout_rate", "attn_pdrop"),
                 "ffn": ("dropout", "hidden_dropout_prob", "dropout_rate", "resid_pdrop")}


def _model_dropout(model: nn.Module, side: str) -> float:
    config = model.config.encoder if model.config.model_type == "encoder-decoder" else model.config
    for name in _DROPOUT_KEYS[side]:
        if getattr(config, name, None) is not None:
            return float(getattr(config, name))
    return 0.0


def _heads(attention_core: nn.Module) -> int:
    """The number of query heads."""
    for name in ("num_heads", "num_attention_heads", "n_heads"):
        if hasattr(attention_core, name):
            return getattr(attention_core, name)
    config = getattr(attention_core, "config", None)  # Llama-family attention keeps only its config
    if getattr(config, "num_attention_heads", None):
        return config.num_attention_heads
    raise ConfigError(f"model: cannot tell the number of heads of {type(attention_core).__name__}")


def _norm(model: nn.Module, arch: ArchitectureMap):
    """The adapter's own norm (`layer_norm: in/out`): the model's kind, RMSNorm with the model's epsilon on
    pre-RMSNorm models (Llama, Qwen, Mistral, T5), else LayerNorm as the official code."""
    if arch.norm == "layer":
        return nn.LayerNorm
    config = model.config
    eps = getattr(config, "rms_norm_eps", None) or getattr(config, "layer_norm_epsilon", None) or 1e-6
    return functools.partial(nn.RMSNorm, eps=eps)


def _bind(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    bound = inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments
    return {**{k: v for k, v in bound.items() if k != "kwargs"}, **bound.get("kwargs", {})}


def _insert_after_first(x: torch.Tensor, inserted: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[:, :1], inserted, x[:, 1:]], dim=1)


def _prepend(x: torch.Tensor, inserted: torch.Tensor) -> torch.Tensor:
    return torch.cat([inserted, x], dim=1)


class _PromptHooks:
    """Prompt tuning's hooks (see Attachment._build_prompt), as methods of one object."""

    def __init__(self, prompt: Prompt, embed: nn.Embedding, insert: Callable, positionless: bool,
                 max_positions: int | None):
        self.prompt, self.embed, self.insert = prompt, embed, insert
        self.positionless, self.max_positions = positionless, max_positions

    @property
    def length(self) -> int:
        return self.prompt.vectors.shape[0]

    def vectors(self, like: torch.Tensor) -> torch.Tensor:
        return self.prompt.vectors.to(like.dtype).expand(like.shape[0], -1, -1)

    def before_encoder(self, module, args, kwargs):
        if not self.prompt.enabled:
            return None
        inputs, length = _bind(module, args, kwargs), self.length
        if inputs.get("position_ids") is not None:
            raise ConfigError("prompt tuning: explicit position_ids are not supported; leave them to the model")
        embeds = inputs.get("inputs_embeds")
        embeds = self.embed(inputs["input_ids"]) if embeds is None else embeds
        batch = embeds.shape[0]
        if self.max_positions is not None and embeds.shape[1] + length > self.max_positions:
            raise ConfigError(f"prompt tuning: {embeds.shape[1]} tokens + {length} prompt vectors exceed the "
                              f"model's {self.max_positions} positions; shorten the input or the prompt")
        # Without positions, zeros hold the prompt's place until the positional embeddings have been added.
        inserted = self.vectors(embeds)
        inputs["inputs_embeds"] = self.insert(embeds, torch.zeros_like(inserted) if self.positionless else inserted)
        inputs["input_ids"] = None
        for name, fill in (("attention_mask", 1), ("token_type_ids", 0)):
            if inputs.get(name) is not None:
                x = inputs[name]
                inputs[name] = self.insert(x, torch.full((batch, length), fill, dtype=x.dtype, device=x.device))
        return (), inputs

    def before_decoder(self, module, args, kwargs):
        if not self.prompt.enabled:
            return None
        inputs, length = _bind(module, args, kwargs), self.length
        mask, states = inputs.get("encoder_attention_mask"), inputs.get("encoder_hidden_states")
        if mask is None or states is None or mask.shape[-1] + length != states.shape[1]:
            return None
        inputs["encoder_attention_mask"] = self.insert(mask, mask.new_ones(mask.shape[0], length))
        return (), inputs

    # The real tokens get positions 0..T-1 (the first T of the lengthened input), the prompt none ...
    def before_positions(self, _, args):
        if not self.prompt.enabled:
            return None
        return (args[0][:, :args[0].shape[1] - self.length], *args[1:])

    def after_positions(self, _, __, out):
        if not self.prompt.enabled:
            return None
        return _prepend(out, out.new_zeros(out.shape[0], self.length, out.shape[-1]))

    # ... and the vectors replace their placeholders in the sum that the embedding LayerNorm reads.
    def into_norm(self, x: torch.Tensor):
        if not self.prompt.enabled:
            return None
        return torch.cat([self.vectors(x), x[:, self.length:]], dim=1)


def _first_real(mask: torch.Tensor | None, batch: int, device) -> torch.Tensor:
    """Per row, the index of the first attended token (left padding comes before it)."""
    if mask is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    return mask.long().argmax(-1)


def _insert_at(x: torch.Tensor, inserted: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """x (B, T, ...) with inserted (B, l, ...) placed before column starts[b] of each row: (B, T + l, ...)."""
    length, total = inserted.shape[1], x.shape[1] + inserted.shape[1]
    j = torch.arange(total, device=x.device)[None]
    s = starts[:, None]
    source = torch.where(j < s, j, torch.where(j < s + length, x.shape[1] + j - s, j - length))
    source = source.view(*source.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.cat([x, inserted], dim=1).gather(1, source)


def _remove_at(y: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """The inverse of _insert_at: drops the `length` columns from starts[b] on."""
    j = torch.arange(y.shape[1] - length, device=y.device)[None]
    source = torch.where(j < starts[:, None], j, j + length)
    source = source.view(*source.shape, *([1] * (y.dim() - 2))).expand(-1, -1, *y.shape[2:])
    return y.gather(1, source)


def _past_length(inputs: dict) -> int:
    cache = inputs.get("cache", inputs.get("past_key_values"))
    return cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0


class _CausalPromptHooks:
    """Prompt tuning on a decoder-only model: the l vectors go before the first real token of each row (after BOS
    when the row starts with the model's BOS, the attention sink it was trained with) and take positions like tokens,
    so the real tokens move up by l. The attention mask and position ids given are extended to match; later steps of
    a cached generation find the vectors in the cache, so only their mask and positions are extended. The base
    model's output drops the l positions again: logits, a classifier's last token and labels stay aligned with the
    input ids."""

    def __init__(self, prompt: Prompt, embed: nn.Embedding, bos: int | None, max_positions: int | None):
        self.prompt, self.embed, self.bos, self.max_positions = prompt, embed, bos, max_positions
        self._starts: torch.Tensor | None = None

    def before_model(self, module, args, kwargs):
        self._starts = None
        if not self.prompt.enabled:
            return None
        inputs, length = _bind(module, args, kwargs), self.prompt.vectors.shape[0]
        ids, embeds, mask = inputs.get("input_ids"), inputs.get("inputs_embeds"), inputs.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            raise ConfigError("prompt tuning: a decoder-only model needs a 2-D attention mask (batch, tokens)")
        positions = inputs.get("position_ids")
        if _past_length(inputs):  # a cached step: the vectors are in the cache already, before every new token
            if mask is not None:
                ones = mask.new_ones(mask.shape[0], length)
                inputs["attention_mask"] = _insert_at(mask, ones, _first_real(mask, mask.shape[0], mask.device))
            if positions is not None:
                inputs["position_ids"] = positions + length
            return (), inputs
        embeds = self.embed(ids) if embeds is None else embeds
        batch, device = embeds.shape[0], embeds.device
        if self.max_positions is not None and embeds.shape[1] + length > self.max_positions:
            raise ConfigError(f"prompt tuning: {embeds.shape[1]} tokens + {length} prompt vectors exceed the "
                              f"model's {self.max_positions} positions; shorten the input or the prompt")
        starts = _first_real(mask, batch, device)
        if ids is not None and self.bos is not None:
            starts = starts + (ids.gather(1, starts.clamp(max=ids.shape[1] - 1)[:, None])[:, 0] == self.bos).long()
        vectors = self.prompt.vectors.to(embeds.dtype).expand(batch, -1, -1)
        inputs["inputs_embeds"], inputs["input_ids"] = _insert_at(embeds, vectors, starts), None
        if mask is not None:
            inputs["attention_mask"] = _insert_at(mask, mask.new_ones(batch, length), starts)
        if inputs.get("token_type_ids") is not None:
            types = inputs["token_type_ids"]
            inputs["token_type_ids"] = _insert_at(types, types.new_zeros(batch, length), starts)
        if positions is not None:  # the vectors take the positions from the first one after them on
            first = positions.gather(1, starts.clamp(max=positions.shape[1] - 1)[:, None])
            first = torch.where(starts[:, None] < positions.shape[1], first, positions[:, -1:] + 1)
            moved = positions + length * (torch.arange(positions.shape[1], device=device)[None] >= starts[:, None])
            inputs["position_ids"] = _insert_at(moved, first + torch.arange(length, device=device)[None], starts)
        self._starts = starts
        return (), inputs

    def after_model(self, module, args, output):
        starts, self._starts = self._starts, None
        if starts is None:
            return None
        output["last_hidden_state"] = _remove_at(output["last_hidden_state"], starts, self.prompt.vectors.shape[0])
        return output


class _PositionShift:
    """peft's prefix tuning puts the prefix in the key/value cache, so the real tokens' positions start at l:
    `shift_positions: true` adds l to the position ids a decoder-only model gets, to reproduce it."""

    def __init__(self, shift: int, max_positions: int | None):
        self.shift, self.max_positions = shift, max_positions

    def before_model(self, module, args, kwargs):
        inputs = _bind(module, args, kwargs)
        positions = inputs.get("position_ids")
        if positions is None:  # the model's own default: its tokens after the cached ones
            like = inputs.get("input_ids") if inputs.get("input_ids") is not None else inputs["inputs_embeds"]
            positions = torch.arange(like.shape[1], device=like.device)[None] + _past_length(inputs)
        positions = positions + self.shift
        if self.max_positions is not None and int(positions.max()) >= self.max_positions:
            raise ConfigError(f"prefix tuning: positions shifted by the prefix length {self.shift} exceed the "
                              f"model's {self.max_positions} positions; shorten the input or the prefix")
        inputs["position_ids"] = positions
        return (), inputs


class _Passes:
    """Opens a pass (see PrefixVectors) around each forward of the model."""

    def __init__(self, model: nn.Module, owner: nn.ModuleList, vectors: list[PrefixVectors]):
        self.model, self.owner, self.vectors = model, owner, vectors

    def _own(self, model: nn.Module) -> bool:
        return model._modules.get("unipeft") is self.owner

    def before_forward(self, model: nn.Module, _) -> None:
        passes = self if self._own(model) else _retarget(self.model, model)[id(self)]
        passes.open()
        for vectors in passes.vectors:
            vectors.prime()

    def after_forward(self, model: nn.Module, *_) -> None:
        if self._own(model):
            self.close()

    def open(self) -> None:
        for vectors in self.vectors:
            vectors.open()

    def close(self) -> None:
        for vectors in self.vectors:
            vectors.close()


def _ours(hook) -> bool:
    return isinstance(hook, (_InputHook, _OutputHook)) or isinstance(
        getattr(hook, "__self__", None), (_PromptHooks, _CausalPromptHooks, _PositionShift, _Passes))


_REFERENCES = ("_unipeft_prefixes", "_vectors", "_query", "_norm")  # plain attributes that name modules


def _retarget(original: nn.Module, replica: nn.Module) -> dict:
    """Points a DataParallel replica's hooks at its own modules. replicate() makes new module objects whose hook
    dictionaries and plain attributes are the original's: copying those with a memo that maps each original module
    to its replica gives the replica hooks that call the replica's modules. Returns the memo."""
    pairs = list(zip(original.modules(), replica.modules()))
    memo = {id(o): r for o, r in pairs}
    for o, r in pairs:
        for name in ("_forward_pre_hooks", "_forward_hooks"):
            hooks = getattr(o, name)
            if any(_ours(h) for h in hooks.values()):
                r.__dict__[name] = OrderedDict((k, copy.deepcopy(h, memo) if _ours(h) else h) for k, h in hooks.items())
        for name in _REFERENCES:
            if name in o.__dict__:
                r.__dict__[name] = copy.deepcopy(o.__dict__[name], memo)
    return memo


class _GenerateOnce:
    """`model.generate`, with one pass around the whole call: prefix vectors computed once, not once per step."""

    def __init__(self, model: nn.Module, passes: _Passes):
        self.model, self.passes = model, passes

    def __call__(self, *args, **kwargs):
        self.passes.open()
        try:
            return type(self.model).generate(self.model, *args, **kwargs)
        finally:
            self.passes.close()


class _Annotation:
    """A hooked module's extra_repr with what the attachment does there appended, so that print(model) shows it."""

    def __init__(self, module: nn.Module):
        self.module, self.notes = module, []

    def __call__(self) -> str:
        own = type(self.module).extra_repr(self.module)
        return ", ".join(filter(None, [own, "unipeft: " + "; ".join(self.notes)]))


def _label(index: int, mod: Modification) -> str:
    if mod.position == "embeddings":
        return f"[{index}] prompt l={mod.size}"
    if mod.function == "softmax":
        return f"[{index}] prefix l={mod.size} ({mod.composition}, {mod.reparam})"
    size = f"l={mod.size}" if mod.position == "head" else f"r={mod.size}"
    composition = "" if mod.composition == "add" else f", {mod.composition} s={mod.scale}"
    return f"[{index}] {mod.insertion} {mod.function} Δh {size}{composition}"


_HALF = (torch.float16, torch.bfloat16)


def _adapter_dtype(base: torch.dtype, choice: str | torch.dtype) -> torch.dtype:
    if isinstance(choice, torch.dtype) and choice.is_floating_point:
        return choice
    if choice == "auto":  # as peft: adapters on a half-precision base train in fp32 for stability
        return torch.float32 if base in _HALF else base
    if choice == "base":
        return base
    raise ConfigError(f"adapter_dtype: expected 'auto', 'base' or a floating-point torch.dtype, got {choice!r}")


class Attachment:
    """A method attached to a model: its modules (under `model.unipeft`), hooks, and what it unfroze.

    `adapter_dtype`: 'auto' (fp32 on an fp16/bf16 base, else the base's dtype), 'base', or a torch.dtype."""

    def __init__(self, model: nn.Module, method: Method, adapter_dtype: str | torch.dtype = "auto"):
        if "unipeft" in model._modules:
            raise ConfigError("model: a unipeft method is already attached; detach() it first")
        reference = next(model.parameters())
        dtype = _adapter_dtype(reference.dtype, adapter_dtype)
        self.model, self.method = model, method
        self.arch = architecture_of(model)
        self.base = model.base_model
        from .accounting import base_fingerprint, base_parameter_count
        self.base_params, self.fingerprint = base_parameter_count(model), base_fingerprint(model)
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.prefixed: list[nn.Module] = []
        self.annotated: list[nn.Module] = []
        self.dropout = {side: _model_dropout(model, side) for side in _DROPOUT_KEYS}
        self.norm = _norm(model, self.arch)
        targets = [self._targets(i, m) for i, m in enumerate(method.modifications)]  # check all before changing any
        for i, (mod, ts) in enumerate(zip(method.modifications, targets)):
            self._check_size(i, mod, ts)
        trainable = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            self.container = nn.ModuleList(nn.ModuleDict({t: self._build_target(i, m, t) for t in ts})
                                           for i, (m, ts) in enumerate(zip(method.modifications, targets)))
            self._shift_positions()
        except BaseException:  # leave the model as it was given
            self._remove_hooks()
            for p, flag in zip(model.parameters(), trainable):
                p.requires_grad_(flag)
            raise
        self.container.to(device=reference.device, dtype=dtype).train(model.training)
        vectors = [m for m in self.container.modules() if isinstance(m, PrefixVectors)]
        passes = _Passes(model, self.container, vectors)
        if self.handles or vectors:  # full fine-tuning and BitFit hook nothing
            self.handles.append(model.register_forward_pre_hook(passes.before_forward))
            self.handles.append(model.register_forward_hook(passes.after_forward, always_call=True))
        if vectors and hasattr(type(model), "generate"):
            model.__dict__["generate"] = _GenerateOnce(model, passes)
        model.add_module("unipeft", self.container)
        self._unfreeze()
        self.previous_attention = None
        if self.prefixed:
            self.previous_attention = model.config._attn_implementation
            model.set_attn_implementation(attention.IMPLEMENTATION)
        model.__dict__["_unipeft"] = self

    # building -------------------------------------------------------------------------------------------------
    def _targets(self, index: int, mod: Modification) -> tuple[str, ...]:
        available = _available_targets(self.arch, mod)
        for target in mod.targets or ():
            if target not in available:
                raise ConfigError(f"method {self.method.name!r}.modifications[{index}].targets: "
                                  f"{self.model.config.model_type} has no {target!r} sublayer for position "
                                  f"{mod.position!r} (it has: {', '.join(available)})")
        return mod.targets or available

    def _check_size(self, index: int, mod: Modification, targets: tuple[str, ...]) -> None:
        """A budget the model cannot hold is refused before anything is allocated: more than 4× the base model's
        parameters (full fine-tuning trains 1×) is a typo, not a method."""
        d = self.model.get_input_embeddings().embedding_dim
        layers = sum(len(get(self.base, self.arch.stacks[_stack(t)])) for t in targets) if mod.position != \
            "embeddings" else 1
        estimate = mod.size * 2 * d * layers
        if estimate > 4 * self.base_params:
            raise ConfigError(f"method {self.method.name!r}.modifications[{index}].size: {mod.size:,} would give "
                              f"about {estimate:,} parameters, more than 4× the base model's {self.base_params:,}; "
                              "the architecture cannot hold it")

    def _note(self, module: nn.Module, text: str) -> None:
        annotation = module.__dict__.get("extra_repr")
        if not isinstance(annotation, _Annotation):
            annotation = module.__dict__["extra_repr"] = _Annotation(module)
            self.annotated.append(module)
        annotation.notes.append(text)

    def _columns(self, position: str) -> slice | None:
        """The columns of a fused projection's output that a q, k or v modification owns (GPT-2: thirds of c_attn)."""
        if not (self.arch.self_attention.fused and position in ("q", "k", "v")):
            return None
        layer = get(self.base, self.arch.stacks["decoder"])[0]
        width = features(get(layer, self.arch.self_attention.q))[1] // 3
        i = "qkv".index(position)
        return slice(i * width, (i + 1) * width)

    def _width(self, layer: nn.Module, names: dict, position: str) -> int:
        columns = self._columns(position)
        return features(get(layer, names[position]))[1] if columns is None else columns.stop - columns.start

    def _hook(self, site: Site, reader: nn.Module, read_side: str, writer: nn.Module, write_side: str,
              label: str) -> None:
        self.handles.append(_HOOKS[read_side](reader, site.read))
        self.handles.append(_HOOKS[write_side](writer, site.write))
        size = f"{sum(p.numel() for p in site.parameters()):,} parameters"
        if reader is writer:
            self._note(writer, f"{label} from the {read_side} into the {write_side} ({size})")
        else:
            self._note(reader, f"{label} reads the {read_side}")
            self._note(writer, f"{label} into the {write_side} ({size})")

    def _build_target(self, index: int, mod: Modification, target: str) -> nn.ModuleDict:
        if mod.position == "embeddings":
            return self._build_prompt(index, mod)
        parts = nn.ModuleDict()
        layers = get(self.base, self.arch.stacks[_stack(target)])
        names = _sublayers(self.arch, target)
        o_in, d = features(get(layers[0], names["o"]))  # o_in = heads·d_h, which is not always d (Qwen3)
        dropout = self.dropout[mod.budget_side] if mod.dropout is None else mod.dropout
        label = _label(index, mod)
        if mod.position == "head":
            # l vectors per key/value head: 2·l·n_kv·d_h a layer, 2·l·d without grouped-query attention
            parts["vectors"] = vectors = PrefixVectors(len(layers), d, mod, width=self._width(layers[0], names, "k"))
            if mod.function == "softmax" or mod.query == "scaled":  # computed inside the attention (attention.py)
                what = ("P_k, P_v join the keys and values" if mod.function == "softmax"
                        else "per-head Δh from the attention's own query, added before W_o")
                for i, layer in enumerate(layers):
                    core = get(layer, names["core"])
                    core.__dict__.setdefault("_unipeft_prefixes", []).append(
                        attention.PrefixSlot(vectors, i, mod.composition, mod.form, mod.function, dropout))
                    self.prefixed.append(core)
                    self._note(core, f"{label}: layer {i}'s {what}")
                return parts
        sites = nn.ModuleList()
        if mod.position in PROJECTIONS:  # LoRA and other Δh on one projection: read and write at that module
            columns = self._columns(mod.position)
            for layer in layers:
                members = {}
                for path in paths(names[mod.position]):  # a gated FFN's fc1 is two matrices: one Δh each
                    module = get(layer, path)
                    d_in, d_out = features(module)
                    d_out = d_out if columns is None else columns.stop - columns.start
                    parallel = READ_WRITE[(mod.position, mod.insertion)][0][1] == "input"
                    site = Site(Bottleneck(d_in if parallel else d_out, d_out, mod, dropout, self.norm),
                                Composition(mod), columns, None if parallel else columns)
                    self._hook(site, module, "input" if parallel else "output", module, "output", label)
                    members[path.rsplit(".", 1)[-1]] = site
                sites.append(next(iter(members.values())) if len(members) == 1 else nn.ModuleDict(members))
            parts["layers"] = sites
            return parts
        (read_at, read_side), (write_at, write_side) = READ_WRITE[(mod.position, mod.insertion)]
        renormalised = mod.position == "layer" and self.arch.output_norm is not None
        if renormalised:  # Pfeiffer on a post-LN model: LN(x + h + f(LN(x + h))) with the layer's own LN
            (read_at, read_side), (write_at, write_side) = ("output_norm", "input"), ("output_norm", "output")
        width = {("o", "input"): o_in}  # every other place Δh reads or writes is d wide
        d_in, d_out = width.get((read_at, read_side), d), width.get((write_at, write_side), d)
        for i, layer in enumerate(layers):
            if mod.position == "head":  # the multi-head PA in the official BART file's form (query: unscaled)
                delta = MultiHeadBottleneck(vectors, i, get(layer, names["q"]), _heads(get(layer, names["core"])),
                                            self._width(layer, names, "q"), mod, dropout, self.norm,
                                            self._columns("q") or slice(None))
            else:
                delta = Bottleneck(d_in, d_out, mod, dropout, self.norm)
            site = (RenormalisedSite(delta, Composition(mod), get(layer, names["output_norm"])) if renormalised
                    else Site(delta, Composition(mod)))
            sites.append(site)
            self._hook(site, get(layer, names[read_at]), read_side, get(layer, names[write_at]), write_side, label)
        parts["layers"] = sites
        return parts

    def _build_prompt(self, index: int, mod: Modification) -> nn.ModuleDict:
        """Classifiers: the l vectors go after the first token, so [CLS]/<s> keeps position 0 for the head, and
        take positions like tokens. Encoder-decoders: before every token with no position of their own, as the
        official BART code (`prompt_tuning`: `ef_prefix_emb` joins the input after the positional embeddings are
        added); mBART's source has no BOS, so "after the first token" would split a word off the sentence."""
        encoder = get(self.base, self.arch.encoder)
        embed = get(encoder, self.arch.word_embeddings)
        prompt = Prompt(embed.embedding_dim, mod)
        if self.arch.causal:
            limit = self._max_positions()
            if limit is not None and mod.size >= limit:
                raise ConfigError(f"method {self.method.name!r}.modifications[{index}].size: {mod.size} prompt "
                                  f"vectors leave no room for tokens among the model's {limit} positions")
            hooks = _CausalPromptHooks(prompt, embed, self.model.config.bos_token_id, self._max_positions())
            self.handles.append(encoder.register_forward_pre_hook(hooks.before_model, with_kwargs=True))
            self.handles.append(encoder.register_forward_hook(hooks.after_model))
            self._note(encoder, f"{_label(index, mod)} vectors inserted before the first token "
                                f"({prompt.vectors.numel():,} parameters)")
            return nn.ModuleDict({"prompt": prompt})
        seq2seq = self.arch.decoder is not None
        positionless = seq2seq and self.arch.prompt_norm is not None  # else T5: relative positions only
        max_positions = None if seq2seq else getattr(getattr(encoder, "config", self.model.config),
                                                     "max_position_embeddings", None)
        hooks = _PromptHooks(prompt, embed, _prepend if seq2seq else _insert_after_first, positionless,
                             max_positions)
        self.handles.append(encoder.register_forward_pre_hook(hooks.before_encoder, with_kwargs=True))
        self._note(encoder, f"{_label(index, mod)} vectors inserted into the input ({prompt.vectors.numel():,} "
                            "parameters)")
        if positionless:
            positions, norm = get(encoder, self.arch.prompt_positions), get(encoder, self.arch.prompt_norm)
            self.handles.append(positions.register_forward_pre_hook(hooks.before_positions))
            self.handles.append(positions.register_forward_hook(hooks.after_positions))
            self.handles.append(_on_input(norm, hooks.into_norm))
        if seq2seq:
            decoder = get(self.base, self.arch.decoder)
            self.handles.append(decoder.register_forward_pre_hook(hooks.before_decoder, with_kwargs=True))
        return nn.ModuleDict({"prompt": prompt})

    def _max_positions(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def _shift_positions(self) -> None:
        shift = sum(m.size for m in self.method.modifications if m.shift_positions)
        if not shift:
            return
        if not self.arch.causal:
            raise ConfigError(f"method {self.method.name!r}: shift_positions applies to decoder-only models, whose "
                              f"position ids it shifts; {self.model.config.model_type} is not one")
        limit = self._max_positions()
        if limit is not None and shift >= limit:
            raise ConfigError(f"method {self.method.name!r}: positions shifted by the prefix length {shift} leave no "
                              f"room for tokens among the model's {limit} positions")
        hooks = _PositionShift(shift, limit)
        self.handles.append(self.base.register_forward_pre_hook(hooks.before_model, with_kwargs=True))

    def _unfreeze(self) -> None:
        for p in self.container.parameters():
            p.requires_grad_(True)
        if self.method.unfreeze == "all":
            for p in self.model.parameters():
                p.requires_grad_(True)
        elif self.method.unfreeze == "bias":
            biases = [p for n, p in self.base.named_parameters() if n.endswith("bias") and not n.startswith("unipeft.")]
            if not biases:
                raise ConfigError(f"method {self.method.name!r}.unfreeze: {self.model.config.model_type} has no "
                                  "bias parameters to train")
            for p in biases:
                p.requires_grad_(True)
        if self.method.train_head:
            for p in self.head_parameters().values():
                p.requires_grad_(True)

    # queries --------------------------------------------------------------------------------------------------
    def _check_attached(self, action: str) -> None:
        if self.model.__dict__.get("_unipeft") is not self:
            raise RuntimeError(f"{action}: this attachment was detached from its model; attach the method again "
                               "(unipeft.attach or unipeft.load) to use it")

    def head_parameters(self) -> dict[str, nn.Parameter]:
        """Task-head parameters: those of the model outside its base model. A language model's output embeddings
        are pretrained, tied or not (Llama-3's and T5 v1.1's untied lm_head: 525M parameters on Llama-3-8B), so
        they are not a task head; nor is their bias (BERT's LM head; BART's is a buffer)."""
        output = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        pretrained = {id(p) for p in self.base.parameters()}
        pretrained |= {id(p) for p in (output.parameters() if output is not None else ())}
        return {n: p for n, p in self.model.named_parameters()
                if id(p) not in pretrained and not n.startswith("unipeft.")}

    def sites(self) -> list[Site]:
        return [m for m in self.container.modules() if isinstance(m, Site)]

    def state_dict(self, fold: bool = True) -> dict[str, torch.Tensor]:
        """Every trained tensor, by its name in the model; `fold` stores prefix MLPs as their output vectors."""
        self._check_attached("state_dict()")
        state = {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}
        if fold:
            for name, module in self.container.named_modules():
                if isinstance(module, PrefixVectors) and hasattr(module, "mlp"):
                    prefix = f"unipeft.{name}."
                    state = {n: t for n, t in state.items() if not n.startswith(prefix)}
                    with torch.no_grad():
                        state[prefix + "vectors"] = module.compute().detach()
        return {n: t.contiguous() for n, t in state.items()}

    def summary(self) -> str:
        """What is attached where: a line for the method, then one per adapted sublayer, by its path in the model."""
        self._check_attached("summary()")
        counts = self.counts()
        lines = [f"{self.method.name}: {counts.trainable:,} trainable parameters ({counts.trainable_percent}% of the "
                 f"base model, {counts.head:,} of them the task head); base weights trained: {self.method.unfreeze}"]
        for name, module in self.model.named_modules():
            annotation = module.__dict__.get("extra_repr")
            if isinstance(annotation, _Annotation):
                lines.append(f"  {name}: {'; '.join(annotation.notes)}")
        return "\n".join(lines)

    # actions --------------------------------------------------------------------------------------------------
    def counts(self, paper_denominator: int | None = None):
        from .accounting import counts
        self._check_attached("counts()")
        return counts(self, paper_denominator)

    def save(self, directory) -> None:
        from .checkpoint import save
        self._check_attached("save()")
        save(self, directory)

    def projection_sites(self):
        """(modification index, modification, target, layer, site, projection module) for every Δh on a projection;
        a gated FFN's fc1 gives one entry per matrix, GPT-2's q, k, v the fused c_attn with the site's columns."""
        for index, (mod, per_target) in enumerate(zip(self.method.modifications, self.container)):
            if mod.position not in PROJECTIONS:
                continue
            for target, parts in per_target.items():
                layers = get(self.base, self.arch.stacks[_stack(target)])
                for i, (entry, layer) in enumerate(zip(parts["layers"], layers)):
                    for path in paths(_sublayers(self.arch, target)[mod.position]):
                        site = entry if isinstance(entry, Site) else entry[path.rsplit(".", 1)[-1]]
                        yield index, mod, target, i, site, get(layer, path)

    def _mergeable(self, action: str) -> list[tuple[Site, nn.Module]]:
        self._check_attached(action)
        pairs = [(site, module) for _, mod, _, _, site, module in self.projection_sites()
                 if mod.insertion == "parallel" and mod.function == "identity" and mod.layer_norm == "none"]
        if not pairs:
            raise ConfigError(f"method {self.method.name!r}: nothing to merge; only LoRA-style modifications "
                              "(a linear parallel Δh on a projection) fold into the base weights")
        return pairs

    @staticmethod
    def _fold(site: Site, module: nn.Module, sign: float) -> None:
        delta = sign * site.compose.scale * site.delta.delta_weight()  # (out, in)
        columns = slice(None) if site.columns is None else site.columns
        if isinstance(module, nn.Linear):
            module.weight[columns] += delta.to(module.weight.dtype)
        else:  # Conv1D stores its weight as (in, out)
            module.weight[:, columns] += delta.T.to(module.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold every LoRA-style Δh into its projection: W ← W + s·W_up W_down."""
        for site, module in self._mergeable("merge()"):
            if not site.merged:
                self._fold(site, module, 1.0)
                site.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        for site, module in self._mergeable("unmerge()"):
            if site.merged:
                self._fold(site, module, -1.0)
                site.merged = False

    @contextlib.contextmanager
    def disabled(self):
        """`with attachment.disabled():` runs the base model: every hook passes its input through, nothing is
        removed. A trained task head stays (it is the model's own module)."""
        self._check_attached("disabled()")
        if self.method.unfreeze != "none":
            raise RuntimeError(f"disabled(): method {self.method.name!r} trains the base weights themselves "
                               f"(unfreeze: {self.method.unfreeze}); there is no untouched base model to run")
        if any(s.merged for s in self.sites()):
            raise RuntimeError("disabled(): the LoRA-style Δh are merged into the base weights; unmerge() first")
        switches = [m for m in self.container.modules() if hasattr(m, "enabled")]
        for module in switches:
            module.enabled = False
        if self.previous_attention is not None:
            self.model.set_attn_implementation(self.previous_attention)
        try:
            yield self.model
        finally:
            for module in switches:
                module.enabled = True
            if self.previous_attention is not None:
                self.model.set_attn_implementation(attention.IMPLEMENTATION)

    def _remove_hooks(self) -> None:
        for handle in self.handles:
            handle.remove()
        for core in self.prefixed:
            core.__dict__.pop("_unipeft_prefixes", None)
        for module in self.annotated:
            module.__dict__.pop("extra_repr", None)
        if isinstance(self.model.__dict__.get("generate"), _GenerateOnce):
            del self.model.__dict__["generate"]

    def detach(self) -> None:
        """Remove hooks and modules (unmerging first), leaving the base model as it was, still frozen. A second
        call does nothing."""
        if self.model.__dict__.get("_unipeft") is not self:
            return
        if any(s.merged for s in self.sites()):
            self.unmerge()
        self._remove_hooks()
        if self.previous_attention is not None:
            self.model.set_attn_implementation(self.previous_attention)
        del self.model._modules["unipeft"]
        self.model.__dict__.pop("_unipeft", None)


def attach(model: nn.Module, method: str | dict | Method, *, attn_bn: int | None = None, ffn_bn: int | None = None,
           scale: float | str | None = None, adapter_dtype: str | torch.dtype = "auto") -> Attachment:
    """Freeze `model` and attach `method` (a preset name, a mapping or a Method), optionally re-budgeted.
    `adapter_dtype` 'auto' keeps the adapter in fp32 on an fp16/bf16 model ('base': the model's dtype)."""
    return Attachment(model, resolve(method).with_budget(attn_bn, ffn_bn, scale), adapter_dtype)


def attachment_of(model: nn.Module) -> Attachment:
    if "_unipeft" not in model.__dict__:
        raise ConfigError("model: no unipeft method is attached")
    return model.__dict__["_unipeft"]
