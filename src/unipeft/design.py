"""The design space of the paper (He et al. 2022, §3.2 and Table 1) as data.

A `Modification` is one point of that space: Δh = f(x W_down) W_up, read from the input (parallel) or
the output (sequential) of a sublayer, composed into a hidden state h by adding, scaled adding or
gating. A `Method` is a tuple of modifications plus the base-model parameters it unfreezes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

POSITIONS = ("embeddings", "head", "attn", "ffn", "layer", "q", "k", "v", "o", "fc1", "fc2")
"""Which representation Δh modifies:
embeddings  prompt tuning: l vectors inserted into the encoder input;
head        per-head attention output (prefix tuning, multi-head PA), before W_o;
attn        the attention sublayer (parallel: added before W_o; sequential: after W_o);
ffn         the feed-forward sublayer output, before its residual add;
layer       the whole layer output, after the FFN's add & layer norm (Pfeiffer placement);
q k v o fc1 fc2  one projection of the sublayer (LoRA)."""
PROJECTIONS = ("q", "k", "v", "o", "fc1", "fc2")
ATTENTION_SIDE = ("embeddings", "head", "attn", "q", "k", "v", "o")
FFN_SIDE = ("ffn", "layer", "fc1", "fc2")
FUNCTIONS = ("relu", "identity", "softmax")
INSERTIONS = ("parallel", "sequential")
COMPOSITIONS = ("add", "scale", "gate")
TARGETS = ("encoder", "decoder", "cross")
"""encoder/decoder: the self-attention or FFN sublayers of that stack; cross: decoder cross-attention."""
UNFREEZE = ("none", "bias", "all")
INITS = {
    # adapters and LoRA: N(0, 0.02) weights (the official Adapter_Layer), or LoRA's Kaiming-uniform down, zero up
    "bottleneck": ("bert", "lora"),
    # prefix vectors P_k, P_v: the official code's (PyTorch defaults for the MLP, N(0, 0.02) for direct vectors),
    # or the same with the P_v path zeroed, so that Δh starts at 0 as LoRA's does
    "head": ("official", "lora"),
}
QUERIES = ("scaled", "unscaled")
"""The query of a multi-head PA: `scaled` is q exactly as the attention computes it, (x W_q + b)·d_h^-1/2 (the
official mBART and RoBERTa code); `unscaled` is x W_q + b without the scaling (its BART file, used with an input
LayerNorm)."""


class ConfigError(ValueError):
    """A method or modification that is not a valid point of the design space; the message names the key."""


def _default_function(position: str) -> str | None:
    if position == "embeddings":
        return None
    if position == "head":
        return "softmax"
    return "identity" if position in PROJECTIONS else "relu"


@dataclass(frozen=True)
class Modification:
    """One Δh. Fields left as None take the paper's default for the position (see `_resolve`)."""

    position: str
    size: int  # bottleneck r, or prefix/prompt length l
    function: str | None = None  # f: relu (adapters), identity (LoRA), softmax (prefix tuning)
    insertion: str = "parallel"  # Δh from the sublayer input x (parallel) or its output h (sequential)
    composition: str | None = None  # add: h + Δh; scale: h + s·Δh; gate: (1-λ)h + λΔh
    scale: float | str = 1.0  # s, or "learned" (a trainable scalar initialised to 1)
    init: str | None = None  # bert: N(0, 0.02) down and up; lora: Kaiming-uniform down, zero up (see INITS)
    layer_norm: str = "none"  # a trainable LayerNorm on the adapter input (in) or output (out)
    dropout: float | None = None  # None: the model's own dropout
    targets: tuple[str, ...] | None = None  # None: every sublayer of this kind that the model has
    reparam: str = "mlp"  # P_k, P_v of a head modification: Li & Liang's MLP, or learned directly
    mid_dim: int = 800  # hidden size of that MLP
    form: str = "concat"  # a gated softmax head: concatenate P to K/V, or Eq. 7-9 written out
    query: str = "scaled"  # a ReLU head (MH PA): the attention's own query (scaled) or W_q x without 1/sqrt(d_h)
    # A prefix on a decoder-only model: the real tokens keep positions 0…n−1 (false; Eq. 7 has no positions) or
    # start at l (true), as peft's prefix tuning, which puts the prefix in the key/value cache, gives them.
    shift_positions: bool = False

    def __post_init__(self) -> None:
        _resolve(self)

    @property
    def budget_side(self) -> str:
        return "attn" if self.position in ATTENTION_SIDE else "ffn"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["targets"] = None if self.targets is None else list(self.targets)
        return out


def _set(obj: Modification, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # the dataclass is frozen; resolution happens once, at creation


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _resolve(m: Modification) -> None:
    _check(m.position in POSITIONS, "position", f"unknown position {m.position!r}; expected one of {POSITIONS}")
    _check(isinstance(m.size, int) and not isinstance(m.size, bool) and m.size > 0, "size",
           f"must be a positive integer, got {m.size!r}")
    if m.function is None:
        _set(m, "function", _default_function(m.position))
    if m.composition is None:
        _set(m, "composition", "gate" if m.function == "softmax" else ("add" if m.scale == 1.0 else "scale"))
    if m.init is None:
        _set(m, "init", "official" if m.position == "head" else "lora" if m.function == "identity" else "bert")
    if m.targets is not None:
        _set(m, "targets", tuple(m.targets) if isinstance(m.targets, (list, tuple)) else (m.targets,))

    if m.position == "embeddings":
        _check(m.function is None, "function", "prompt tuning (position 'embeddings') has no functional form")
        _check(m.targets in (None, ("encoder",), ("decoder",)), "targets",
               "prompt tuning inserts vectors into one input: the encoder's, or a decoder-only model's")
        return
    _check(m.function in FUNCTIONS, "function", f"unknown function {m.function!r}; expected one of {FUNCTIONS}")
    _check(m.insertion in INSERTIONS, "insertion", f"unknown insertion {m.insertion!r}; expected one of {INSERTIONS}")
    _check(m.composition in COMPOSITIONS, "composition",
           f"unknown composition {m.composition!r}; expected one of {COMPOSITIONS}")
    inits = INITS["head" if m.position == "head" else "bottleneck"]
    _check(m.init in inits, "init", f"unknown init {m.init!r} for position {m.position!r}; expected one of {inits}")
    _check(m.query in QUERIES, "query", f"unknown query {m.query!r}; expected one of {QUERIES}")
    _check(m.layer_norm in ("in", "out", "none"), "layer_norm",
           f"unknown layer_norm {m.layer_norm!r}; expected 'in', 'out' or 'none'")
    _check(m.reparam in ("mlp", "direct"), "reparam", f"unknown reparam {m.reparam!r}; expected 'mlp' or 'direct'")
    _check(m.form in ("concat", "gated"), "form", f"unknown form {m.form!r}; expected 'concat' or 'gated'")
    _check(isinstance(m.mid_dim, int) and m.mid_dim > 0, "mid_dim", f"must be a positive integer, got {m.mid_dim!r}")
    _check(m.dropout is None or (isinstance(m.dropout, (int, float)) and 0 <= m.dropout < 1), "dropout",
           f"must be in [0, 1), got {m.dropout!r}")
    if m.targets is not None:
        for target in m.targets:
            _check(target in TARGETS, "targets", f"unknown target {target!r}; expected some of {TARGETS}")
        _check(len(m.targets) > 0, "targets", "must name at least one of encoder, decoder, cross, or be left out")
        _check(m.position not in FFN_SIDE or "cross" not in m.targets, "targets",
               f"position {m.position!r} has no cross-attention sublayer")

    if m.scale == "learned":
        _check(m.composition == "scale", "scale", "a learned scale needs composition 'scale'")
    else:
        _check(isinstance(m.scale, (int, float)) and not isinstance(m.scale, bool) and m.scale > 0, "scale",
               f"must be a positive number or 'learned', got {m.scale!r}")
        _set(m, "scale", float(m.scale))
        _check(m.composition == "scale" or m.scale == 1.0, "scale",
               f"s={m.scale} is set but composition is {m.composition!r}, not 'scale'")
    _check(m.function == "softmax" or m.composition != "gate", "composition",
           "gating needs the softmax (prefix) function, whose attention mass gives the gate λ")
    _check(m.function != "softmax" or m.position == "head", "function",
           "the softmax (prefix) function acts on per-head attention: use position 'head'")
    _check(m.function != "softmax" or m.composition in ("gate", "add"), "composition",
           "a prefix composes by gating (prefix tuning) or adding (the -gating ablation)")
    _check(isinstance(m.shift_positions, bool), "shift_positions", f"must be true or false, got {m.shift_positions!r}")
    _check(not m.shift_positions or m.function == "softmax", "shift_positions",
           "shifts the positions of the tokens after a prefix: it needs the softmax (prefix) function")
    _check(m.function == "softmax" or m.position != "head" or m.query == "unscaled" or m.layer_norm == "none",
           "layer_norm", "query 'scaled' is the attention's own query, which no adapter LayerNorm can precede; use "
           "query 'unscaled' for LN(x) W_q")
    _check(m.position != "head" or m.insertion == "parallel", "insertion",
           "head-level modifications read the attention input: insertion must be 'parallel'")
    _check(m.position != "layer" or m.insertion == "sequential", "insertion",
           "position 'layer' reads the layer output: insertion must be 'sequential'")


@dataclass(frozen=True)
class Method:
    """A PEFT method: its modifications and which base-model parameters it trains besides them."""

    name: str
    modifications: tuple[Modification, ...] = ()
    unfreeze: str = "none"  # none | bias (BitFit) | all (full fine-tuning)
    train_head: bool = True  # a task head (classifier) trains; see docs/design-space.md on the official code's quirk
    notes: str = ""

    def __post_init__(self) -> None:
        _check(self.unfreeze in UNFREEZE, f"method {self.name!r}.unfreeze",
               f"unknown value {self.unfreeze!r}; expected one of {UNFREEZE}")
        _check(bool(self.modifications) or self.unfreeze != "none", f"method {self.name!r}",
               "has no modification and unfreezes nothing")

    def budget_keys(self) -> tuple[str, ...]:
        """The budget keys some modification of this method uses: attn_bn (attention side: l or r), ffn_bn (FFN
        side: r), scale (s of a scaled composition)."""
        sides = {m.budget_side for m in self.modifications}
        used = {"attn_bn": "attn" in sides, "ffn_bn": "ffn" in sides,
                "scale": any(m.composition == "scale" for m in self.modifications)}
        return tuple(key for key, is_used in used.items() if is_used)

    def applicable_budget(self, budget: dict[str, Any]) -> dict[str, Any]:
        """The keys of `budget` (attn_bn, ffn_bn, scale) that this method uses and that are set; a budget written
        for methods in general (the pipeline's single experiment) applies to each method's own sides."""
        return {k: v for k, v in budget.items() if k in self.budget_keys() and v is not None}

    def with_budget(self, attn_bn: int | None = None, ffn_bn: int | None = None,
                    scale: float | str | None = None) -> "Method":
        """The same method with new bottleneck sizes (attention side: l or r; FFN side: r) or scale s.
        A budget that no modification uses is refused rather than ignored."""
        given = {"attn_bn": attn_bn, "ffn_bn": ffn_bn, "scale": scale}
        for key, value in given.items():
            _check(value is None or key in self.budget_keys(), f"method {self.name!r}.{key}",
                   f"{value!r} is set but no modification of this method uses it "
                   f"(it uses: {', '.join(self.budget_keys()) or 'no budget'})")
        mods = []
        for i, m in enumerate(self.modifications):
            size = {"attn": attn_bn, "ffn": ffn_bn}[m.budget_side]
            changes: dict[str, Any] = {} if size is None else {"size": size}
            if scale is not None and m.composition == "scale":
                changes["scale"] = scale
            try:
                mods.append(dataclasses.replace(m, **changes) if changes else m)
            except ConfigError as err:
                raise ConfigError(f"method {self.name!r}.modifications[{i}].{err}") from None
        return dataclasses.replace(self, modifications=tuple(mods))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "unfreeze": self.unfreeze, "train_head": self.train_head,
                "modifications": [m.to_dict() for m in self.modifications]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str | None = None) -> "Method":
        if not isinstance(data, dict):
            raise ConfigError(f"method {name!r}: expected a mapping, got {type(data).__name__}")
        name = data.get("name", name) or "custom"
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            _check(key in known, f"method {name!r}", f"unknown key {key!r}; expected some of {sorted(known)}")
        mods = data.get("modifications", [])
        _check(isinstance(mods, list), f"method {name!r}.modifications", "expected a list")
        return cls(name=name, modifications=tuple(modification_from_dict(m, f"method {name!r}.modifications[{i}]")
                                                  for i, m in enumerate(mods)),
                   unfreeze=data.get("unfreeze", "none"), train_head=data.get("train_head", True),
                   notes=data.get("notes", ""))


_MOD_FIELDS = {f.name for f in dataclasses.fields(Modification)}


def modification_from_dict(data: Any, where: str) -> Modification:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    for key in data:
        _check(key in _MOD_FIELDS, where, f"unknown key {key!r}; expected some of {sorted(_MOD_FIELDS)}")
    for key in ("position", "size"):
        _check(key in data, where, f"missing required key {key!r}")
    try:
        return Modification(**data)
    except ConfigError as err:
        raise ConfigError(f"{where}.{err}") from None


__all__ = ["ConfigError", "Method", "Modification", "modification_from_dict", "POSITIONS", "TARGETS"]
