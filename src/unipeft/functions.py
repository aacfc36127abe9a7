"""The functional-form dimension: modules that compute Δh, and the composition that adds it to h.

Each module reports `paper_params()`, its size in the paper's convention (Appendix B): projection
weights and final prefix vectors only, no biases, no layer norms, no prefix MLP.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .architectures import features
from .design import Modification


def _init_bottleneck(down: nn.Linear, up: nn.Linear, init: str) -> None:
    if init == "bert":  # the official Adapter_Layer: N(0, 0.02) weights, zero biases
        nn.init.normal_(down.weight, std=0.02)
        nn.init.normal_(up.weight, std=0.02)
    else:  # LoRA's init, used by LoRA and the scaled PA: Kaiming-uniform down, zero up, so Δh = 0 at start
        nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
        nn.init.zeros_(up.weight)
    for bias in (down.bias, up.bias):
        if bias is not None:
            nn.init.zeros_(bias)


class Bottleneck(nn.Module):
    """Δh = f(LN(x) W_down) W_up: an adapter (f = ReLU, with biases) or LoRA (f = identity, no biases).

    Dropout follows each family's reference code: on the input for LoRA, on the hidden units for adapters.
    """

    def __init__(self, d_in: int, d_out: int, mod: Modification, dropout: float,
                 norm: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.function = mod.function
        bias = mod.function != "identity"
        self.norm_in = norm(d_in) if mod.layer_norm == "in" else None
        self.down = nn.Linear(d_in, mod.size, bias=bias)
        self.up = nn.Linear(mod.size, d_out, bias=bias)
        self.norm_out = norm(d_out) if mod.layer_norm == "out" else None
        self.dropout = nn.Dropout(dropout)
        _init_bottleneck(self.down, self.up, mod.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.down.weight.dtype)
        if self.norm_in is not None:
            x = self.norm_in(x)
        if self.function == "identity":
            hidden = self.down(self.dropout(x))
        else:
            hidden = self.dropout(torch.relu(self.down(x)))
        out = self.up(hidden)
        return self.norm_out(out) if self.norm_out is not None else out

    def paper_params(self) -> int:
        return self.down.weight.numel() + self.up.weight.numel()

    def delta_weight(self) -> torch.Tensor:
        """W_down W_up as a weight of shape (d_out, d_in), for merging a linear Δh into its projection."""
        return self.up.weight @ self.down.weight


def _keep(x: torch.Tensor) -> torch.Tensor:
    return x


class PrefixVectors(nn.Module):
    """P_k and P_v of every layer of one attention type, shape (layers, 2, l, width).

    `width` is what the attention's keys have: d, or n_kv·d_head under grouped-query attention, where a key/value
    head's prefix is shared by that head's group of query heads (as its keys are).

    `mlp` is Li & Liang's re-parameterisation (Embedding(l, d) → Linear(d, mid) → tanh → Linear(mid, 2·layers·width)),
    a training-time cost that `fold()` removes; `direct` learns the vectors themselves, N(0, 0.02).

    The vectors are computed once per pass and shared by all layers; the attachment opens a pass around each forward
    of the model and around each `generate` call. Nothing is kept between passes, so writes through `.data`, dtype
    and device moves are always seen.
    """

    def __init__(self, layers: int, d: int, mod: Modification, width: int | None = None):
        super().__init__()
        width = d if width is None else width
        self.shape = (layers, 2, mod.size, width)
        if mod.reparam == "mlp":
            self.embedding = nn.Embedding(mod.size, d)
            self.mlp = nn.Sequential(nn.Linear(d, mod.mid_dim), nn.Tanh(), nn.Linear(mod.mid_dim, layers * 2 * width))
        else:
            self.vectors = nn.Parameter(torch.randn(self.shape) * 0.02)
        if mod.init == "lora":
            self._zero_values()
        self.enabled = True  # False inside Attachment.disabled()
        self._pass: dict[bool, torch.Tensor] | None = None  # this pass's vectors, by grad mode
        self._depth = 0  # passes nest: a forward inside generate joins generate's

    @torch.no_grad()
    def _zero_values(self) -> None:
        """P_v = 0 at the start (LoRA's zero up-projection applied to the prefix's value path): a Δh that is
        linear in P_v then starts at 0, while P_v still gets a gradient through the non-zero P_k."""
        if hasattr(self, "vectors"):
            self.vectors[:, 1] = 0
            return
        last = self.mlp[-1]
        is_value = torch.arange(last.out_features).view(self.shape[0], 2, -1)[:, 1].flatten()  # (layers, k/v, d)
        last.weight[is_value] = 0
        last.bias[is_value] = 0

    def compute(self) -> torch.Tensor:
        if hasattr(self, "vectors"):
            return self.vectors
        l, width = self.shape[2], self.shape[3]
        out = self.mlp(self.embedding.weight)  # (l, layers·2·width)
        return out.view(l, self.shape[0], 2, width).permute(1, 2, 0, 3)

    def forward(self) -> torch.Tensor:
        if self._pass is None:
            # Outside a pass: a sublayer run on its own, or a checkpointed layer recomputed during backward. A
            # reentrant checkpoint needs this: its backward runs once per layer, so each layer needs a graph of the
            # MLP of its own. The saved-tensor hooks are bypassed so that a non-reentrant checkpoint's recomputation
            # saves exactly what its first run saved (the MLP ran outside it, in prime()).
            with torch.autograd.graph.saved_tensors_hooks(_keep, _keep):
                return self.compute()
        grad = torch.is_grad_enabled()
        if grad not in self._pass:
            self._pass[grad] = self.compute()
        return self._pass[grad]

    def open(self) -> None:
        if self._depth == 0:
            self._pass = {}
        self._depth += 1

    def close(self) -> None:
        self._depth = max(self._depth - 1, 0)
        if self._depth == 0:
            self._pass = None

    def prime(self) -> None:
        """Computes the vectors before the layers run, outside any activation checkpoint, so that a checkpoint
        never records the MLP."""
        if self.enabled:
            self()

    def paper_params(self) -> int:
        return math.prod(self.shape)


class MultiHeadBottleneck(nn.Module):
    """Multi-head parallel adapter in the official BART file's form (`query: unscaled`): per head i,
    Δh_i = ReLU(q^(i) P_k^(i)T) P_v^(i) with q = LN(x) W_q + b computed here from the attention's input, without the
    1/sqrt(d_h) scaling, rotary positions or q-norm the attention applies; added before W_o. The `scaled` form, the
    attention's own query, is computed inside the attention function (attention.py).

    P_k, P_v are prefix vectors, l per key/value head: under grouped-query attention each serves its group of query
    heads. W_q is frozen, so each head gets its own bottleneck at the cost of one PA of size l (the paper's Table 4).
    """

    def __init__(self, vectors: PrefixVectors, layer: int, query: nn.Module, heads: int, query_width: int,
                 mod: Modification, dropout: float, norm: Callable[[int], nn.Module] = nn.LayerNorm,
                 query_columns: slice = slice(None)):
        super().__init__()
        # Tuples keep the shared prefix vectors and the frozen W_q out of this module's parameters.
        self._vectors = (vectors,)
        self._query = (query,)
        self.layer, self.heads, self.function = layer, heads, mod.function
        self.head_dim = query_width // heads
        self.query_columns = query_columns  # GPT-2's fused c_attn: q is the first third of its output
        self.norm_in = norm(features(query)[0]) if mod.layer_norm == "in" else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p_k, p_v = (per_query_head(p, self.heads, self.head_dim) for p in self._vectors[0]()[self.layer])  # (H, l, dh)
        query = self._query[0]
        if self.norm_in is not None:
            x = self.norm_in(x.to(self.norm_in.weight.dtype))
        # W_q is the base model's (its dtype), P_k, P_v the adapter's
        q = query(x.to(query.weight.dtype))[..., self.query_columns].to(p_k.dtype).unflatten(-1, (self.heads, -1))
        hidden = torch.einsum("bthd,hld->bthl", q, p_k)
        hidden = self.dropout(torch.relu(hidden) if self.function == "relu" else hidden)
        return torch.einsum("bthl,hld->bthd", hidden, p_v).flatten(-2)

    def paper_params(self) -> int:
        return 0  # its P_k, P_v are counted once, in PrefixVectors


def per_query_head(prefix: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """(l, n_kv·d_h) → (heads, l, d_h): key/value head j serves query heads j·g … (j+1)·g − 1, g = heads / n_kv, the
    layout of transformers' repeat_kv."""
    per_kv = prefix.unflatten(-1, (-1, head_dim)).transpose(0, 1)  # (n_kv, l, dh)
    return per_kv.repeat_interleave(heads // per_kv.shape[0], dim=0)


class Prompt(nn.Module):
    """Prompt tuning: l trainable input vectors, N(0, 0.02) as in the official code."""

    def __init__(self, d: int, mod: Modification):
        super().__init__()
        self.vectors = nn.Parameter(torch.randn(mod.size, d) * 0.02)
        self.enabled = True  # False inside Attachment.disabled()

    def paper_params(self) -> int:
        return self.vectors.numel()


class Composition(nn.Module):
    """The composition dimension for add and scaled add; gating (prefix tuning) lives in attention.py."""

    def __init__(self, mod: Modification):
        super().__init__()
        if mod.scale == "learned":
            self.scale = nn.Parameter(torch.ones(()))
        else:
            self.register_buffer("scale", torch.tensor(float(mod.scale)), persistent=False)

    def forward(self, h: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return h + self.scale * delta
