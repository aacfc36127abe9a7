"""BLEU on Romanian targets (WMT16 en-ro) as the paper reports it.

He et al. score en-ro with their `exps/romanian_postprocess.sh`: both hypotheses and references go through Moses
punctuation replacement and normalisation (`-l ro`), non-printing-character removal, Sennrich's WMT16
`normalise-romanian.py` and `remove-diacritics.py`, Moses tokenisation (`-no-escape -l ro`), and then
`sacrebleu -tok none -s none`. This module reproduces that convention in Python (sacremoses for the Moses steps),
so `bleu_paper` is comparable to the paper's tables, unlike plain sacreBLEU on detokenised text.
"""

from __future__ import annotations

import functools
import unicodedata

# Cedilla forms are the legacy (Turkish) code points often found in Romanian text; the comma-below forms are correct.
_COMMA_BELOW = str.maketrans({"\u015f": "\u0219", "\u015e": "\u0218", "\u0163": "\u021b", "\u0162": "\u021a"})
_NO_DIACRITICS = str.maketrans("șțăâîȘȚĂÂÎ", "staaiSTAAI")


@functools.cache
def _moses():
    from sacremoses import MosesPunctNormalizer, MosesTokenizer

    # perl_parity: match normalize-punctuation.perl exactly rather than sacremoses' "improved" defaults.
    return (MosesPunctNormalizer(lang="ro", pre_replace_unicode_punct=True, perl_parity=True),
            MosesTokenizer(lang="ro"))


def _remove_non_printing(text: str) -> str:
    # remove-non-printing-char.perl turns every \p{C} character into a space (sacremoses' option deletes them,
    # which would glue words around e.g. a zero-width space).
    return "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)


def normalise(text: str) -> str:
    """Steps 1-6 of romanian_postprocess.sh on one line: punctuation, control chars, diacritics, Moses tokens."""
    normalizer, tokenizer = _moses()
    text = _remove_non_printing(normalizer.normalize(text))
    text = text.translate(_COMMA_BELOW).translate(_NO_DIACRITICS)
    return tokenizer.tokenize(text, escape=False, return_str=True)


def paper_bleu(predictions: list[str], references: list[str]) -> dict[str, float | str]:
    """Corpus BLEU as `sacrebleu -tok none -s none` on normalised hypotheses and references."""
    from sacrebleu.metrics import BLEU

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    metric = BLEU(tokenize="none", smooth_method="none")
    score = metric.corpus_score([normalise(p) for p in predictions], [[normalise(r) for r in references]])
    return {"bleu_paper": round(score.score, 2), "bleu_paper_signature": str(metric.get_signature())}
