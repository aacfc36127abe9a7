"""The paper's scores with the field's libraries: ROUGE (rouge-score, stemming), BLEU (sacreBLEU), accuracy."""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def _sentence_splitter():
    # Punkt with its default parameters needs no downloaded model, so it works offline (nltk.sent_tokenize does not).
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer()


def sentences(text: str) -> list[str]:
    return _sentence_splitter().tokenize(text.strip())


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean F-measure × 100 of ROUGE-1/2/L and ROUGE-Lsum (sentences split onto lines, as the paper's script)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    scores = [scorer.score("\n".join(sentences(ref)), "\n".join(sentences(pred)))
              for pred, ref in zip(predictions, references, strict=True)]
    return {key: round(100 * float(np.mean([s[key].fmeasure for s in scores])), 2) for key in scores[0]}


def bleu(predictions: list[str], references: list[str]) -> dict[str, float | str]:
    import sacrebleu

    result = sacrebleu.metrics.BLEU()
    score = result.corpus_score(predictions, [references])
    return {"bleu": round(score.score, 2), "bleu_signature": str(result.get_signature())}


def lead_sentence(document: str) -> str:
    """The summarization baseline: the document's first sentence."""
    found = sentences(document)
    return found[0] if found else document
