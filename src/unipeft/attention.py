"""Head-level softmax modifications (prefix tuning and its gated form) as a transformers attention function.

transformers 5 routes every attention through `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`, after the
key/value cache update. Registering "unipeft" there lets a prefix join the keys and values of exactly the
attention modules that carry one, while the cache never holds it; everything else is plain SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .functions import PrefixVectors

IMPLEMENTATION = "unipeft"


@dataclass
class PrefixSlot:
    """What one attention module needs to find its prefix: layer `layer` of `vectors`, and how to compose it."""

    vectors: PrefixVectors
    layer: int
    composition: str  # gate (prefix tuning) or add (the -gating ablation)
    form: str  # concat or gated (Eq. 7-9 written out); equal for composition gate


def _per_head(prefix: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(l, d) → (B, H, l, d_h), matching the batch (beams included) and heads of `like`."""
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
    logits = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    probs = torch.nn.functional.dropout(torch.exp(logits - lse), p=dropout, training=training)
    return torch.matmul(probs, value), lse


def unipeft_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    slots = [s for s in module.__dict__.get("_unipeft_prefixes", ()) if s.vectors.enabled]
    if not slots:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    kwargs.pop("is_causal", None)  # the prefix columns make the mask explicit
    bias = kwargs.pop("position_bias", None)  # T5's relative position bias; prefixes have no position
    mask = _explicit_mask(module, attention_mask, query, key)
    concat = [s for s in slots if s.composition == "gate" and s.form == "concat"]
    for slot in concat:  # Li & Liang's form: head = Attn(q, [P_k; K], [P_v; V])
        p_k, p_v = (_per_head(p, query) for p in slot.vectors()[slot.layer])
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
        p_k, p_v = (_per_head(p, query) for p in slot.vectors()[slot.layer])
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
