"""Head-level modifications (prefix tuning, its gated form, the multi-head parallel adapter) as a transformers
attention function.

transformers 5 routes every attention through `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`, after the
key/value cache update and after rotary positions and q/k norms are applied. Registering "unipeft" there lets a
prefix join the keys and values of exactly the attention modules that carry one, while the cache never holds it,
and gives the multi-head PA the query exactly as the attention computes it; everything else is plain SDPA.

Grouped-query attention: the keys and values arrive with n_kv heads, fewer than the query's. A prefix has l vectors
per key/value head, joined to that head's keys and values, so it serves the head's group of query heads as the
keys do. The prefix keys carry no rotation and the real tokens keep their positions 0…n−1: Eq. 7 has no positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .functions import PrefixVectors, per_query_head

IMPLEMENTATION = "unipeft"


@dataclass
class PrefixSlot:
    """What one attention module needs to find its prefix: layer `layer` of `vectors`, and how to compose it."""

    vectors: PrefixVectors
    layer: int
    composition: str  # gate (prefix tuning) or add (the -gating ablation, and the multi-head PA)
    form: str  # concat or gated (Eq. 7-9 written out); equal for composition gate
    function: str = "softmax"  # softmax: prefix tuning; relu (or identity): the multi-head parallel adapter
    dropout: float = 0.0  # the multi-head PA's, on its hidden units

    def multi_head_delta(self, query: torch.Tensor, scaling: float, training: bool) -> torch.Tensor:
        """Per query head i: f(q_i P_k,i^T) P_v,i with q·scaling as the attention uses it, (B, H, T, d_h)."""
        heads, head_dim = query.shape[1], query.shape[-1]
        p_k, p_v = (per_query_head(p, heads, head_dim) for p in self.vectors()[self.layer])  # (H, l, dh)
        hidden = torch.matmul((query * scaling).to(p_k.dtype), p_k.transpose(-1, -2))
        hidden = torch.relu(hidden) if self.function == "relu" else hidden
        hidden = torch.nn.functional.dropout(hidden, p=self.dropout, training=training)
        return torch.matmul(hidden, p_v).to(query.dtype)


def _per_head(prefix: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(l, n_kv·d_h) → (B, n_kv, l, d_h), matching the batch (beams included) and key/value heads of `like`."""
    batch, heads = like.shape[:2]
    return prefix.unflatten(-1, (heads, -1)).transpose(0, 1).expand(batch, -1, -1, -1).to(like.dtype)


def _explicit_mask(module, mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor):
    """The mask SDPA would apply, made explicit (bool, True = attend) so that columns can be prepended to it."""
    q_len, kv_len = query.shape[2], key.shape[2]
    if mask is None:
        if not (getattr(module, "is_causal", False) and q_len > 1):
            return None
        offset = kv_len - q_len  # queries are the last q_len positions of the keys
        rows = torch.arange(q_len, device=query.device)[:, None] + offset
        return (rows >= torch.arange(kv_len, device=query.device)[None, :])[None, None]
    return mask


def _prepend(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    if mask is None:
        return None
    attend = torch.ones if mask.dtype == torch.bool else torch.zeros  # bool mask or additive float mask
    return torch.cat([attend(*mask.shape[:-1], length, dtype=mask.dtype, device=mask.device), mask], dim=-1)


def _attend(query, key, value, mask, scaling, dropout, training, bias):
    """softmax(q k^T · scaling + bias + mask) v, with the log-sum-exp of the logits (for the gate λ of Eq. 8)."""
    groups = query.shape[1] // key.shape[1]  # grouped-query attention: each key/value head serves `groups` queries
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    logits = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    # A query that may attend to nothing (a left-padding position) gets 0, not exp(-inf + inf) = NaN, which would
    # reach real tokens through 0·NaN in later layers; its λ is then 1 (the prefix alone), as in the concat form.
    probs = torch.exp(logits - lse.masked_fill(torch.isneginf(lse), 0.0))
    probs = torch.nn.functional.dropout(probs, p=dropout, training=training)
    return torch.matmul(probs, value), lse


def unipeft_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    slots = [s for s in module.__dict__.get("_unipeft_prefixes", ()) if s.vectors.enabled]
    prefixes = [s for s in slots if s.function == "softmax"]
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    if prefixes:
        output, _ = _prefixed_attention(module, prefixes, query, key, value, attention_mask, dropout, scale, kwargs)
    else:
        output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                           scaling=scaling, **kwargs)
    for slot in slots:  # the multi-head PA: h + Δh per head, before W_o
        if slot.function != "softmax":
            output = output + slot.multi_head_delta(query, scale, module.training).transpose(1, 2)
    return output, None


def _prefixed_attention(module, slots, query, key, value, attention_mask, dropout, scaling, kwargs):
    kwargs.pop("is_causal", None)  # the prefix columns make the mask explicit
    bias = kwargs.pop("position_bias", None)  # T5's relative position bias; prefixes have no position
    mask = _explicit_mask(module, attention_mask, query, key)
    concat = [s for s in slots if s.composition == "gate" and s.form == "concat"]
    for slot in concat:  # Li & Liang's form: head = Attn(q, [P_k; K], [P_v; V])
        p_k, p_v = (_per_head(p, key) for p in slot.vectors()[slot.layer])
        key, value = torch.cat([p_k, key], dim=2), torch.cat([p_v, value], dim=2)
        mask = _prepend(mask, p_k.shape[2])
        bias = None if bias is None else _prepend(bias.expand(query.shape[0], -1, -1, -1), p_k.shape[2])
    explicit = [s for s in slots if s not in concat]
    if not explicit:
        output, _ = sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling,
                                           is_causal=False, position_bias=bias, **kwargs)
        return output, None
    # The unified view written out (Eq. 7-9): h ← (1-λ) h + λ Δh, or h + Δh without the gate.
    output, lse = _attend(query, key, value, mask, scaling, dropout, module.training, bias)
    for slot in explicit:
        p_k, p_v = (_per_head(p, key) for p in slot.vectors()[slot.layer])
        delta, lse_prefix = _attend(query, p_k, p_v, None, scaling, dropout, module.training, None)
        if slot.composition == "gate":
            gate = torch.sigmoid(lse_prefix - lse)  # λ(x) = Σexp(prefix logits) / Σexp(all logits)
            output = (1 - gate) * output + gate * delta
            lse = torch.logaddexp(lse, lse_prefix)
        else:
            output = output + delta
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(IMPLEMENTATION, unipeft_attention)
AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
