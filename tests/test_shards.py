"""A grid over several machines: shards that partition its train stages by estimated cost, and per-run settings
files, so that one run's change stales that run alone (the DVC side of both: tests/test_cluster.py)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from test_grids import composed
from unipeft_bench import shards
from unipeft_bench.errors import DataError
from unipeft_bench.run_settings import run_settings
from unipeft_bench.runs import EXPERIMENT

ROOT = Path(__file__).resolve().parents[1]


def stage_names(params: dict) -> set[str]:
    """dvc.yaml's train and evaluate stages for the grid (its matrix names) and the experiment's."""
    grid = params["grid"]
    kinds = [(kind, task) for kind in ("generation", "classification") for task in grid[kind]]
    return {f"{step}_{kind}@{task}-{run}" for kind, task in kinds for run in grid["runs"]
            for step in ("train", "evaluate")} | {"exp_train", "exp_evaluate"}


def records(params: dict) -> dict[str, dict]:
    grid = params["grid"]
    names = [[EXPERIMENT], *([task, run] for kind in ("generation", "classification") for task in grid[kind]
                             for run in grid["runs"])]
    return {"/".join(name): run_settings(params, name) for name in names}


@pytest.mark.parametrize("grid", ["default", "evidence", "evidence_generation", "table4"])
@pytest.mark.parametrize("profile", ["offline", "real"])
def test_the_shards_partition_the_grids_train_and_evaluate_stages(grid, profile):
    params = composed(f"grid={grid}", f"profile={profile}")
    found = shards.units(params)
    for workers in (1, 3, len(found)):
        dealt = [stage for shard in shards.deal(found, workers) for unit in shard for stage in unit.stages]
        assert len(dealt) == len(set(dealt)) and set(dealt) == stage_names(params), workers


@pytest.mark.parametrize("workers", [2, 3, 5])
def test_no_shard_exceeds_another_by_more_than_one_run(workers):
    """The greedy deal's bound: the last run put on the heaviest shard went to the lightest, so the spread of the
    loads is at most the costliest run."""
    found = shards.units(composed("grid=evidence"))
    loads = [sum(unit.cost for unit in shard) for shard in shards.deal(found, workers)]
    assert max(loads) - min(loads) <= max(unit.cost for unit in found)
    assert shards.deal(found, workers) == shards.deal(list(reversed(found)), workers)  # order-independent


def test_the_cost_counts_seeds_and_steps_and_the_weights_trained():
    unit = next(u for u in shards.units(composed()) if u.method == "mam" and u.run != EXPERIMENT)
    assert replace(unit, seeds=3).cost == 3 * unit.cost
    assert replace(unit, steps=2 * unit.steps).cost == 2 * unit.cost
    assert replace(unit, method="full").cost == 1.5 * unit.cost  # 6·N·D against 4·N·D
    full = next(u for u in shards.units(composed()) if u.method == "full" and u.task == unit.task)
    assert full.cost == 1.5 * unit.cost  # same task settings: the weights trained are the difference


def test_epochs_count_over_the_limited_data_or_the_papers_dataset():
    real = {u.task: u for u in shards.units(composed("profile=real")) if u.run == "full"}
    assert real["sentiment"].steps == 10 * 67_349 // 32  # 10 epochs of SST-2 in batches of 32
    translation = next(u for u in shards.units(composed("profile=real", "grid=evidence_generation"))
                       if u.task == "translation")
    assert translation.tokens_per_step == 4096 * 4  # max_tokens_per_batch × gradient_accumulation


@pytest.mark.parametrize("workers, message", [
    (0, "--workers: expected a positive integer, got 0"),
    (99, "--workers 99: the grid has 13 train stages; use at most 13"),
])
def test_a_plan_that_cannot_be_dealt_is_refused(workers, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        shards.deal(shards.units(composed()), workers)


@pytest.mark.parametrize("argv, expected, code", [
    (["--workers", "2", "--index", "0"], "train_", 0),
    (["--workers", "2", "--estimate"], "| shard | task | run |", 0),
    (["--workers", "2", "--index", "2"], "error: --index 2: expected 0 to 1\n", 1),
    (["--workers", "2", "--grid", "no_such_grid", "--estimate"], "error: grid 'no_such_grid': no conf/grid/", 1),
])
def test_the_command_line(argv, expected, code):
    done = subprocess.run([sys.executable, "-m", "unipeft_bench.shards", *argv], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == code and expected in (done.stdout if code == 0 else done.stderr), done.stderr
    if code:
        assert done.stderr.count("\n") == 1  # one line


def test_one_methods_rate_and_one_runs_budget_change_those_runs_settings_alone():
    params = composed()
    before = records(params)
    changed = copy.deepcopy(params)
    changed["train"]["offline"]["sentiment"]["learning_rate_by_method"]["full"] = 0.5
    changed["grid"]["runs"]["lora"]["offline"]["classification"] = {"attn_bn": 3}
    after = records(changed)
    assert {name for name in before if before[name] != after[name]} == {"sentiment/full", "sentiment/lora"}


def test_the_experiment_settings_follow_its_keys_and_its_tasks_train_settings():
    params = composed()
    before = records(params)
    changed = copy.deepcopy(params)
    changed["seed"] = 5
    after = records(changed)
    assert {name for name in before if before[name] != after[name]} == {EXPERIMENT}
    assert after[EXPERIMENT]["runs"][0]["seed"] == 5


def test_a_train_stage_run_by_hand_refuses_params_newer_than_its_settings_file(tmp_path, monkeypatch):
    from unipeft_bench.run_settings import check_settings_file, settings_file

    monkeypatch.chdir(tmp_path)
    params = composed()
    check_settings_file(params, ["sentiment", "lora"])  # no file yet (never validated): nothing to compare
    path = settings_file(["sentiment", "lora"])
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(run_settings(params, ["sentiment", "lora"])))
    check_settings_file(params, ["sentiment", "lora", "42"])  # one seed of it: the run's file
    params["train"]["offline"]["sentiment"]["steps"] = 7
    with pytest.raises(DataError, match=r"^validated/runs/sentiment/lora.json: written for other params than "
                                        r"params.yaml's; run `python stages/validate.py` \(or `dvc repro`\) first$"):
        check_settings_file(params, ["sentiment", "lora"])


def test_pushing_without_a_remote_is_one_line(tmp_path):
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    done = subprocess.run([sys.executable, "-m", "unipeft_bench.shards", "--push"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 1 and done.stderr.startswith("error: config file error: no remote specified in ")
    assert done.stderr.count("\n") == 1
