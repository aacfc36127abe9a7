"""The evaluate stage's scoring: which scores each task reports, and the paper's BLEU only for Romanian."""

from __future__ import annotations

import pytest

from evaluate import score_seq2seq, versions

HYPOTHESES = ["Ea a spus că ştiinţa este importantă .", "the cat sat on the mat"]
REFERENCES = ["Ea a spus că știința este importantă .", "the cat sat on a mat"]


def test_summarization_reports_rouge_with_lsum():
    scores = score_seq2seq("summarization", ["a b c. d e f."], ["a b c. d e g."], None)
    assert set(scores) == {"rouge1", "rouge2", "rougeL", "rougeLsum"} and 0 < scores["rouge2"] < 100


@pytest.mark.parametrize("language, paper", [("ro_RO", True), (None, False), ("es", False)])
def test_translation_adds_the_papers_bleu_only_for_romanian(language, paper):
    scores = score_seq2seq("translation", HYPOTHESES, REFERENCES, language)
    assert scores["bleu_signature"].startswith("nrefs:1") and 0 < scores["bleu"] < 100
    if paper:  # cedilla and comma-below letters agree once normalised, so the paper's BLEU is higher
        assert scores["bleu_paper"] > scores["bleu"] and "tok:none" in scores["bleu_paper_signature"]
    else:
        assert scores["bleu_paper"] is None and scores["bleu_paper_signature"] is None


def test_versions_name_the_packages_that_made_a_result():
    found = versions()
    assert {"python", "torch", "transformers", "unipeft"} <= set(found) and all(found.values())


def test_classify_batches_by_length_and_returns_predictions_in_dataset_order():
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from evaluate import classify
    from unipeft_bench.models import resolve

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm"))
    model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_labels=3,
                                                     num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                                     initializer_range=1.0)).eval()
    texts = ["a long sentence with many words in it", "short", "a middling one here", "x y", "one two three four"]
    dataset = Dataset.from_dict(dict(tokenizer(texts)))
    alone = [model(input_ids=torch.tensor([ids])).logits.argmax(-1).item() for ids in dataset["input_ids"]]
    assert classify(model, dataset, tokenizer, batch_size=2) == alone and len(set(alone)) > 1
