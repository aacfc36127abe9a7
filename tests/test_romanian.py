"""The paper's Romanian BLEU post-processing (romanian_postprocess.sh) reproduced with sacremoses + sacreBLEU."""

from __future__ import annotations

import pytest
import sacrebleu

from unipeft_bench.romanian import normalise, paper_bleu

CEDILLA = "\u015f\u0163\u015e\u0162"  # ş ţ Ş Ţ: legacy forms
COMMA_BELOW = "\u0219\u021b\u0218\u021a"  # ș ț Ș Ț: correct forms


def test_cedilla_and_comma_below_normalise_identically():
    assert normalise(f"Ce {CEDILLA} e") == normalise(f"Ce {COMMA_BELOW} e") == "Ce stST e"


@pytest.mark.parametrize("text, expected", [
    ("știință", "stiinta"),
    ("ştiinţă", "stiinta"),
    ("ÎNVĂȚĂMÂNT", "INVATAMANT"),
    ("âîă", "aia"),
])
def test_diacritics_removed(text, expected):
    assert normalise(text) == expected


def test_moses_tokenisation_splits_punctuation():
    assert normalise("Bună ziua, lume!") == "Buna ziua , lume !"
    # Romanian nonbreaking prefix: "Dl." (Mr.) keeps its period, the sentence-final one is split off.
    assert normalise("Dl. Popescu a venit.") == "Dl. Popescu a venit ."


def test_unicode_punctuation_normalised():
    # Romanian low-high quotes, guillemets, em dash and ellipsis all become ASCII, then tokens.
    assert normalise("„Da”, a spus el — «bine»…") == '" Da " , a spus el - " bine " ...'
    assert normalise("„Da”") == normalise('"Da"') == '" Da "'


def test_non_printing_characters_become_spaces():
    # As remove-non-printing-char.perl: \p{C} -> space, so a zero-width space separates words rather than gluing them.
    assert normalise("a\u200bb\tc\u00add") == "a b c d"


def test_paper_bleu_ignores_diacritic_forms():
    refs = ["Știința este bună pentru toți oamenii din țară.", "Mâine vom învăța ceva nou, „împreună”."]
    hyps = ["Ştiinţa este buna pentru toti oamenii din ţară.", "Maine vom invata ceva nou, \"impreuna\"."]
    result = paper_bleu(hyps, refs)
    assert result["bleu_paper"] == 100.0
    assert "tok:none" in result["bleu_paper_signature"] and "smooth:none" in result["bleu_paper_signature"]
    assert sacrebleu.corpus_bleu(hyps, [refs]).score < 50


def test_unrelated_hypothesis_scores_low():
    result = paper_bleu(["Pisica doarme pe canapea toată ziua."], ["Guvernul a aprobat ieri noul buget de stat."])
    assert result["bleu_paper"] < 5


def test_partial_overlap_between_extremes():
    score = paper_bleu(["Guvernul a aprobat ieri noul buget."], ["Guvernul a aprobat ieri noul buget de stat."])
    assert 0 < score["bleu_paper"] < 100


def test_length_mismatch_rejected():
    with pytest.raises(ValueError):
        paper_bleu(["a"], ["a", "b"])
