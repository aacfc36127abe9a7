"""Parameter accounting: the paper's convention, what trains, and what a checkpoint stores."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from torch import nn

from .models import paper_denominator_for


def _base_named_parameters(model: nn.Module):
    return ((n, p) for n, p in model.base_model.named_parameters() if not n.startswith("unipeft."))


def base_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for _, p in _base_named_parameters(model))


def base_fingerprint(model: nn.Module) -> str:
    """A digest of the base model's parameter names and shapes: equal for the same architecture and config."""
    text = "\n".join(f"{n}:{tuple(p.shape)}" for n, p in sorted(_base_named_parameters(model)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def paper_count(attachment) -> int:
    """Appendix B: projection weights and final prefix/prompt vectors; no biases, no LayerNorms, no prefix MLP."""
    count = sum(m.paper_params() for m in attachment.container.modules() if hasattr(m, "paper_params"))
    unfreeze = attachment.method.unfreeze
    if unfreeze == "all":
        count += attachment.base_params
    elif unfreeze == "bias":
        count += sum(p.numel() for n, p in _base_named_parameters(attachment.model) if n.endswith("bias"))
    return count


@dataclass(frozen=True)
class Counts:
    method: str
    paper: int  # the paper's convention (Appendix B)
    trainable: int  # requires_grad during training, prefix MLPs and the task head included
    stored: int  # tensors in adapter_model.safetensors, prefix MLPs folded into their vectors
    head: int  # task-head parameters, inside trainable and stored
    base_params: int  # the pretrained model, task head excluded
    paper_denominator: int  # what the paper divides by for its "% params" (409.6M for BART/mBART)
    paper_percent: float
    paper_percent_of_base: float
    trainable_percent: float
    stored_percent: float

    def to_dict(self) -> dict:
        return asdict(self)


def counts(attachment, paper_denominator: int | None = None) -> Counts:
    model = attachment.model
    base = attachment.base_params
    denominator = paper_denominator or paper_denominator_for(model) or base
    paper = paper_count(attachment)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stored = sum(t.numel() for t in attachment.state_dict(fold=True).values())
    head = sum(p.numel() for p in attachment.head_parameters().values() if p.requires_grad)
    pct = lambda n, d: round(100.0 * n / d, 4)  # noqa: E731
    return Counts(attachment.method.name, paper, trainable, stored, head, base, denominator,
                  pct(paper, denominator), pct(paper, base), pct(trainable, base), pct(stored, base))
