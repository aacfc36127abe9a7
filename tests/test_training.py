"""A run's definition from params.yaml, its training arguments, and resuming: no model needed."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from unipeft_bench.errors import DataError
from unipeft_bench.runs import Run, grid_budget, resolve
from unipeft_bench.training import learning_rate, resume_point, training_arguments

from test_pipeline import ROOT

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_grid_runs_resolve_per_profile_and_task_kind():
    mam = PARAMS["grid"]["runs"]["mam"]
    assert grid_budget(mam, "offline", "seq2seq", "x") == {"attn_bn": 30, "ffn_bn": 64}  # SmolLM2's
    assert grid_budget(mam, "offline", "classification", "x") == {"attn_bn": 5, "ffn_bn": 16}  # MiniLM's
    assert grid_budget(mam, "real", "seq2seq", "x") == {"attn_bn": 30, "ffn_bn": 512}
    assert grid_budget(mam, "real", "classification", "x") == {"attn_bn": 16, "ffn_bn": 16, "scale": 2}  # Table 2
    [run] = resolve(PARAMS, ["sentiment", "mam", "3"])
    assert (run.method, run.seed, run.model, run.budget) == ("mam", 3, "minilm", {"attn_bn": 5, "ffn_bn": 16})
    assert str(run.adapter_dir) == "runs/sentiment/mam/seed3"
    assert str(run.metrics_path) == "metrics/sentiment/mam/seed3.json"


def test_a_grid_run_without_a_seed_is_the_run_at_each_of_the_grids_seeds():
    params = {**PARAMS, "grid": {**PARAMS["grid"], "seeds": [42, 2, 4]}}
    each = resolve(params, ["sentiment", "mam"])
    assert [run.seed for run in each] == [42, 2, 4] and len({(r.method, str(r.budget)) for r in each}) == 1
    assert [str(run.predictions_path) for run in each][1] == "predictions/sentiment/mam/seed2.jsonl"


def test_the_experiment_reads_the_top_level_keys():
    params = {**PARAMS, "task": "summarization", "method": "lora", "budget": {"attn_bn": 4, "ffn_bn": None}}
    [run] = resolve(params, ["experiment"])
    assert (run.task, run.method, run.budget, run.model) == ("summarization", "lora", {"attn_bn": 4},
                                                              "models/smollm2")
    assert str(run.metrics_path) == "experiment/metrics.json" and str(run.adapter_dir) == "experiment/adapter"


@pytest.mark.parametrize("method, used", [("pa", {"ffn_bn": 64}), ("prefix", {"attn_bn": 8}), ("full", {}),
                                          ("mam", {"attn_bn": 8, "ffn_bn": 64, "scale": 2.0})])
def test_the_experiment_applies_its_budget_to_the_sides_the_method_has(method, used):
    params = {**PARAMS, "method": method, "budget": {"attn_bn": 8, "ffn_bn": 64, "scale": 2.0}}
    assert resolve(params, ["experiment"])[0].budget == used


def test_a_grid_run_can_name_another_preset_in_one_profile():
    params = {**PARAMS, "grid": {"runs": {"m": {"method": "mh_pa", "offline": {"method": "mh_pa_lora_init",
                                                                                "attn_bn": 5},
                                                "real": {"attn_bn": 30}}}}}
    assert resolve(params, ["sentiment", "m", "1"])[0].method == "mh_pa_lora_init"
    assert resolve({**params, "profile": "real"}, ["sentiment", "m", "1"])[0].method == "mh_pa"


@pytest.mark.parametrize("change, argv, message", [
    ({"grid": {"runs": {"x": {"method": "pa", "offline": {"attn_bn": 4}}}}}, ["sentiment", "x", "1"],
     "grid.runs.x: method 'pa'.attn_bn: 4 is set but no modification of this method uses it"),
    ({}, ["sentiment", "nope", "1"], "missing key 'grid.runs.nope'"),
    ({}, ["poetry", "full", "1"], "unknown task 'poetry'"),
    ({"budget": {"attn_bn": 4, "rank": 2}}, ["experiment"], "budget: unknown key 'rank'"),
    ({"grid": {"runs": {"odd": {"size": 3}}}}, ["sentiment", "odd", "1"], "grid.runs.odd: expected a mapping"),
    ({}, ["sentiment"], "usage"),
    ({"method": "nope"}, ["experiment"], "params.yaml method: unknown preset 'nope'"),
    ({"grid": {"runs": {"x": {"method": "lora2"}}}}, ["sentiment", "x", "1"], "grid.runs.x.method: unknown preset"),
])
def test_bad_run_definitions_fail_in_one_line(change, argv, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(")) as err:
        resolve({**PARAMS, **change}, argv)
    assert "\n" not in str(err.value)


def test_training_arguments_follow_the_task_settings(tmp_path):
    settings = dict(PARAMS["train"]["real"]["sentiment"])  # the paper's GLUE setting: 10 epochs, 6% warmup
    run = Run("sentiment", "x", "full", seed=5, profile="real")
    args = training_arguments(settings, run, seq2seq=False, train_examples=6400)
    assert args.num_train_epochs == 10 and args.warmup_steps == round(0.06 * 200 * 10)
    assert (args.metric_for_best_model, args.greater_is_better, args.load_best_model_at_end) == ("accuracy", True, True)
    assert (args.adam_beta2, args.adam_epsilon, args.weight_decay) == (0.98, 1e-6, 0.1)
    xsum = training_arguments(PARAMS["train"]["real"]["summarization"], Run("summarization", "x", "mam"), True, 10)
    assert xsum.predict_with_generate and xsum.generation_num_beams == 6 and xsum.max_grad_norm == 0.1
    assert (xsum.learning_rate, xsum.per_device_train_batch_size * xsum.gradient_accumulation_steps) == (5e-5, 64)
    assert learning_rate(PARAMS["train"]["real"]["summarization"], Run("summarization", "full", "full")) == 3e-5
    rates = {"learning_rate": 1.0, "learning_rate_by_method": {"pa": 2.0}, "learning_rate_by_run": {"pa-large": 3.0}}
    assert [learning_rate(rates, Run("sentiment", name, method)) for name, method in
            (("lora-small", "lora"), ("pa-small", "pa"), ("pa-large", "pa"), ("experiment", "pa"))] == [1, 2, 3, 2]
    offline = training_arguments(PARAMS["train"]["offline"]["sentiment"], Run("sentiment", "full", "full"), False, 10)
    assert offline.bf16 and offline.use_cpu == (not torch.cuda.is_available())  # CPU bf16 needs use_cpu
    assert offline.learning_rate == PARAMS["train"]["offline"]["sentiment"]["learning_rate_by_method"]["full"]
    mt = training_arguments(PARAMS["train"]["real"]["translation"], Run("translation", "x", "mam"), True, 10)
    assert not mt.predict_with_generate and mt.metric_for_best_model == "loss" and not mt.greater_is_better
    with pytest.raises(DataError, match="select: unknown 'bleu4'"):
        training_arguments({**settings, "select": "bleu4"}, run, False, 10)


def test_resume_only_from_a_checkpoint_of_the_same_configuration(tmp_path):
    directory = tmp_path / "checkpoints"
    assert resume_point(directory, "aaa") is None  # a fresh run marks the directory as its own
    assert json.loads((directory / "run.json").read_text()) == {"fingerprint": "aaa"}
    (directory / "checkpoint-4").mkdir()
    (directory / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (directory / "checkpoint-4" / "unipeft_config.json").write_text("{}")  # the adapter (unipeft.trainer)
    assert resume_point(directory, "aaa") == str(directory / "checkpoint-4")
    assert resume_point(directory, "bbb") is None and not (directory / "checkpoint-4").exists()


def test_only_the_main_process_clears_or_marks_the_checkpoints(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoints"
    monkeypatch.setenv("RANK", "1")
    assert resume_point(directory, "aaa") is None and not directory.exists()
    monkeypatch.setenv("RANK", "0")
    resume_point(directory, "aaa")
    (directory / "checkpoint-4").mkdir()
    (directory / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (directory / "checkpoint-4" / "unipeft_config.json").write_text("{}")  # the adapter (unipeft.trainer)
    monkeypatch.setenv("RANK", "1")
    assert resume_point(directory, "aaa") == str(directory / "checkpoint-4")
    assert resume_point(directory, "bbb") is None and (directory / "checkpoint-4").is_dir()


def test_config_overrides_reach_the_encoder_and_decoder_and_unknown_keys_are_named():
    from transformers import BertConfig, EncoderDecoderConfig

    from unipeft_bench.runs import configured

    tiny = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    config = configured(EncoderDecoderConfig.from_encoder_decoder_configs(tiny, tiny),
                        {"hidden_dropout_prob": 0.0}, "train.offline.summarization.model_config")
    assert config.encoder.hidden_dropout_prob == config.decoder.hidden_dropout_prob == 0.0
    assert configured(tiny, {"hidden_dropout_prob": 0.2}, "x").hidden_dropout_prob == 0.2
    with pytest.raises(DataError, match=r"^params.yaml train.offline.sentiment.model_config.dropuot: not a setting"):
        configured(tiny, {"dropuot": 0.0}, "train.offline.sentiment.model_config")


def test_the_stage_command_reports_a_bad_run_in_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from unipeft_bench.runs import stage_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "method": "nope"}))
    assert stage_main(["experiment"], "train", lambda run, settings: pytest.fail("must not run")) == 1
    assert capsys.readouterr().err.count("\n") == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_the_evaluate_stage_run_by_hand_checks_its_section_as_the_validate_stage_does(tmp_path, monkeypatch,
                                                                                      capsys):
    from unipeft_bench.runs import stage_main

    monkeypatch.chdir(tmp_path)
    evaluate = {"offline": {"sentiment": {"batch_size": 0}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "evaluate": evaluate}))
    assert stage_main(["sentiment", "mam"], "evaluate", lambda run, settings: pytest.fail("must not run")) == 1
    assert capsys.readouterr().err == ("error: params.yaml evaluate.offline.sentiment.batch_size: expected a positive "
                                       "integer, got 0\n")


def test_the_stage_command_works_through_the_grids_seeds_in_one_process_and_stops_at_the_first_error(
        tmp_path, monkeypatch, capsys):
    from unipeft_bench.runs import stage_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "grid": {**PARAMS["grid"], "seeds": [5, 6, 7]}}))
    seen = []

    def work(run, settings):
        seen.append(run.seed)
        if run.seed == 6:
            raise DataError("seed 6 failed")
        return {"seed": run.seed}

    assert stage_main(["sentiment", "mam"], "train", work) == 1
    out, err = capsys.readouterr()
    assert seen == [5, 6] and out == "sentiment/mam/seed5: {'seed': 5}\n" and err == "error: seed 6 failed\n"

def _with_seeds_in_parallel(seeds: list[int], value=True, **train) -> dict:
    sentiment = {**PARAMS["train"]["offline"]["sentiment"], "seeds_in_parallel": value, **train}
    return {**PARAMS, "grid": {**PARAMS["grid"], "seeds": seeds},
            "train": {**PARAMS["train"], "offline": {**PARAMS["train"]["offline"], "sentiment": sentiment}}}


def _report_process(run, settings):  # at module level: the pool sends it to its processes by name
    from pathlib import Path

    Path(f"ran{run.seed}").write_text("")
    if run.seed == 6:
        raise DataError("seed 6 failed")
    if run.seed == 9:
        os._exit(3)  # as a process killed mid-run
    return {"pid": os.getpid(), "threads": torch.get_num_threads()}


def test_seeds_in_parallel_train_each_in_its_own_process_and_report_in_order(tmp_path, monkeypatch, capsys):
    from unipeft_bench.runs import stage_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_with_seeds_in_parallel([5, 7, 8])))
    assert stage_main(["sentiment", "mam"], "train", _report_process) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"sentiment/mam/seed{s}" for s in (5, 7, 8)]
    reports = [eval(line.split(": ", 1)[1]) for line in lines]
    assert len({r["pid"] for r in reports} | {os.getpid()}) == 4  # three processes, none of them this one
    assert {r["threads"] for r in reports} == {max(1, len(os.sched_getaffinity(0)) // 3)}


def test_seeds_in_parallel_all_run_and_the_first_error_is_raised(tmp_path, monkeypatch, capsys):
    from unipeft_bench.runs import stage_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_with_seeds_in_parallel([5, 6, 7])))
    assert stage_main(["sentiment", "mam"], "train", _report_process) == 1
    assert capsys.readouterr().err == "error: seed 6 failed\n"
    assert sorted(p.name for p in tmp_path.glob("ran*")) == ["ran5", "ran6", "ran7"]

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_with_seeds_in_parallel([5, 9])))
    with pytest.raises(RuntimeError, match="^sentiment/mam/seed9: its process ended without a result$"):
        stage_main(["sentiment", "mam"], "train", _report_process)

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_with_seeds_in_parallel([5, 7], value="yes")))
    assert stage_main(["sentiment", "mam"], "train", _report_process) == 1
    assert capsys.readouterr().err == ("error: params.yaml train.offline.sentiment.seeds_in_parallel: expected "
                                       "true or false, got 'yes'\n")


def test_fingerprint_changes_with_the_run_and_the_settings():
    run = Run("sentiment", "x", "lora", {"attn_bn": 4})
    assert run.fingerprint({"steps": 2}) != run.fingerprint({"steps": 3})
    assert run.fingerprint({"steps": 2}) != Run("sentiment", "x", "lora", {"attn_bn": 8}).fingerprint({"steps": 2})


def assert_equal_tensors(actual: dict, expected: dict) -> None:
    """The same names, and bit-identical tensors under each."""
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


@pytest.fixture
def sentiment_project(tmp_path, monkeypatch):
    import data_fixtures as fx
    from prepare import prepare
    from test_data import PARAMS as DATA_PARAMS
    from tokenize_splits import tokenize

    fx.offline_assets(tmp_path / "assets")
    prepare("sentiment", DATA_PARAMS, tmp_path)
    tokenize("sentiment", {"profile": "offline", "tokenize": {"offline": {
        "tokenizer": "minilm", "sentiment": {"source": 16, "limit": {"train": 24}}}}}, tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_an_interrupted_run_resumes_and_ends_as_an_uninterrupted_one(sentiment_project, monkeypatch):
    """Killed in its second epoch (6 batches an epoch) with group_by_length (the offline default), a run resumes
    from checkpoint-8 on the very batches of the uninterrupted run and ends with bit-identical weights."""
    import torch
    from safetensors.torch import load_file
    from transformers import Trainer

    from unipeft.trainer import AdapterCheckpointsMixin

    from train import train

    settings = {"steps": 10, "batch_size": 4, "eval_batch_size": 8, "eval_every": 4, "eval_examples": 8,
                "learning_rate": 1e-3, "warmup": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "select": "loss",
                "group_by_length": True}
    run = Run("sentiment", "lora-small", "lora", {"attn_bn": 2}, seed=3, model="minilm")
    step, batches, last_step = Trainer.training_step, {}, []
    load_best = AdapterCheckpointsMixin._load_best_model

    def keep_last_step(self):  # the trained weights at step 10, before the best checkpoint replaces them
        last_step.append({n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad})
        return load_best(self)

    monkeypatch.setattr(AdapterCheckpointsMixin, "_load_best_model", keep_last_step)

    def record(self, model, inputs, *args, **kwargs):  # the batch each step trains on
        batches.setdefault(self.state.global_step, inputs["input_ids"].tolist())
        return step(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", record)
    uninterrupted_report = train(run, settings)
    weights = run.adapter_dir / "adapter_model.safetensors"
    uninterrupted, uninterrupted_batches = load_file(weights), dict(batches)
    weights.unlink()
    batches.clear()

    def crash_at_step_9(self, *args, **kwargs):
        if self.state.global_step == 9:
            raise KeyboardInterrupt
        return record(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", crash_at_step_9)
    with pytest.raises(KeyboardInterrupt):
        train(run, settings)
    assert (run.checkpoint_dir / "checkpoint-8").is_dir() and not weights.exists()
    batches.clear()
    monkeypatch.setattr(Trainer, "training_step", record)
    report = train(run, settings)
    assert sorted(batches) == [8, 9]  # resumed from checkpoint-8, not started over
    assert all(batches[s] == uninterrupted_batches[s] for s in batches)  # the same batches as uninterrupted
    assert report["steps"] == 10 and not run.checkpoint_dir.exists()  # cleaned up once finished
    assert report["best_step"] == uninterrupted_report["best_step"]
    assert_equal_tensors(load_file(weights), uninterrupted)  # the adapter saved (the best checkpoint's)
    assert len(last_step) == 2
    assert_equal_tensors(last_step[-1], last_step[0])  # and the weights after the last step


@pytest.mark.parametrize("min_steps, stopped_at", [(None, 4), (7, 8), (20, 12)])
def test_early_stopping_ends_a_run_whose_validation_score_stops_improving(sentiment_project, min_steps, stopped_at):
    """With a learning rate of 0 the validation loss never improves: patience 1 stops at the second evaluation,
    or at the first evaluation from early_stopping_min_steps on, or at the last step (12) when that comes first."""
    from train import train

    settings = {"steps": 12, "batch_size": 4, "eval_batch_size": 8, "eval_every": 2, "eval_examples": 8,
                "learning_rate": 0.0, "warmup": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "select": "loss",
                "early_stopping_patience": 1, **({"early_stopping_min_steps": min_steps} if min_steps else {})}
    report = train(Run("sentiment", "lora-small", "lora", {"attn_bn": 2}, seed=3, model="minilm"), settings)
    assert (report["steps"], report["max_steps"], report["stopped_early"], report["best_step"]) == (
        stopped_at, 12, stopped_at < 12, 2)


def test_seeds_trained_in_parallel_equal_seeds_trained_in_turn_at_one_thread(sentiment_project):
    """Two seeds on two cores: one thread each, in two processes; the adapters are those of the same seeds
    trained one after another at one thread (the scheduling of the processes changes nothing)."""
    from safetensors.torch import load_file

    from train import train
    from unipeft_bench.runs import stage_main

    tiny = {"steps": 4, "batch_size": 4, "eval_batch_size": 8, "eval_every": 2, "eval_examples": 8,
            "learning_rate": 1e-3, "warmup": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "select": "accuracy"}
    params = _with_seeds_in_parallel([3, 4])
    params["train"]["offline"]["sentiment"] = {**tiny, "seeds_in_parallel": True}
    params["grid"]["runs"] = {"lora-small": {"method": "lora", "offline": {"attn_bn": 2}}}
    (sentiment_project / "params.yaml").write_text(yaml.safe_dump(params))
    weights = {}
    threads = torch.get_num_threads()
    for parallel in (False, True):
        torch.set_num_threads(1)
        if parallel:
            assert stage_main(["sentiment", "lora-small"], "train", train) == 0
        else:
            for seed in (3, 4):
                train(Run("sentiment", "lora-small", "lora", {"attn_bn": 2}, seed=seed, model="minilm"), tiny)
        torch.set_num_threads(threads)
        weights[parallel] = {seed: load_file(f"runs/sentiment/lora-small/seed{seed}/adapter_model.safetensors")
                             for seed in (3, 4)}
    for seed in (3, 4):
        assert weights[True][seed].keys() == weights[False][seed].keys()
        for name, tensor in weights[False][seed].items():
            assert torch.equal(weights[True][seed][name], tensor), (seed, name)
    assert any(not torch.equal(weights[True][3][n], weights[True][4][n]) for n in weights[True][3])  # two seeds


@pytest.mark.parametrize("patience", [0, -1, 1.5, "2", True])
def test_a_bad_early_stopping_patience_is_one_line(patience):
    from unipeft_bench.training import early_stopping

    with pytest.raises(DataError, match="early_stopping_patience: expected a positive number"):
        early_stopping({"early_stopping_patience": patience}, Run("sentiment", "x", "lora"))


def _tiny_model(kind: str):
    """A random-weight BART (the real seq2seq backbone's class) or RoBERTa classifier, dropout off: two runs on the
    same examples then compute the same function."""
    from transformers import BartConfig, BartForConditionalGeneration, RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    if kind == "seq2seq":
        return BartForConditionalGeneration(BartConfig(
            vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
            pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0))
    return RobertaForSequenceClassification(RobertaConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=40, num_labels=3, pad_token_id=1, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0))


def _first_step_gradients(kind: str, model, examples: list, batch_size: int, accumulation: int,
                          label_smoothing: float) -> dict:
    """The gradients the optimizer receives at step 1 of a run built as the train stage builds it
    (training_arguments, resumable_trainer), before any clipping (max_grad_norm 0)."""
    from transformers import Seq2SeqTrainer, Trainer, TrainerCallback

    from unipeft_bench.training import resumable_trainer
    import unipeft

    grads = {}

    class RecordGradients(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads.update({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})

    unipeft.attach(model, "full")
    seq2seq = kind == "seq2seq"
    settings = {"steps": 1, "batch_size": batch_size, "gradient_accumulation": accumulation, "eval_batch_size": 4,
                "eval_every": 10, "eval_examples": 4, "learning_rate": 1e-3, "warmup": 0, "weight_decay": 0.0,
                "max_grad_norm": 0.0, "label_smoothing": label_smoothing, "select": "loss", "log_every": 1}
    run = Run("summarization" if seq2seq else "sentiment", f"b{batch_size}-ga{accumulation}", "full", seed=1)
    args = training_arguments(settings, run, seq2seq, len(examples))
    trainer = resumable_trainer(Seq2SeqTrainer if seq2seq else Trainer)(
        model=model, args=args, train_dataset=examples, eval_dataset=examples, callbacks=[RecordGradients()])
    trainer.train()
    assert trainer.state.global_step == 1 and grads
    return grads


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("kind", ["seq2seq", "classification"])
def test_gradient_accumulation_gives_the_gradient_of_the_whole_batch(kind, label_smoothing, tmp_path, monkeypatch):
    """One step on 4 examples in 2 micro-batches of 2 (gradient_accumulation 2, as the real profile's 4) receives
    the gradient of one batch of the same 4 examples: every example has as many label tokens (equal lengths, no
    padding), so the mean over the batch's tokens equals the mean of the micro-batches' means, and the label
    smoother's sum over all tokens of the step equals it too. Catches a gradient (and so a clipping threshold)
    scaled by the number of micro-batches."""
    import copy

    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 64, (4, 6), generator=g)  # no pad (1) or special tokens; equal lengths
    labels = torch.randint(3, 64, (4, 5), generator=g) if kind == "seq2seq" else torch.tensor([0, 2, 1, 2])
    examples = [{"input_ids": ids[i], "attention_mask": torch.ones_like(ids[i]), "labels": labels[i]}
                for i in range(4)]
    model = _tiny_model(kind)
    if kind == "seq2seq":  # as DataCollatorForSeq2Seq(model=...) does: the label smoother takes the labels away
        for example, decoder_ids in zip(examples, model.prepare_decoder_input_ids_from_labels(labels=labels)):
            example["decoder_input_ids"] = decoder_ids
    whole = _first_step_gradients(kind, copy.deepcopy(model), examples, 4, 1, label_smoothing)
    accumulated = _first_step_gradients(kind, copy.deepcopy(model), examples, 2, 2, label_smoothing)
    ratio = (torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in accumulated.values()]))
             / torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in whole.values()]))).item()
    assert accumulated.keys() == whole.keys()
    assert ratio == pytest.approx(1.0, rel=1e-4), f"accumulated / whole-batch gradient norm: {ratio:.4f}"
    for name, gradient in whole.items():  # float sums in another order
        torch.testing.assert_close(accumulated[name], gradient, rtol=1e-4, atol=1e-6, msg=name)


def test_curves_logger_ends_when_another_seed_removed_dvclives_step_signal(tmp_path, monkeypatch):
    """Seeds that train at once end their DVCLive together; DVCLive removes its VS Code step signal when it
    finds it, and another seed can remove it between the check and the removal. Any other missing file still
    fails."""
    import dvclive.live

    from unipeft_bench.training import curves_logger

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # where DVCLive puts the signal
    live = curves_logger(tmp_path / "curves", tmp_path / "scratch")
    live.log_metric("eval/accuracy", 50.0)
    live.next_step()
    signal = tmp_path / ".dvc" / "tmp" / "exps" / "run" / "DVCLIVE_STEP_COMPLETED"
    assert signal.exists()
    signal.unlink()  # the other seed's end(), after this one found the signal
    exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda path: str(path) == str(signal) or exists(path))
    live.end()
    assert (tmp_path / "curves" / "plots" / "metrics" / "eval" / "accuracy.tsv").exists()

    def lost_curve():
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "curves" / "other.tsv"))

    monkeypatch.setattr(dvclive.live, "cleanup_dvclive_step_completed", lost_curve)
    with pytest.raises(FileNotFoundError, match="other.tsv"):
        curves_logger(tmp_path / "curves2", tmp_path / "scratch").end()


@pytest.mark.parametrize("learning_rate, patience, steps", [(1e-3, None, 10), (0.0, 1, 4)])
def test_a_run_killed_after_its_training_ended_resumes_to_the_same_end(sentiment_project, monkeypatch,
                                                                       learning_rate, patience, steps):
    """A kill once training has ended (in a callback's on_train_end, here DVCLive's): the last checkpoint is where
    the run ended, at its last step or by early stopping (a learning rate of 0 never improves the loss). Trainer
    resumed from there would train on (a step past the last, or to the next evaluation), so the rerun resumes from
    the checkpoint before it and ends where the uninterrupted run ended, with its weights."""
    from safetensors.torch import load_file
    from transformers.integrations import DVCLiveCallback

    from train import train

    settings = {"steps": 10, "batch_size": 4, "eval_batch_size": 8, "eval_every": 4 if patience is None else 2,
                "eval_examples": 8, "learning_rate": learning_rate, "warmup": 0, "weight_decay": 0.0,
                "max_grad_norm": 1.0, "select": "loss", "group_by_length": True,
                **({"early_stopping_patience": patience} if patience else {})}
    run = Run("sentiment", "lora-small", "lora", {"attn_bn": 2}, seed=3, model="minilm")
    uninterrupted_report = train(run, settings)
    weights = run.adapter_dir / "adapter_model.safetensors"
    uninterrupted = load_file(weights)
    weights.unlink()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    on_train_end = DVCLiveCallback.on_train_end
    monkeypatch.setattr(DVCLiveCallback, "on_train_end", killed)
    with pytest.raises(KeyboardInterrupt):
        train(run, settings)
    assert (run.checkpoint_dir / f"checkpoint-{steps}").is_dir() and not weights.exists()
    monkeypatch.setattr(DVCLiveCallback, "on_train_end", on_train_end)
    report = train(run, settings)
    assert uninterrupted_report["steps"] == report["steps"] == steps
    assert report["best_step"] == uninterrupted_report["best_step"]
    assert_equal_tensors(load_file(weights), uninterrupted)
