"""BART-style text infilling (Lewis et al. 2020): spans of Poisson(λ) length, 30% of tokens, each span → one mask."""

from __future__ import annotations

import numpy as np
import torch


def infill(tokens: list[int], mask_id: int, rng: np.random.Generator, ratio: float = 0.3,
           poisson_lambda: float = 3.0) -> list[int]:
    n = len(tokens)
    masked = np.zeros(n, dtype=bool)
    budget = int(round(n * ratio))
    while masked.sum() < budget:
        length = min(max(1, int(rng.poisson(poisson_lambda))), n)
        start = int(rng.integers(0, n - length + 1))
        masked[start:start + length] = True
    out = []
    for i, token in enumerate(tokens):
        if not masked[i]:
            out.append(token)
        elif i == 0 or not masked[i - 1]:
            out.append(mask_id)
    return out


class InfillingCollator:
    """Batches of (corrupted text → original text) for an encoder-decoder with BERT-style special tokens."""

    def __init__(self, tokenizer, max_length: int, seed: int, ratio: float, poisson_lambda: float):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.rng = np.random.default_rng(seed)
        self.ratio, self.poisson_lambda = ratio, poisson_lambda

    def __call__(self, texts: list[dict]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        ids = tok([t["text"] for t in texts], add_special_tokens=False, truncation=True,
                  max_length=self.max_length - 2)["input_ids"]
        sources = [[tok.cls_token_id] + infill(x, tok.mask_token_id, self.rng, self.ratio, self.poisson_lambda)
                   + [tok.sep_token_id] for x in ids]
        targets = [x + [tok.sep_token_id] for x in ids]  # the decoder starts from [CLS]
        width_s, width_t = max(map(len, sources)), max(map(len, targets))
        input_ids = torch.tensor([s + [tok.pad_token_id] * (width_s - len(s)) for s in sources])
        return {"input_ids": input_ids, "attention_mask": (input_ids != tok.pad_token_id).long(),
                "labels": torch.tensor([t + [-100] * (width_t - len(t)) for t in targets])}
