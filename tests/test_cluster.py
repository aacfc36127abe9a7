"""A grid over several machines, on one: two workers each run a shard and push it with its run-cache to a shared
DVC remote (a local directory), and a coordinator's `dvc repro` restores every run from there and trains none,
with tables and findings byte for byte those of one workspace that ran everything (README, "Several machines").
And per-run settings: one method's rate or one run's budget changed stales that run's stages alone."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_pipeline import ROOT, dvc, git, tiny_params, tiny_project


def cluster_params() -> dict:
    """The tiny profile on two tasks, two runs and one seed: four train stages and the experiment's."""
    params = tiny_params()
    params["grid"].update(generation=["summarization"], classification=["sentiment"], seeds=[7])
    return params


def shards(repo: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "unipeft_bench.shards", *args], cwd=repo, capture_output=True,
                          text=True, check=True)
    return done.stdout


def shard(repo: Path, index: int) -> list[str]:
    return shards(repo, "--workers", "2", "--index", str(index)).split()


def clone(origin: Path, path: Path) -> Path:
    """A machine's clone, set up: its raw data (setup.sh --data) and this environment as its .venv."""
    subprocess.run(["git", "clone", "-q", str(origin), str(path)], check=True)
    shutil.copytree(origin / "assets", path / "assets")
    (path / ".venv").symlink_to(Path(sys.executable).parents[1])
    return path


def script(repo: Path, name: str, *args: str) -> str:
    """scripts/cluster/<name> as a user runs it."""
    done = subprocess.run(["bash", f"scripts/cluster/{name}", *args], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def results(repo: Path) -> dict[str, bytes]:
    files = [*sorted((repo / "results/tables").iterdir()), repo / "results/findings.md", repo / "results/findings.json"]
    return {str(path.relative_to(repo)): path.read_bytes() for path in files}


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Path:
    """The project with a shared remote, committed, and then run in one workspace: the reference."""
    repo = tiny_project(tmp_path_factory.mktemp("cluster") / "origin", cluster_params())
    shutil.copytree(ROOT / "scripts/cluster", repo / "scripts/cluster")
    (repo / ".gitignore").write_text((repo / ".gitignore").read_text() + "/.venv\n")
    dvc(repo, "remote", "add", "-d", "shared", str(repo.parent / "remote"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a shared remote")
    dvc(repo, "repro")  # after the commit: the clones start from no results
    return repo


@pytest.mark.slow
def test_two_workers_and_a_coordinator_share_a_grid_through_a_dvc_remote(origin):
    tmp_path = origin.parent
    worker0, worker1, coordinator = (clone(origin, tmp_path / name) for name in ("worker0", "worker1", "coord"))
    stages0, stages1 = shard(worker0, 0), shard(worker0, 1)
    assert set(stages0).isdisjoint(stages1) and len(stages0 + stages1) == 10

    # Worker 1 first runs its shard on other params (another warmup), and pushes: run-cache entries of runs the
    # coordinator must not restore.
    good = (worker1 / "params.yaml").read_text()
    other = yaml.safe_load(good)
    for settings in other["train"]["offline"].values():
        settings["warmup"] = 0.5
    (worker1 / "params.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    dvc(worker1, "repro", *stages1)
    shards(worker1, "--push")
    trained = next(stage for stage in stages1 if stage.startswith("train_") and "@" in stage)
    task, run = trained.split("@")[1].split("-", 1)
    adapter = Path("runs", task, run, "seed7", "adapter_model.safetensors")
    wrong = digest(worker1 / adapter)

    # Back on the grid's params, worker 1 stops after its shard's first stage, then reruns the whole shard: the
    # finished stage is not run again.
    (worker1 / "params.yaml").write_text(good)
    dvc(worker1, "repro", stages1[0])
    out = dvc(worker1, "repro", *stages1)
    assert f"Running stage '{stages1[0]}'" not in out and f"Running stage '{stages1[1]}'" in out
    shards(worker1, "--push")
    out = script(worker0, "worker.sh", "2", "0")  # its shard, each stage pushed when done
    assert "Running stage 'aggregate'" not in out and not any(f"Running stage '{s}'" in out for s in stages1)

    out = script(coordinator, "coordinator.sh")  # dvc repro --pull: the run-cache and the runs' outputs
    assert "Running stage 'train_" not in out and "Running stage 'exp_train'" not in out  # it trains nothing
    for stage in stages0 + stages1:
        assert f"Stage '{stage}' is cached - skipping run" in out, stage
    assert "Running stage 'aggregate'" in out and "Running stage 'findings'" in out
    assert digest(coordinator / adapter) == digest(worker1 / adapter) != wrong
    assert results(coordinator) == results(origin)  # byte for byte those of one workspace that ran everything
    shown = dvc(coordinator, "metrics", "show")  # every shard's scores, where people look for them
    assert all(f"metrics/{task}/{run}/seed7.json" in shown for task in ("summarization", "sentiment")
               for run in ("full", "mam"))


@pytest.mark.slow
def test_one_methods_rate_and_one_runs_budget_stale_those_runs_alone(origin):
    repo = origin  # last in this module: it changes the reference's params
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["offline"]["sentiment"].setdefault("learning_rate_by_method", {})["full"] = 0.5
    params["grid"]["runs"]["mam"]["offline"]["classification"] = {"attn_bn": 3, "ffn_bn": 5}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    tables = {"aggregate", "findings", "report"}  # they read the whole grid
    assert set(json.loads(dvc(repo, "status", "--json"))) == {"validate", *tables}  # it writes the settings files
    dvc(repo, "repro", "validate")
    assert set(json.loads(dvc(repo, "status", "--json"))) == {"train_classification@sentiment-full",
                                                               "train_classification@sentiment-mam", *tables}
    out = dvc(repo, "repro")
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"train_classification@sentiment-full", "train_classification@sentiment-mam",
                   "evaluate_classification@sentiment-full", "evaluate_classification@sentiment-mam",
                   *tables}
