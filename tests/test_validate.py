"""The validate stage (stages/validate.py): every bad params.yaml value the other stages would meet is refused
first, in one line naming the key, with nothing written, so `dvc repro` stops before DVC removes any output."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import validate as stage
from test_grids import GRIDS, composed
from unipeft_bench.errors import DataError
from unipeft_bench.validation import validate

ROOT = Path(__file__).resolve().parents[1]
PARAMS = composed()


def _set(params: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        params = params[part]
    if value is DELETE:
        del params[last]
    else:
        params[last] = value


DELETE = object()

# (key set to a value, or deleted; what the one line says)
BAD = [
    ("profile", "cloud", "params.yaml profile: expected one of offline, real, got 'cloud'"),
    ("profile", DELETE, "params.yaml: missing key 'profile'"),
    ("task", "sentimnt", "params.yaml task: unknown task 'sentimnt'; known: summarization, translation, nli, "
                         "sentiment"),
    ("seed", "42", "params.yaml seed: expected an integer, got '42'"),
    ("grid.seeds", ["42"], "params.yaml grid.seeds: expected a non-empty list of integers"),
    ("grid.seeds", 42, "params.yaml grid.seeds: expected a non-empty list of integers"),
    ("grid.seeds", [], "params.yaml grid.seeds: expected a non-empty list of integers, got []"),
    ("grid.seeds", [7, 7], "params.yaml grid.seeds: [7, 7] repeats a seed"),
    ("grid.runs", {}, "params.yaml grid.runs: expected a non-empty mapping of run names, got {}"),
    ("grid.runs.lora.offline.attn_bn", 10 ** 12, "params.yaml grid.runs.lora.offline.attn_bn: expected a positive "
                                                 "integer of at most 65,536"),
    ("grid.runs.lora.offline.attn_bn", 4.5, "params.yaml grid.runs.lora.offline.attn_bn: expected a positive"),
    ("grid.runs.prefix.offline.classification", {"attn_bn": 0},
     "params.yaml grid.runs.prefix.offline.classification.attn_bn: expected a positive integer"),
    ("grid.generation", ["sumarization"], "params.yaml grid.generation: unknown task 'sumarization'"),
    ("grid.generation", ["nli"], "params.yaml grid.generation: 'nli' is a classification task"),
    ("grid.classification", ["translation"], "params.yaml grid.classification: 'translation' is a seq2seq task"),
    ("grid.classification", "sentiment", "params.yaml grid.classification: expected a list of tasks"),
    ("grid.runs.full.method", "ful", "params.yaml grid.runs.full.method:"),
    ("grid.runs.lora.offline", {"atn_bn": 4}, "params.yaml grid.runs.lora.offline: unknown key 'atn_bn'"),
    ("grid.runs.full.offline", {"attn_bn": 4}, "params.yaml grid.runs.full:"),
    ("grid.runs.baseline", {"method": "lora"}, "params.yaml grid.runs.baseline: the name is reserved"),
    ("method", "lorra", "params.yaml method:"),
    ("budget", {"rank": 4}, "params.yaml budget.rank: not a known key"),
    ("budget.attn_bn", -3, "params.yaml budget.attn_bn: expected a positive integer of at most 65,536 (prefix length l "
                           "or rank r), got -3"),
    ("budget.ffn_bn", 0, "params.yaml budget.ffn_bn: expected a positive integer"),
    ("budget.attn_bn", [4, 8], "params.yaml budget.attn_bn: expected a positive integer"),
    ("budget.attn_bn", 1e12, "params.yaml budget.attn_bn: expected a positive integer"),
    ("budget.scale", "abc", "params.yaml budget.scale: expected a positive number or 'learned', got 'abc'"),
    ("model", "models/no_such_model", "params.yaml model: no model directory 'models/no_such_model'"),
    ("model", "bert-base-uncased", "params.yaml model: 'bert-base-uncased' is a Hub name"),
    ("models.offline.sentiment", "FacebookAI/roberta-base", "params.yaml models.offline.sentiment: "
                                                            "'FacebookAI/roberta-base' is a Hub name"),
    ("models.offline.summarization", DELETE, "params.yaml: missing key 'models.offline.summarization'"),
    ("evaluate.offline.sentiment.batch_size", DELETE,
     "params.yaml: missing key 'evaluate.offline.sentiment.batch_size'"),
    ("evaluate.offline.summarization.generation", DELETE,
     "params.yaml: missing key 'evaluate.offline.summarization.generation'"),
    ("data.sentiment.test_fraction", DELETE, "params.yaml: missing key 'data.sentiment.test_fraction'"),
    ("data.summarization", DELETE, "params.yaml: missing key 'data.summarization'"),
    ("data.sentiment.validation_fraction", 1.5, "params.yaml data.sentiment.validation_fraction: expected a "
                                                "fraction in (0, 1), got 1.5"),
    ("data.sentiment.validation_fraction", 0.95, "params.yaml data.sentiment: the held-out fractions add up to 1.05"),
    ("evaluate.offline.sentiment.batch_size", 0, "params.yaml evaluate.offline.sentiment.batch_size: expected a "
                                                 "positive integer, got 0"),
    ("evaluate.offline.sentiment.bf16", "yes please", "params.yaml evaluate.offline.sentiment.bf16: expected true "
                                                      "or false"),
    ("evaluate.offline.sentiment.generation", {"num_beams": 1}, "params.yaml evaluate.offline.sentiment.generation: "
                                                                "a classification task generates nothing"),
    ("evaluate.offline.summarization.generation.num_beams", 0,
     "params.yaml evaluate.offline.summarization.generation.num_beams: expected a positive integer, got 0"),
    ("evaluate.offline.summarization.generation.beams", 4,
     "params.yaml evaluate.offline.summarization.generation.beams: not a known key"),
    ("evaluate.offline.summarization.beam_size", 4, "params.yaml evaluate.offline.summarization.beam_size: not a "
                                                    "known key"),
    ("tokenize.offline.summarization.source", 0, "params.yaml tokenize.offline.summarization.source: expected a "
                                                 "positive integer, got 0"),
    ("tokenize.offline.sentiment.limit", {"train": -1}, "params.yaml tokenize.offline.sentiment.limit.train: "
                                                        "expected a positive integer"),
    ("tokenize.offline.sentiment.max_length", 64, "params.yaml tokenize.offline.sentiment.max_length: not a known"),
    ("train.offline.sentiment.select", DELETE, "params.yaml train.offline.sentiment: missing key 'select'"),
    ("train.offline.summarization.steps", 0, "params.yaml train.offline.summarization.steps: expected a positive"),
    ("train.offline.sentiment.learning_rate", "1e-3", "params.yaml train.offline.sentiment.learning_rate:"),
    ("train.offline.sentiment.by_method", {"full": {"lr": 1}},
     "params.yaml train.offline.sentiment.by_method.full.lr"),
    ("train.offline.sentiment.label_smoothing", "high", "params.yaml train.offline.sentiment.label_smoothing: "
                                                        "expected a number in [0, 1), got 'high'"),
    ("train.offline.sentiment.adam_beta2", 1.5, "params.yaml train.offline.sentiment.adam_beta2: expected a number "
                                                "in (0, 1), got 1.5"),
    ("train.offline.sentiment.bf16", "yes please", "params.yaml train.offline.sentiment.bf16: expected true or false"),
    ("train.offline.sentiment.model_config", {"hidden_dropout_prob": 2.0},
     "params.yaml train.offline.sentiment.model_config.hidden_dropout_prob: expected a probability in [0, 1], "
     "got 2.0"),
    ("train.offline.sentiment.select", "f1", "params.yaml train.offline.sentiment.select: unknown 'f1'"),
    ("train.offline.sentiment.learning_rat", 1.0e-3, "params.yaml train.offline.sentiment.learning_rat: not a train "
                                                     "setting"),
    ("train.offline.summarization.validation_generation", {"num_beams": 0},
     "params.yaml train.offline.summarization.validation_generation.num_beams: expected a positive integer"),
    ("train.offline.nli", DELETE, None),  # not in the default grid: no refusal
]


@pytest.mark.parametrize("key, value, message", BAD, ids=[f"{k}={'<deleted>' if v is DELETE else v}"
                                                          for k, v, _ in BAD])
def test_a_bad_value_is_one_line_naming_its_key_and_nothing_is_written(tmp_path, monkeypatch, capsys, key, value,
                                                                       message):
    params = copy.deepcopy(PARAMS)
    _set(params, key, value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    code = stage.main([])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0 and (tmp_path / "validated/params.json").is_file()
        return
    assert code == 1
    assert err.count("\n") == 1 and err.startswith(f"error: {message}"), err
    assert "dvc checkout" in err  # how to get back what an earlier failed run removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written


BY_HAND = [row for row in BAD if row[0].split(".")[0] in ("data", "tokenize") and row[2] is not None]


@pytest.mark.parametrize("key, value, message", BY_HAND, ids=[f"{k}={'<deleted>' if v is DELETE else v}"
                                                              for k, v, _ in BY_HAND])
def test_the_data_stages_run_by_hand_refuse_their_values_as_the_validate_stage_does(tmp_path, key, value, message):
    """The prepare and tokenize stages check their own sections with the same schema (src/unipeft_bench/schema.py),
    before they read anything."""
    from prepare import prepare
    from tokenize_splits import tokenize

    params = copy.deepcopy(PARAMS)
    _set(params, key, value)
    section, *rest = key.split(".")
    work, task = (prepare, rest[0]) if section == "data" else (tokenize, rest[1])
    with pytest.raises(DataError) as refused:
        work(task, params, tmp_path)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("profile", ["offline", "real"])
def test_every_grid_of_the_paper_is_valid_in_both_profiles(grid, profile):
    validate(composed(f"grid={grid}", f"profile={profile}"))


def test_the_experiment_task_need_not_be_in_the_grid_but_is_checked():
    params = copy.deepcopy(PARAMS)
    params["task"] = "translation"
    del params["evaluate"]["offline"]["translation"]["batch_size"]
    with pytest.raises(DataError, match="evaluate.offline.translation.batch_size"):
        validate(params)


def test_the_stage_takes_about_a_second_and_imports_no_torch(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    probe = ("import runpy, sys; sys.argv = ['validate.py']\n"
             "try:\n    runpy.run_path(%r, run_name='__main__')\n"
             "except SystemExit as e:\n    assert not e.code, e.code\n"
             "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
             % str(ROOT / "stages/validate.py"))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    assert elapsed < 3, f"{elapsed:.1f} s"
    # the same whatever the params, so that a params change reruns only the stages that read the changed key
    assert json.loads((tmp_path / "validated/params.json").read_text()) == {"params.yaml": "valid"}


def test_an_unknown_packaged_llm_is_refused_naming_the_key():
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["llm_backbone"]["model"] = "smollm3"
    with pytest.raises(DataError, match="params.yaml llm_backbone.model: unknown packaged model 'smollm3'"):
        validate(params)
