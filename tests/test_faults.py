"""Faults of the train stage (issue 12): settings the Trainer would read in another sense, a run killed while
saving a checkpoint or its output, a rerun on other data, and the training time of a resumed run."""

from __future__ import annotations

import json
import os
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
            (directory / f"checkpoint-{step}" / "unipeft_config.json").write_text("{}")  # the adapter
    assert resume_point(directory, "aaa") == str(directory / "checkpoint-2")
    assert sorted(p.name for p in directory.iterdir()) == ["checkpoint-2", "run.json"]
    shutil.rmtree(directory / "checkpoint-2")
    (directory / "checkpoint-8").mkdir()
    assert resume_point(directory, "aaa") is None and sorted(p.name for p in directory.iterdir()) == ["run.json"]
    (directory / "checkpoint-9").mkdir()  # a whole-model checkpoint of before adapter-only ones: not resumed from
    (directory / "checkpoint-9" / "trainer_state.json").write_text("{}")
    assert resume_point(directory, "aaa") is None and sorted(p.name for p in directory.iterdir()) == ["run.json"]


def _interrupt_at_step_1(monkeypatch) -> None:
    """The next training run is killed (KeyboardInterrupt) at step 1, before its first checkpoint."""
    from transformers import Trainer

    step = Trainer.training_step

    def interrupted_at_step_1(self, *args, **kwargs):
        if self.state.global_step == 1:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", interrupted_at_step_1)


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
        with pytest.raises(KeyboardInterrupt, match=f"^{run.slug} interrupted; the next `dvc repro` resumes it "
                           f"from {run.checkpoint_dir / 'checkpoint-2'}$"):
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


def test_the_same_seed_trains_the_same_weights_and_another_seed_does_not(sentiment_project):
    """Determinism on one machine (the group_by_length batches of the pipeline included): the same run twice gives
    equal tensors; across machines results move (docs/pipeline.md), which the evidence grid's seeds and intervals
    carry."""
    from safetensors.torch import load_file

    from train import train

    settings = {**SETTINGS, "group_by_length": True}
    weights = []
    for seed in (3, 3, 4):
        train(Run(RUN.task, RUN.name, RUN.method, RUN.budget, seed=seed, model=RUN.model), settings)
        weights.append(load_file(Run(RUN.task, RUN.name, RUN.method, RUN.budget, seed=seed,
                                     model=RUN.model).adapter_dir / "adapter_model.safetensors"))
    assert weights[0].keys() == weights[1].keys() == weights[2].keys() and len(weights[0]) > 2
    assert all(weights[0][name].equal(weights[1][name]) for name in weights[0])
    assert not all(weights[0][name].equal(weights[2][name]) for name in weights[0])


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
    assert not (sentiment_project / "checkpoints").exists()  # a rerun would diverge again: nothing to resume


def test_a_run_interrupted_before_its_first_checkpoint_leaves_no_checkpoint_folder(sentiment_project, monkeypatch):
    """Nothing to resume from: no checkpoints/<run>/run.json (nor empty checkpoints/<task>/) left behind."""
    from train import train

    _interrupt_at_step_1(monkeypatch)
    with pytest.raises(KeyboardInterrupt, match=f"^{RUN.slug} interrupted before its first checkpoint; the next "
                       "`dvc repro` trains it from the start$"):
        train(RUN, SETTINGS)
    assert not (sentiment_project / "checkpoints").exists() and not (sentiment_project / "runs").exists()


@pytest.mark.parametrize("marker", ['{"fingerp', "", "[1, 2]", "\udcff"])  # killed while writing it, or damaged
def test_an_unreadable_checkpoint_marker_means_starting_over(tmp_path, marker):
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    (directory / "run.json").write_text(marker, errors="surrogateescape")
    (directory / "checkpoint-2").mkdir()
    (directory / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (directory / "checkpoint-2" / "unipeft_config.json").write_text("{}")  # the adapter (unipeft.trainer)
    assert resume_point(directory, "aaa") is None
    assert sorted(p.name for p in directory.iterdir()) == ["run.json"]
    assert json.loads((directory / "run.json").read_text()) == {"fingerprint": "aaa"}


def _previous_curves(run) -> dict[str, str]:
    """A finished run's DVCLive files, as the train stage leaves them beside its adapter."""
    files = {"plots/metrics/loss.tsv": "step\tloss\n0\t0.5\n", "metrics.json": '{"loss": 0.5}\n'}
    for name, content in files.items():
        (run.live_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run.live_dir / name).write_text(content)
    return files


def test_a_run_refused_before_training_leaves_the_previous_curves_untouched(sentiment_project):
    """Run directly (DVC would have removed them already): a refused setting must not clear the curves of the
    run whose adapter stays in place; early_stopping_patience is checked after the model is built."""
    from train import train

    previous = _previous_curves(RUN)
    with pytest.raises(DataError, match="early_stopping_patience: expected a positive number"):
        train(RUN, {**SETTINGS, "early_stopping_patience": 0})
    assert {name: (RUN.live_dir / name).read_text() for name in previous} == previous
    assert not (sentiment_project / "checkpoints").exists()


def test_a_run_that_starts_training_never_shows_the_previous_runs_curves(sentiment_project, monkeypatch):
    """Once training starts, the curves are the new run's only (Live clears the old ones), even where it then
    fails: no old points mixed with new ones."""
    from train import train

    _previous_curves(RUN)
    _interrupt_at_step_1(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(RUN, {**SETTINGS, "log_every": 1})
    for name, old in (("plots/metrics/loss.tsv", "\t0.5\n"), ("metrics.json", '"loss": 0.5}')):
        assert not (RUN.live_dir / name).exists() or old not in (RUN.live_dir / name).read_text(), name


# The aggregate stage killed (SIGKILL) at its n-th write: each file write, each rename, each directory swap.
KILLED_AGGREGATE = """
import os, pathlib, signal, sys
sys.path.insert(0, sys.argv[1])
from unipeft_bench import io

events, kill_at = [0], int(os.environ["KILL_AT"])
def counted(do):
    def event(*args):
        events[0] += 1
        if events[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return do(*args)
    return event
pathlib.Path.write_bytes, os.replace = counted(pathlib.Path.write_bytes), counted(os.replace)
if hasattr(io, "_exchange"):  # the directory swaps
    io._exchange = counted(io._exchange)
import aggregate
code = aggregate.main()
print("events", events[0])
sys.exit(code)
"""


def _outputs(root) -> dict[str, dict[str, bytes]]:
    return {name: {p.name: p.read_bytes() for p in (root / "results" / name).iterdir()}
            for name in ("tables", "plots")}


def _put(root, outputs: dict[str, dict[str, bytes]]) -> None:
    shutil.rmtree(root / "results", ignore_errors=True)
    for name, files in outputs.items():
        (root / "results" / name).mkdir(parents=True)
        for file, content in files.items():
            (root / "results" / name / file).write_bytes(content)


def test_the_aggregate_stage_killed_at_any_write_leaves_each_output_directory_old_or_new(tmp_path, monkeypatch):
    """kill -9 at the first write, in the middle, at the last file, and between the two directory swaps: tables/
    and plots/ are each exactly the previous run's or exactly the new one's, never a mix, never a half or
    temporary file; the next run completes and leaves no staging folder behind."""
    import subprocess
    import sys

    import aggregate
    from test_aggregate import write_workspace
    from test_pipeline import ROOT

    monkeypatch.chdir(tmp_path)
    write_workspace(tmp_path, ["full", "lora"], [1, 2], generation=["summarization"], classification=["sentiment"])
    assert aggregate.main() == 0
    previous = _outputs(tmp_path)
    write_workspace(tmp_path, ["full", "lora", "prefix"], [1, 2], generation=["summarization"],
                    classification=["sentiment"])  # one more run: every table and plot changes
    assert aggregate.main() == 0
    new = _outputs(tmp_path)
    assert all(previous[d][f] != new[d][f] for d in new for f in new[d])
    (tmp_path / "killed.py").write_text(KILLED_AGGREGATE)

    def killed_at(event: int) -> subprocess.CompletedProcess:
        _put(tmp_path, previous)
        return subprocess.run([sys.executable, "killed.py", str(ROOT / "stages")], env={
            **os.environ, "KILL_AT": str(event), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)

    done = killed_at(0)  # never killed: how many events a whole run has
    assert done.returncode == 0, done.stderr[-2000:]
    events = int(done.stdout.split("events ")[-1])
    assert _outputs(tmp_path) == new and events >= 2 * 8  # 8 files (write, rename), and the swaps
    for event in (1, 2, events // 2, events - 2, events - 1, events):
        killed = killed_at(event)
        assert killed.returncode == -9, (event, killed.stderr[-2000:])
        left = _outputs(tmp_path)
        for directory in ("tables", "plots"):
            assert left[directory] in (previous[directory], new[directory]), (event, directory)
    assert left["plots"] == new["plots"] and left["tables"] == previous["tables"]  # killed between the swaps
    done = subprocess.run([sys.executable, "killed.py", str(ROOT / "stages")], env={**os.environ, "KILL_AT": "0"},
                          capture_output=True, text=True)
    assert done.returncode == 0 and _outputs(tmp_path) == new
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["plots", "tables"]  # no staging left


# Loaded by every Python process of the test's `dvc repro` (DVC and the stage commands): kills the whole process
# group, DVC included, at KILL_DVC_AT: "command" as the tokenize stage's command starts (DVC has removed its
# output), "commit" as DVC starts to store the finished output (before dvc.lock records it).
KILL_DVC = """
import os, signal, sys
where = os.environ.get("KILL_DVC_AT")
if where == "command" and sys.argv and sys.argv[0].endswith("tokenize_splits.py"):
    os.killpg(0, signal.SIGKILL)
if where == "commit" and sys.argv and sys.argv[0].endswith("dvc"):
    from dvc.stage import Stage

    commit = Stage.commit
    def killed(self, *args, **kwargs):
        if self.addressing == "tokenize@sentiment":
            os.killpg(0, signal.SIGKILL)
        return commit(self, *args, **kwargs)
    Stage.commit = killed
"""


@pytest.mark.slow
def test_dvc_killed_during_repro_recovers_on_the_next_repro_with_identical_results(tmp_path):
    """kill -9 of `dvc repro` itself (and its stage command) on a temporary copy of the project, in two places;
    the next `dvc repro` completes with no manual step, and the outputs and dvc.lock are those of an uninterrupted
    run. About 40 s."""
    import subprocess

    import yaml
    from test_pipeline import BIN, dvc, tiny_project

    repo = tiny_project(tmp_path / "repo")
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(KILL_DVC)

    def outputs() -> dict[str, bytes]:
        out = repo / "data" / "tokenized" / "sentiment"
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    def lock() -> dict:
        return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]

    dvc(repo, "repro", "tokenize@sentiment")
    uninterrupted, uninterrupted_lock = outputs(), lock()
    for where in ("command", "commit"):
        killed = subprocess.run([str(BIN / "dvc"), "repro", "--force", "--single-item", "tokenize@sentiment"],
                                cwd=repo, capture_output=True, text=True, start_new_session=True, env={
                                    **os.environ, "KILL_DVC_AT": where, "DVC_NO_ANALYTICS": "1",
                                    "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                                    "PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"),
                                                                   os.environ.get("PYTHONPATH", "")])})
        assert killed.returncode == -9, (where, killed.stdout[-2000:], killed.stderr[-2000:])
        dvc(repo, "repro", "tokenize@sentiment")  # no lock to remove by hand, no `dvc checkout`
        assert outputs() == uninterrupted and lock() == uninterrupted_lock, where
        assert "up to date" in dvc(repo, "status", "tokenize@sentiment"), where
