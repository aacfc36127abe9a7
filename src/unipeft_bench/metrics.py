"""The paper's scores with the field's libraries: ROUGE (rouge-score, stemming), BLEU (sacreBLEU), accuracy."""

from __future__ import annotations

import functools

import numpy as np


SENT_TOKENIZE = "nltk.sent_tokenize"  # what the official run_summarization.py splits with
PUNKT_DEFAULTS = "PunktSentenceTokenizer() defaults"
# The model nltk.sent_tokenize loads (nltk >= 3.8.2 reads punkt_tab; the older pickled 'punkt' it no longer reads).
PUNKT_MODEL = "tokenizers/punkt_tab/english/"


def punkt_model_installed() -> bool:
    """Whether NLTK's English Punkt model is installed locally; never downloads it."""
    import nltk

    try:
        nltk.data.find(PUNKT_MODEL)
    except LookupError:
        return False
    return True


@functools.cache
def _sentence_splitter():
    """nltk.sent_tokenize, as the official script, where its trained Punkt model is installed; otherwise Punkt with
    its default (untrained) parameters, which needs no download and differs on abbreviations."""
    if punkt_model_installed():
        import nltk

        return SENT_TOKENIZE, nltk.sent_tokenize
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PUNKT_DEFAULTS, PunktSentenceTokenizer().tokenize


def sentence_splitter() -> str:
    """The name of the splitter ROUGE-Lsum uses here, for the metrics JSON."""
    return _sentence_splitter()[0]


def sentences(text: str) -> list[str]:
    return _sentence_splitter()[1](text.strip())


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
