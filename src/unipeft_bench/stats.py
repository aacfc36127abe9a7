"""Per split: counts, length percentiles (in words) and a length histogram."""

from __future__ import annotations

import numpy as np

PERCENTILES = (5, 50, 95, 99)
BIN = 8  # words per histogram bin


def _text_fields(records: list[dict]) -> list[str]:
    fields = ("source", "target") if "source" in records[0] else ("text", "text_pair")
    return [f for f in fields if records[0].get(f) is not None]


def split_stats(records: list[dict]) -> dict:
    out = {"count": len(records)}
    for field in _text_fields(records):
        lengths = np.array([len(r[field].split()) for r in records])
        out[f"{field}_words"] = {f"p{p}": float(np.percentile(lengths, p)) for p in PERCENTILES}
        out[f"{field}_words"]["mean"] = round(float(lengths.mean()), 2)
    if "label" in records[0]:
        labels, counts = np.unique([r["label"] for r in records], return_counts=True)
        out["labels"] = {str(int(label)): int(n) for label, n in zip(labels, counts)}
    return out


def histogram_rows(split: str, records: list[dict]) -> list[dict]:
    rows = []
    for field in _text_fields(records):
        lengths = np.array([len(r[field].split()) for r in records])
        bins, counts = np.unique(lengths // BIN * BIN, return_counts=True)
        rows += [{"split": split, "field": field, "words": int(b), "count": int(n)} for b, n in zip(bins, counts)]
    return rows
