"""The real profile trains and scores as the paper's official scripts did: en-ro batches by tokens, per-method
settings (full fine-tuning's own recipe, prefix tuning without smoothing or decay), GLUE's frozen random head,
references cut to the evaluation target length, nltk.sent_tokenize where its model is installed, and MNLI's
matched and mismatched accuracies. Tiny random-weight models and fixture data; nothing is downloaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

import data_fixtures as fx
from unipeft_bench import metrics
from unipeft_bench.errors import DataError
from unipeft_bench.models import resolve
from unipeft_bench.runs import Run, configured
from unipeft_bench.token_batching import TokenBudgetBatchSampler, check_max_tokens, example_costs, pack
from unipeft_bench.training import resolved_settings, training_arguments

from test_pipeline import ROOT

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
REAL = PARAMS["train"]["real"]


# ---- token batching --------------------------------------------------------------------------------------------
COSTS = np.random.default_rng(0).integers(1, 40, size=300)


@pytest.mark.parametrize("costs, max_tokens, multiple", [
    (COSTS, 64, 1),
    (COSTS, 200, 8),  # batches of 8 or more examples are trimmed to multiples of 8
    (COSTS, 40, 1),  # the longest example alone fills a batch
    (np.full(50, 10), 100, 4),  # all alike: ten per batch, trimmed to eight
    (np.array([5]), 5, 1),
])
def test_token_batches_stay_within_the_limit_and_cover_every_example_once(costs, max_tokens, multiple):
    sampler = TokenBudgetBatchSampler(costs, max_tokens, seed=3, batch_size_multiple=multiple)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for batch in batches for i in batch) == list(range(len(costs)))  # once each per epoch
        padded = [len(b) * max(costs[i] for i in b) for b in batches]  # examples × longest max(source, target)
        assert max(padded) <= max_tokens and padded[0] == max(padded)  # the most expensive batch comes first
    # trimmed to a multiple where a batch has that many, except the last one packed (as fairseq's)
    assert all(len(b) % multiple == 0 for b in sampler.batches[:-1] if len(b) >= multiple)
    same = TokenBudgetBatchSampler(costs, max_tokens, seed=3, batch_size_multiple=multiple)
    same.set_epoch(1)
    assert list(same) == batches  # same seed and epoch, same batches in the same order


def test_token_batches_change_order_by_epoch_and_composition_by_seed():
    sampler = TokenBudgetBatchSampler(COSTS, 64, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(map(tuple, sampler)) == sorted(map(tuple, first))
    assert TokenBudgetBatchSampler(COSTS, 64, seed=4).batches != sampler.batches


def test_fairseq_trim_carries_the_rest_over():
    # ten examples of 10 tokens fit a 100-token batch; a multiple of 4 keeps 8 and starts the next with 2
    assert [len(b) for b in pack(range(12), np.full(12, 10), 100, 4)] == [8, 4]


def test_example_costs_are_the_longer_of_source_and_target():
    from datasets import Dataset

    data = Dataset.from_dict({"input_ids": [[1, 2, 3], [1], [1, 2]], "labels": [[1], [1, 2, 3, 4], [5, 6]]})
    assert example_costs(data).tolist() == [3, 4, 2]
    assert example_costs(data.select([2, 0])).tolist() == [2, 3]  # an index mapping is respected


@pytest.mark.parametrize("value", [0, -5, 40.5, "4096", True, None])
def test_a_token_limit_must_be_a_positive_whole_number(value):
    with pytest.raises(DataError, match=r"^params.yaml train.real.translation.max_tokens_per_batch: expected a "
                                        r"positive whole number") as err:
        check_max_tokens(value, "train.real.translation.max_tokens_per_batch")
    assert "\n" not in str(err.value)


def test_an_example_longer_than_the_token_limit_is_named():
    with pytest.raises(DataError, match=r"^training example 2 is 50 tokens long .*max_tokens_per_batch 40") as err:
        TokenBudgetBatchSampler([3, 4, 50, 2], 40, seed=0)
    assert "\n" not in str(err.value)


# ---- per-method settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("task, method, expected", [
    # exps_tran/run_mbart_trainer_full.sh: the official full fine-tuning of mBART
    ("translation", "full", {"learning_rate": 3e-5, "warmup": 2500, "steps": 30000, "label_smoothing": 0.2,
                             "weight_decay": 0.0, "max_grad_norm": 1000.0,
                             "model_config": {"dropout": 0.3, "attention_dropout": 0.1}}),
    ("translation", "prefix", {"learning_rate": 5e-5, "label_smoothing": 0.0, "weight_decay": 0.0, "steps": 50000,
                               "model_config": {"dropout": 0.1, "attention_dropout": 0.0}}),
    ("translation", "mam", {"learning_rate": 5e-5, "label_smoothing": 0.1, "weight_decay": 0.01,
                            "max_tokens_per_batch": 4096}),
    ("summarization", "full", {"learning_rate": 3e-5}),
    ("nli", "full", {"learning_rate": 2e-5, "train_head": False}),
    ("sentiment", "full", {"learning_rate": 2e-5, "train_head": False}),
    ("sentiment", "lora", {"learning_rate": 1e-4, "train_head": False}),
])
def test_real_settings_resolve_per_method(task, method, expected):
    run = Run(task, f"{method}-small", method, profile="real")
    settings = resolved_settings(REAL[task], run)
    assert {key: settings[key] for key in expected} == expected
    assert "by_method" not in settings and resolved_settings(settings, run) == settings  # idempotent


def test_the_resolved_settings_reach_the_training_arguments_and_the_model_config():
    from transformers import MBartConfig

    run = Run("translation", "full", "full", profile="real")
    args = training_arguments(REAL["translation"], run, seq2seq=True, train_examples=100)
    assert (args.learning_rate, args.warmup_steps, args.max_steps, args.label_smoothing_factor, args.weight_decay,
            args.max_grad_norm) == (3e-5, 2500, 30000, 0.2, 0.0, 1000.0)
    config = configured(MBartConfig(d_model=8, encoder_layers=1, decoder_layers=1),
                        resolved_settings(REAL["translation"], run)["model_config"], "x")
    assert (config.dropout, config.attention_dropout) == (0.3, 0.1)
    # token batches make an epoch a number of batches, not examples / batch_size
    glue = training_arguments(REAL["sentiment"], Run("sentiment", "x", "lora", profile="real"), False, 6400,
                              batches_per_epoch=100)
    assert glue.warmup_steps == round(0.06 * 100 * 10)


def test_offline_profile_keeps_training_the_head_and_its_rate_tables():
    offline = PARAMS["train"]["offline"]["sentiment"]
    settings = resolved_settings(offline, Run("sentiment", "mam", "mam"))
    assert settings.get("train_head", True) and settings["learning_rate"] == offline["learning_rate_by_method"]["mam"]


@pytest.mark.parametrize("by_method, message", [
    ({"full": {"label_smothing": 0.2}}, r"by_method.full.label_smothing: not a train setting"),
    ({"fulll": {"learning_rate": 1.0}}, r"by_method.fulll: not a method preset"),
    ({"full": 3.0}, r"by_method.full: expected a mapping"),
    ([1], r"by_method: expected a mapping"),
])
def test_bad_method_overrides_fail_in_one_line_naming_the_key(by_method, message):
    with pytest.raises(DataError, match=r"^params.yaml train.real.translation." + message) as err:
        resolved_settings({**REAL["translation"], "by_method": by_method}, Run("translation", "x", "full",
                                                                               profile="real"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method, train_head, trains_head", [("lora", False, False), ("lora", True, True),
                                                            ("full", False, True), ("bitfit", False, False)])
def test_train_head_false_freezes_the_head_of_every_method_but_full_fine_tuning(method, train_head, trains_head):
    import unipeft
    from conftest import build

    from train import method_for

    chosen = method_for(Run("nli", "x", method, profile="real"), {"train_head": train_head})
    attachment = unipeft.attach(build("roberta"), chosen)
    assert any(p.requires_grad for p in attachment.head_parameters().values()) is trains_head
    with pytest.raises(DataError, match="train_head: expected true or false"):
        method_for(Run("nli", "x", method, profile="real"), {"train_head": "no"})


def test_a_rate_given_twice_for_a_method_is_refused():
    settings = {"learning_rate": 1.0, "by_method": {"pa": {"learning_rate": 2.0}}, "learning_rate_by_method": {"pa": 3}}
    with pytest.raises(DataError, match="given twice"):
        resolved_settings(settings, Run("sentiment", "x", "pa"))


def test_the_fingerprint_sees_the_resolved_settings():
    full, prefix = Run("translation", "full", "full", profile="real"), Run("translation", "p", "prefix", profile="real")
    other = {**REAL["translation"], "by_method": {**REAL["translation"]["by_method"], "full": {"learning_rate": 1.0}}}
    assert full.fingerprint(resolved_settings(other, full)) != full.fingerprint(resolved_settings(REAL["translation"],
                                                                                                  full))
    # another method's override is no part of this run's configuration
    assert prefix.fingerprint(resolved_settings(other, prefix)) == prefix.fingerprint(
        resolved_settings(REAL["translation"], prefix))


# ---- references cut to the evaluation target length --------------------------------------------------------
@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve("minilm"))


@pytest.mark.parametrize("task, key", [("summarization", "rouge2"), ("translation", "bleu")])
def test_headline_scores_use_references_truncated_as_tokenized(minilm_tokenizer, task, key):
    from datasets import Dataset

    from evaluate import score_against_references
    from unipeft_bench.tokenization import encode_seq2seq

    records = [{"id": str(i), "source": "x", "target": f"the cat number {i} sat on the mat and then it slept all day"}
               for i in range(3)]
    test = Dataset.from_dict(encode_seq2seq(minilm_tokenizer, records, 8, 7))  # 6 tokens + [SEP]
    predictions = [f"the cat number {i} sat" for i in range(3)]  # exactly the truncated references
    headline, untruncated = score_against_references(task, predictions, test, minilm_tokenizer)
    assert headline[key] == 100 and untruncated[key] < headline[key]


# ---- ROUGE-Lsum's sentence splitter ----------------------------------------------------------------------------
@pytest.fixture
def fresh_splitter():
    import nltk

    metrics._sentence_splitter.cache_clear()
    yield
    metrics._sentence_splitter.cache_clear()
    nltk.tokenize._get_punkt_tokenizer.cache_clear()


def _punkt_model(root):
    """A local punkt_tab model that knows one abbreviation, "dr": the files nltk.sent_tokenize reads."""
    english = root / "tokenizers" / "punkt_tab" / "english"
    english.mkdir(parents=True)
    (english / "abbrev_types.txt").write_text("dr\n")
    for name in ("collocations.tab", "sent_starters.txt", "ortho_context.tab"):
        (english / name).write_text("")
    return root


@pytest.mark.parametrize("installed, name, split", [
    (True, "nltk.sent_tokenize", ["Dr. Smith came.", "He sat."]),
    (False, "PunktSentenceTokenizer() defaults", ["Dr.", "Smith came.", "He sat."]),
])
def test_rouge_lsum_splits_with_sent_tokenize_where_its_model_is_installed(fresh_splitter, tmp_path, monkeypatch,
                                                                          installed, name, split):
    import nltk

    if installed:
        monkeypatch.setattr(nltk.data, "path", [str(_punkt_model(tmp_path))] + nltk.data.path)
    else:
        monkeypatch.setattr(metrics, "punkt_model_installed", lambda: False)
    assert metrics.punkt_model_installed() == installed
    assert metrics.sentence_splitter() == name and metrics.sentences("Dr. Smith came. He sat.") == split


# ---- end to end on tiny models: token batches, frozen heads, the metrics JSON --------------------------------
@pytest.fixture
def private_datasets_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


def _tiny_bert2bert(directory, tokenizer):
    import torch
    from transformers import BertConfig, EncoderDecoderConfig, EncoderDecoderModel

    torch.manual_seed(0)
    bert = dict(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, max_position_embeddings=64)
    model = EncoderDecoderModel(EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(**bert), BertConfig(**bert, is_decoder=True, add_cross_attention=True)))
    for key, value in (("decoder_start_token_id", tokenizer.cls_token_id), ("pad_token_id", tokenizer.pad_token_id),
                       ("eos_token_id", tokenizer.sep_token_id)):
        setattr(model.config, key, value)
        setattr(model.generation_config, key, value)
    model.save_pretrained(directory)
    return str(directory)


def _tiny_roberta(directory, tokenizer):
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    RobertaForSequenceClassification(RobertaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=40, pad_token_id=tokenizer.pad_token_id,
        num_labels=3)).save_pretrained(directory)
    # a pretrained checkpoint has no task head: train and evaluate both start it from the run's seed
    weights = directory / "model.safetensors"
    from safetensors.torch import load_file, save_file

    save_file({k: v for k, v in load_file(str(weights)).items() if not k.startswith("classifier.")}, str(weights))
    return str(directory)


SEQ2SEQ_SETTINGS = {"steps": 4, "batch_size": 4, "eval_batch_size": 8, "eval_every": 2, "eval_examples": 8,
                    "learning_rate": 1e-3, "warmup": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "select": "loss",
                    "max_tokens_per_batch": 48, "batch_size_multiple": 2}


@pytest.fixture
def translation_project(tmp_path, monkeypatch, minilm_tokenizer):
    from prepare import prepare
    from test_data import PARAMS as DATA_PARAMS
    from tokenize_splits import tokenize

    fx.offline_assets(tmp_path / "assets")
    prepare("translation", DATA_PARAMS, tmp_path)
    tokenize("translation", {"profile": "offline", "tokenize": {"offline": {"tokenizer": "minilm", "translation": {
        "source": 16, "target": 12, "limit": {"train": 24, "test": 4}}}}}, tmp_path)
    model = _tiny_bert2bert(tmp_path / "tiny-bert2bert", minilm_tokenizer)
    monkeypatch.chdir(tmp_path)
    return Run("translation", "lora-small", "lora", {"attn_bn": 2}, seed=3, model=model)


def test_token_batched_training_resumes_on_the_same_batches_and_scores_truncated_references(translation_project,
                                                                                             monkeypatch):
    import torch
    from safetensors.torch import load_file
    from transformers import Trainer

    from evaluate import evaluate_and_save
    from train import train

    run, step, seen = translation_project, Trainer.training_step, []

    def record(self, model, inputs, *args, **kwargs):
        seen.append((self.state.global_step, inputs["input_ids"].shape[0],
                     max(inputs["input_ids"].shape[1], inputs["labels"].shape[1])))
        return step(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", record)
    report = train(run, SEQ2SEQ_SETTINGS)
    assert report["steps"] == 4 and "tokens" in report["batches"]
    assert all(rows * width <= 48 for _, rows, width in seen) and len({rows for _, rows, _ in seen}) > 1
    weights = run.adapter_dir / "adapter_model.safetensors"
    uninterrupted, batches = load_file(weights), list(seen)
    weights.unlink()

    def crash_at_step_3(self, *args, **kwargs):
        if self.state.global_step == 3:
            raise KeyboardInterrupt
        return record(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(run, SEQ2SEQ_SETTINGS)
    seen.clear()
    monkeypatch.setattr(Trainer, "training_step", record)
    train(run, SEQ2SEQ_SETTINGS)
    assert seen == batches[2:]  # resumed at checkpoint-2 on the batches an uninterrupted run trains on
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(load_file(weights)[name], tensor, msg=name)

    scores = evaluate_and_save(run, {"batch_size": 4, "generation": {"num_beams": 1, "max_length": 8}})
    written = json.loads(run.metrics_path.read_text())
    assert written["scores"] == scores and "bleu" in scores and "bleu" in written["scores_untruncated"]
    assert written["evaluation"]["references"]["max_tokens"] == 12  # tokenize.offline.translation.target


@pytest.mark.parametrize("method, head_trains", [("lora", False), ("full", True)])
def test_a_frozen_glue_head_is_rebuilt_by_evaluate_and_mnli_reports_both_dev_sets(
        tmp_path, monkeypatch, minilm_tokenizer, private_datasets_cache, method, head_trains):
    import torch
    import unipeft
    from transformers import Trainer

    import evaluate as evaluate_stage
    from prepare import prepare
    from tokenize_splits import tokenize
    from train import train

    prepare("nli", {"profile": "real", "data": {"real_path": {"nli": str(fx.mnli(tmp_path / "hub"))}}}, tmp_path)
    tokenize("nli", {"profile": "real", "tokenize": {"real": {"tokenizer": {"nli": "minilm"}, "nli": {"source": 24}}}},
             tmp_path)
    model = _tiny_roberta(tmp_path / "tiny-roberta", minilm_tokenizer)
    monkeypatch.chdir(tmp_path)
    run = Run("nli", f"{method}-x", method, {"attn_bn": 2} if method == "lora" else {}, seed=5, model=model,
              profile="real")
    settings = {**REAL["nli"], "epochs": 1, "batch_size": 8, "eval_batch_size": 8, "fp16": False}
    assert settings["train_head"] is False  # params.yaml: the official code's frozen head

    models, fit = {}, Trainer.train

    def keep_model(self, *args, **kwargs):
        models["initial_head"] = {n: p.detach().clone() for n, p in self.model.classifier.named_parameters()}
        out = fit(self, *args, **kwargs)
        models["trained"] = self.model
        return out

    monkeypatch.setattr(Trainer, "train", keep_model)
    report = train(run, settings)
    assert report["head_trained"] is head_trains
    stored = unipeft.read_config(run.adapter_dir)["method"]
    head_moved = any(not torch.equal(p, models["initial_head"][n])
                     for n, p in models["trained"].classifier.named_parameters())
    assert head_moved is head_trains and stored["train_head"] is False

    classify = evaluate_stage.classify

    def keep_evaluated(model, *args):
        models["evaluated"] = model
        return classify(model, *args)

    monkeypatch.setattr(evaluate_stage, "classify", keep_evaluated)
    scores = evaluate_stage.evaluate_and_save(run, {"batch_size": 4})
    batch = {k: torch.tensor(v) for k, v in minilm_tokenizer(["p 1 alpha beta", "h 2"], padding=True).items()}
    with torch.no_grad():
        expected = models["trained"].eval()(**batch).logits
        torch.testing.assert_close(models["evaluated"](**batch).logits, expected, rtol=0, atol=0)
    written = json.loads(run.metrics_path.read_text())
    assert set(written["scores"]) == {"accuracy", "accuracy_mismatched"} and written["scores"] == scores
    assert (written["evaluation"]["examples"], written["evaluation"]["examples_test_mismatched"]) == (6, 5)
