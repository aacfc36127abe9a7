"""Batched generation of a seq2seq model over a tokenized split."""

from __future__ import annotations

import torch


@torch.no_grad()
def generate(model, tokenizer, dataset, batch_size: int = 32, **generation) -> list[str]:
    """Decoded predictions for every row of `dataset` (with input_ids), in order."""
    model.eval()
    out = []
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start:start + batch_size]["input_ids"]
        batch = tokenizer.pad({"input_ids": rows}, return_tensors="pt").to(model.device)
        ids = model.generate(**batch, **generation)
        out += tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [text.strip() for text in out]
