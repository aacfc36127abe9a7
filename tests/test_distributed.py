"""The train stage under `torchrun --nproc_per_node 2` on CPU (gloo), as docs/pipeline.md documents for several GPUs:
it finishes, trains what one process trains on the same global batch, writes its outputs once (rank 0), and
resumes after one of its processes is killed (issue 11, item 13).

The method is prefix tuning: its MLP is the case of parameters that get no gradient on some steps (vectors from a
cache after an evaluation), which must not hang or stop DDP. Dropout is off (the model's, which the prefix
follows), so that one and two processes draw no different random numbers; fp32, as bf16 autocast rounds
differently on batches of another shape. Each torchrun takes about 20 s here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from test_pipeline import ROOT
from test_training import sentiment_project  # noqa: F401  (a fixture)

RUN_ARGS = ["sentiment", "prefix", "3"]
GLOBAL_BATCH = 4
SETTINGS = {"steps": 4, "batch_size": GLOBAL_BATCH // 2, "eval_batch_size": 4, "eval_every": 2, "eval_examples": 8,
            "learning_rate": 1e-3, "warmup": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "select": "loss",
            "log_every": 1, "group_by_length": True, "bf16": False,
            "model_config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}

# Runs the train stage in each process, recording per rank (file <what>-<rank>.txt) the steps it trains and the
# outputs it writes; FAULT=kill-rank1-after-step3 makes rank 1 kill itself (SIGKILL) once step 3's gradients are
# all-reduced, i.e. once rank 0 has finished writing checkpoint-2.
LAUNCHED = """
import os, runpy, signal, sys
import dvclive
from transformers import Trainer
from unipeft_bench import io

rank = os.environ["RANK"]
def note(what, line):
    with open(f"{what}-{rank}.txt", "a") as f:
        f.write(f"{line}\\n")

step, atomic_directory, live_init = Trainer.training_step, io.atomic_directory, dvclive.Live.__init__
def training_step(self, *args, **kwargs):
    note("steps", self.state.global_step)
    loss = step(self, *args, **kwargs)
    if os.environ.get("FAULT") == "kill-rank1-after-step3" and rank == "1" and self.state.global_step == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return loss
def writes_output(path):
    note("writes", path)
    return atomic_directory(path)
def writes_curves(self, directory=None, *args, **kwargs):
    note("writes", directory)
    return live_init(self, directory, *args, **kwargs)
Trainer.training_step, io.atomic_directory, dvclive.Live.__init__ = training_step, writes_output, writes_curves

sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _torchrun(project: Path, fault: str = "") -> subprocess.CompletedProcess:
    for record in project.glob("*-[01].txt"):
        record.unlink()
    env = {**os.environ, "FAULT": fault, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "stages"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2",
                           str(project / "launched.py"), str(ROOT / "stages" / "train.py"), *RUN_ARGS],
                          cwd=project, env=env, capture_output=True, text=True)


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.is_file() else []


def _adapter(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run.adapter_dir / "adapter_model.safetensors")


def _losses(run) -> dict[int, float]:
    rows = (run.live_dir / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]
    return {int(step): float(loss) for step, loss in (row.split("\t") for row in rows)}


def _close_to(trained: dict, reference: dict) -> None:
    assert trained.keys() == reference.keys()
    for name, tensor in reference.items():  # float sums in another order: Adam turns their ulps into ~1e-5
        torch.testing.assert_close(trained[name], tensor, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.slow
def test_two_processes_train_as_one_on_the_global_batch_write_once_and_resume_after_a_kill(sentiment_project):
    from train import train
    from unipeft_bench.runs import resolve

    project = sentiment_project
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "offline"
    params["train"]["offline"]["sentiment"] = SETTINGS
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (project / "launched.py").write_text(LAUNCHED)
    [run] = resolve(params, RUN_ARGS)

    single = train(run, {**SETTINGS, "batch_size": GLOBAL_BATCH})  # one process, the same global batch
    reference, reference_losses = _adapter(run), _losses(run)
    shutil.rmtree(project / "runs")

    done = _torchrun(project)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _lines(project / "steps-0.txt") == _lines(project / "steps-1.txt") == ["0", "1", "2", "3"]
    assert _lines(project / "writes-0.txt") == [str(run.live_dir), str(run.adapter_dir)]
    assert _lines(project / "writes-1.txt") == []  # rank 1 writes no output and no curves
    assert sorted(p.name for p in run.adapter_dir.parent.iterdir()) == [run.adapter_dir.name]  # no staging left
    report = json.loads((run.adapter_dir / "training.json").read_text())
    assert report["batches"] == "2 examples in each of 2 processes" and report["steps"] == 4
    assert report["best_step"] == single["best_step"]
    assert not run.checkpoint_dir.exists()
    uninterrupted = _adapter(run)
    _close_to(uninterrupted, reference)
    losses = _losses(run)  # one writer: each step logged once; the mean loss of both, not their sum
    assert list(losses) == list(reference_losses) == [0, 1, 3, 4]
    assert list(losses.values()) == pytest.approx(list(reference_losses.values()), rel=1e-4)
    shutil.rmtree(project / "runs")

    killed = _torchrun(project, fault="kill-rank1-after-step3")
    assert killed.returncode != 0 and not (project / "runs").exists()  # nothing written by the survivor
    assert (run.checkpoint_dir / "checkpoint-2" / "trainer_state.json").is_file()

    resumed = _torchrun(project)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {run.checkpoint_dir / 'checkpoint-2'}" in resumed.stdout
    assert _lines(project / "steps-0.txt") == _lines(project / "steps-1.txt") == ["2", "3"]
    after_resume = _adapter(run)
    assert after_resume.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():  # resuming is exact, as in one process
        assert torch.equal(after_resume[name], tensor), name
    assert not run.checkpoint_dir.exists()


def test_a_launch_whose_processes_do_not_form_one_job_is_refused(sentiment_project, monkeypatch):
    """WORLD_SIZE says 2 but the Trainer sees one process (no process group: here, no torchrun): each process
    would train alone on all the data and write the same outputs. One line instead, and nothing written."""
    from train import train
    from unipeft_bench.errors import DataError
    from unipeft_bench.runs import Run

    monkeypatch.setattr("train.processes", lambda: 2)
    run = Run("sentiment", "prefix", "prefix", {"attn_bn": 2}, seed=3, model="minilm")
    with pytest.raises(DataError, match=r"^launched as 2 processes but the Trainer sees 1") as err:
        train(run, SETTINGS)
    assert "\n" not in str(err.value)
    assert not (sentiment_project / "runs").exists() and not run.checkpoint_dir.exists()
    assert not run.live_dir.exists()
