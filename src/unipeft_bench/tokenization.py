"""Turning prepared splits into model inputs, with the same rules for every task and tokenizer."""

from __future__ import annotations

import random

import numpy as np


def subsample(records: list[dict], limit: int | None, seed: int) -> list[dict]:
    """At most `limit` records, a seeded random sample (the CPU profile trains on subsets of the stand-ins)."""
    if limit is None or limit >= len(records):
        return records
    return random.Random(seed).sample(records, limit)


def encode_seq2seq(tokenizer, records: list[dict], source_length: int, target_length: int) -> dict[str, list]:
    sources = tokenizer([r["source"] for r in records], max_length=source_length, truncation=True)
    labels = tokenizer(text_target=[r["target"] for r in records], max_length=target_length,
                       truncation=True)["input_ids"]
    if tokenizer.bos_token is None and tokenizer.cls_token_id is not None:
        # BERT-style vocabularies start every sequence with [CLS], which is the decoder's start token here.
        labels = [x[1:] if x and x[0] == tokenizer.cls_token_id else x for x in labels]
    return {**sources, "labels": labels, "id": [r["id"] for r in records],
            "source": [r["source"] for r in records], "target": [r["target"] for r in records]}


def encode_classification(tokenizer, records: list[dict], length: int) -> dict[str, list]:
    pairs = [r["text_pair"] for r in records] if records[0].get("text_pair") is not None else None
    encoded = tokenizer([r["text"] for r in records], pairs, max_length=length, truncation=True)
    return {**encoded, "labels": [r["label"] for r in records], "id": [r["id"] for r in records]}


def token_stats(encoded: dict[str, list], source_length: int, target_length: int | None) -> dict:
    """Percentiles of token lengths, and how often truncation cut an input or a target."""
    out = {}
    for key, limit in (("input_ids", source_length), ("labels", target_length)):
        if limit is None or key not in encoded or not isinstance(encoded[key][0], list):
            continue
        lengths = np.array([len(x) for x in encoded[key]])
        out[key] = {"p50": float(np.percentile(lengths, 50)), "p95": float(np.percentile(lengths, 95)),
                    "truncated": round(float((lengths >= limit).mean()), 4)}
    return out
