"""Faults of the train stage (issue 12): settings the Trainer would read in another sense, a run killed while
saving a checkpoint or its output, a rerun on other data, and the training time of a resumed run."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from unipeft_bench import io
from unipeft_bench.errors import DataError
from unipeft_bench.runs import Run
from unipeft_bench.training import resume_point

from test_training import sentiment_project  # noqa: F401  (a fixture)

SETTINGS = {"steps": 4, "batch_size": 4, "eval_batch_size": 8, "eval_every": 2, "eval_examples": 8,
            "learning_rate": 1e-3, "warmup": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "select": "accuracy"}
RUN = Run("sentiment", "lora-small", "lora", {"attn_bn": 2}, seed=3, model="minilm")
GONE = object()  # a key removed from SETTINGS


@pytest.mark.parametrize("change, message", [
    ({"steps": 0}, ".steps: expected a positive number of steps, got 0"),  # the Trainer would train one step
    ({"steps": -1}, ".steps: expected a positive number of steps, got -1"),  # ... or three epochs
    ({"steps": GONE, "epochs": 0}, ".epochs: expected a positive number of epochs, got 0"),
    ({"eval_every": 0}, ".eval_every: expected a positive number"),
    ({"learning_rate": "1e-3"}, ".learning_rate: expected a number ≥ 0"),
    ({"learning_rate": -1e-3}, ".learning_rate: expected a number ≥ 0"),
    ({"batch_size": 0}, ".batch_size: expected a positive number of examples"),
    ({"eval_examples": 0}, ".eval_examples: expected a positive number of examples"),
    ({"eval_examples": -8}, ".eval_examples: expected a positive number of examples"),
    ({"select": GONE}, ": missing key 'select'"),
    ({"eval_examples": GONE}, ": missing key 'eval_examples'"),
    ({"batch_size": GONE}, ": missing key 'batch_size'"),
    ({"steps": GONE}, ": missing key 'steps' \\(or 'epochs'\\)"),
    ({"by_method": {"lora": {"steps": 0}}}, ".steps: expected a positive number"),  # after the override applies
])
def test_bad_train_settings_are_one_line_naming_the_key_and_nothing_is_written(change, message, tmp_path,
                                                                                monkeypatch):
    from train import train

    monkeypatch.chdir(tmp_path)  # no data either: the settings are refused first
    settings = {key: value for key, value in {**SETTINGS, **change}.items() if value is not GONE}
    with pytest.raises(DataError, match=r"^params.yaml train.offline.sentiment" + message) as err:
        train(RUN, settings)
    assert "\n" not in str(err.value) and list(tmp_path.iterdir()) == []


def test_training_arguments_refuse_bad_settings_too():
    from unipeft_bench.training import training_arguments

    with pytest.raises(DataError, match=r"train.offline.sentiment.steps: expected a positive number"):
        training_arguments({**SETTINGS, "steps": 0}, RUN, seq2seq=False, train_examples=24)


def test_resume_skips_and_removes_checkpoints_whose_save_was_cut_short(tmp_path):
    directory = tmp_path / "checkpoints"
    resume_point(directory, "aaa")
    for step, state in ((2, "{}"), (4, None), (6, '{"global_st')):  # 4: killed before trainer_state.json, 6: in it
        (directory / f"checkpoint-{step}").mkdir()
        (directory / f"checkpoint-{step}" / "model.safetensors").write_text("")
        if state is not None:
            (directory / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert resume_point(directory, "aaa") == str(directory / "checkpoint-2")
    assert sorted(p.name for p in directory.iterdir()) == ["checkpoint-2", "run.json"]
    shutil.rmtree(directory / "checkpoint-2")
    (directory / "checkpoint-8").mkdir()
    assert resume_point(directory, "aaa") is None and sorted(p.name for p in directory.iterdir()) == ["run.json"]


def _interrupt_at_step_3(run, settings, monkeypatch, seconds_per_step: float = 0.0):
    """Train `run` until it is killed at step 3, after saving checkpoint-2; each step before takes at least
    `seconds_per_step`."""
    from transformers import Trainer

    from train import train

    step = Trainer.training_step

    def slow_then_crash_at_step_3(self, *args, **kwargs):
        if self.state.global_step == 3:
            raise KeyboardInterrupt
        time.sleep(seconds_per_step)
        return step(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "training_step", slow_then_crash_at_step_3)
        with pytest.raises(KeyboardInterrupt):
            train(run, settings)
    assert (run.checkpoint_dir / "checkpoint-2" / "trainer_state.json").is_file()


def _train_counting_steps(run, settings, monkeypatch) -> tuple[dict, list[int]]:
    from transformers import Trainer

    from train import train

    step, steps_taken = Trainer.training_step, []

    def count(self, *args, **kwargs):
        steps_taken.append(self.state.global_step)
        return step(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "training_step", count)
        return train(run, settings), steps_taken


def test_a_checkpoint_killed_while_saving_does_not_wedge_the_run(sentiment_project, monkeypatch):
    _interrupt_at_step_3(RUN, SETTINGS, monkeypatch)
    cut_short = RUN.checkpoint_dir / "checkpoint-4"  # the next save, killed after the weights, before its state
    cut_short.mkdir()
    for weights in (RUN.checkpoint_dir / "checkpoint-2").glob("*.safetensors"):
        shutil.copy(weights, cut_short)
    report, steps_taken = _train_counting_steps(RUN, SETTINGS, monkeypatch)
    assert steps_taken == [2, 3] and report["steps"] == 4  # resumed from the complete checkpoint-2


def test_a_rerun_on_other_data_starts_over(sentiment_project, monkeypatch):
    from tokenize_splits import tokenize

    _interrupt_at_step_3(RUN, SETTINGS, monkeypatch)
    tokenize("sentiment", {"profile": "offline", "tokenize": {"offline": {  # limit.train 24 → 20
        "tokenizer": "minilm", "sentiment": {"source": 16, "limit": {"train": 20}}}}}, sentiment_project)
    report, steps_taken = _train_counting_steps(RUN, SETTINGS, monkeypatch)
    assert steps_taken == [0, 1, 2, 3] and report["train_examples"] == 20


def test_a_resumed_run_reports_the_seconds_of_all_its_parts(sentiment_project, monkeypatch):
    _interrupt_at_step_3(RUN, SETTINGS, monkeypatch, seconds_per_step=1.5)  # ≥ 3 s before checkpoint-2
    saved = json.loads((RUN.checkpoint_dir / "checkpoint-2" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["TrainingClock"]["args"]["earlier_seconds"] >= 3
    report, steps_taken = _train_counting_steps(RUN, SETTINGS, monkeypatch)
    assert steps_taken == [2, 3] and report["seconds"] >= 3
    written = json.loads((RUN.adapter_dir / "training.json").read_text())
    assert written["seconds"] == report["seconds"]


def test_a_later_output_removes_the_staging_folders_of_killed_ones(tmp_path):
    target = tmp_path / "runs" / "x"
    stale = tmp_path / "runs" / ".x.staging-k1ll3d"
    stale.mkdir(parents=True)
    (stale / "adapter_model.safetensors").write_text("half")
    other = tmp_path / "runs" / ".xy.staging-abc"  # another target's: not ours to remove
    other.mkdir()
    with io.atomic_directory(target) as staging:
        (staging / "training.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [".xy.staging-abc", "x"]


def test_the_inputs_identity_changes_with_the_data_and_the_base_model(tmp_path):
    from unipeft_bench.training import inputs_identity

    data, model = tmp_path / "data", tmp_path / "model"
    (data / "train").mkdir(parents=True)
    model.mkdir()
    (data / "train" / "state.json").write_text('{"_fingerprint": "a"}')
    (model / "config.json").write_text('{"hidden_size": 8}')
    before = inputs_identity(data, str(model))
    (model / "config.json").write_text('{"hidden_size": 16}')
    assert inputs_identity(data, str(model))["model"] != before["model"]
    (data / "train" / "state.json").write_text('{"_fingerprint": "b"}')
    assert inputs_identity(data, str(model))["data"] != before["data"]
    assert inputs_identity(data, "roberta-base")["model"] == "roberta-base"  # a Hub name: no download



@pytest.mark.parametrize("log_every", [1, 10])  # 10: no log before the end but train_loss
def test_a_diverging_run_stops_in_one_line_and_writes_nothing(sentiment_project, monkeypatch, log_every):
    """A loss that turns NaN at step 2 (as a far too high learning rate makes it): Trainer would log it as the mean
    of the earlier losses, train on and save NaN weights that score chance. Here the run stops, writing nothing."""
    from transformers import Trainer

    from train import train

    step = Trainer.training_step

    def nan_at_step_2(self, *args, **kwargs):
        loss = step(self, *args, **kwargs)
        return loss * float("nan") if self.state.global_step == 2 else loss

    monkeypatch.setattr(Trainer, "training_step", nan_at_step_2)
    with pytest.raises(DataError, match=r"^training diverged at step \d+: (loss|train_loss) is nan") as err:
        train(RUN, {**SETTINGS, "log_every": log_every})
    assert "\n" not in str(err.value) and (log_every > 1 or "at step 3: loss" in str(err.value))
    assert not (sentiment_project / "runs").exists() and not RUN.metrics_path.exists()  # no adapter, no score
