"""Batched generation of a seq2seq model (or a decoder-only one: causal_lm.py) over a tokenized split."""

from __future__ import annotations

import torch


@torch.no_grad()
def generate(model, tokenizer, dataset, batch_size: int = 32, **generation) -> list[str]:
    """Decoded predictions for every row of `dataset` (with input_ids), in order; a decoder-only model's completions
of the rows' prompts (causal_lm.generate)."""
    if not model.config.is_encoder_decoder:
        from .causal_lm import generate as generate_completions

        return generate_completions(model, tokenizer, dataset, batch_size, **generation)
    model.eval()
    out = []
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start:start + batch_size]["input_ids"]
        batch = tokenizer.pad({"input_ids": rows}, return_tensors="pt").to(model.device)
        ids = model.generate(**batch, **generation)
        out += tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [text.strip() for text in out]


def decode_labels(tokenizer, labels) -> list[str]:
    """References as the official scripts score them: the tokenized labels, i.e. the target truncated to the
    evaluation target length, decoded like the predictions (run_summarization.py / run_translation.py decode
    labels with skip_special_tokens; -100 marks padding)."""
    import numpy as np

    rows = [np.where(np.asarray(row) < 0, tokenizer.pad_token_id, row).tolist() for row in labels]
    return [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]
