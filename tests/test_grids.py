"""The named grids of conf/grid/: each of the paper's tables and figures is one `dvc exp run -S grid=<name>`.

DVC composes params.yaml from conf/ with Hydra on `dvc exp run` (.dvc/config), while `dvc repro` reads params.yaml
as committed: so params.yaml must stay the composition of conf/ with its defaults, and every grid must resolve,
in both profiles, to runs that the train stage accepts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import unipeft
from unipeft_bench import grid_results, runs, tables
from unipeft_bench.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
GRIDS = sorted(path.stem for path in (CONF / "grid").glob("*.yaml"))
PAPER_GRIDS = ("table2", "table3", "table4", "table5", "table6", "table12", "figure4", "figure5")
PROFILES = ("offline", "real")
KINDS = {"generation": "seq2seq", "classification": "classification"}

# (grid, run, task) the paper has no number for, on purpose: Table 6's prompt rows differ per task (l=300 on XSum,
# l=200 on en-ro), the Houlsby adapter is not in Table 6, and −gating at l=200 completes Table 4's method × budget.
NOT_IN_THE_PAPER = {("table6", "prompt-300", "translation"), ("table6", "prompt-200", "summarization"),
                    ("table6", "adapter-200", "summarization"), ("table6", "adapter-200", "translation"),
                    ("table4", "prefix_nogate-200", "translation")}


def composed(*overrides: str) -> dict:
    """What `dvc exp run -S <override> ...` writes to params.yaml (dvc.utils.hydra.compose_and_dump)."""
    with initialize_config_dir(str(CONF), version_base=None):
        config = compose("config", overrides=list(overrides))
    return OmegaConf.to_container(config, resolve=True)


def grid_points(params: dict):
    """Every (task, run name, seed) the grid's matrix stages expand to."""
    grid = params["grid"]
    for kind in KINDS:
        for task in grid[kind]:
            for name in grid["runs"]:
                for seed in grid["seeds"]:
                    yield task, name, seed


def resolved(params: dict):
    """Each grid point as the train and evaluate stages resolve it (runs.resolve): its task, run, method, budget."""
    for task, name, seed in grid_points(params):
        yield from runs.resolve(params, [task, name, str(seed)])


def effective_sizes(method: str, budget: dict) -> dict:
    """The sizes the evaluate stage records for a run (stages/evaluate.py), from the preset and its budget."""
    modifications = unipeft.preset(method).with_budget(**budget).modifications
    sizes = {side: next((m.size for m in modifications if m.budget_side == side), None) for side in ("attn", "ffn")}
    sizes["scale"] = next((m.scale for m in modifications if m.composition == "scale"), None)
    return sizes


def test_params_yaml_is_the_composition_of_conf_with_its_defaults():
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    expected = composed()
    changed = sorted(key for key in expected.keys() | committed.keys() if expected.get(key) != committed.get(key))
    assert not changed, f"params.yaml and conf/ differ at {changed}: edit both alike (conf/config.yaml, conf/grid/)"
    assert list(committed) == list(expected), "keep params.yaml's keys in conf/config.yaml's order"
    assert list(committed["grid"]) == list(expected["grid"])


def test_every_table_and_figure_of_the_paper_has_a_grid():
    # evidence, evidence_generation: the runs of findings.yaml's claims (sentiment; summarization)
    assert set(GRIDS) == {"default", "evidence", "evidence_generation", *PAPER_GRIDS}


def test_conf_and_params_yaml_stay_within_80_columns():
    for path in [ROOT / "params.yaml", *sorted(CONF.rglob("*.yaml"))]:
        long = [number for number, line in enumerate(path.read_text().splitlines(), 1) if len(line) > 80]
        assert not long, f"{path.relative_to(ROOT)}: lines {long} are longer than 80 columns"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", GRIDS)
def test_every_run_of_every_grid_resolves(name, profile):
    params = composed(f"grid={name}", f"profile={profile}")
    grid = params["grid"]
    assert grid["name"] == name
    assert grid["results"] == ("results" if name == "default" else f"results/{name}")
    read = grid_results.read_grid(params)  # the aggregate stage's checks: tasks of the right kind, integer seeds
    assert read.generation or read.classification
    for run_name, spec in grid["runs"].items():
        method = spec["method"]
        assert run_name == method or run_name.startswith(f"{method}-"), f"{name}: {run_name} is not <method>-<tag>"
    points = list(grid_points(params))
    for (task, run_name, seed), run in zip(points, resolved(params)):
        assert (run.task, run.name, run.seed, run.profile) == (task, run_name, seed, profile)
        assert run.method in unipeft.preset_names(), f"{name}: {run_name}"
        unipeft.preset(run.method).with_budget(**run.budget)  # a budget key the method does not use is refused
    assert len(points) == len(grid["runs"]) * len(grid["seeds"]) * len(grid["generation"] + grid["classification"])


def test_seeds_per_profile():
    assert composed()["grid"]["seeds"] == [42]  # the default grid, as before
    assert composed("grid=table2", "profile=real")["grid"]["seeds"] == [42, 2, 4, 6, 8]  # Table 2: median of 5
    for name in PAPER_GRIDS:
        real, offline = composed(f"grid={name}", "profile=real")["grid"], composed(f"grid={name}")["grid"]
        if name != "table2":
            assert len(real["seeds"]) == 3, name  # Table 6: mean ± std over 3 seeds
        assert offline["seeds"] == offline["seeds_by_profile"]["offline"]
    assert composed("grid=table4", "grid.seeds=[42,2]")["grid"]["seeds"] == [42, 2]  # -S still overrides


def test_the_default_grid_is_one_run_per_method_family():
    grid = composed()["grid"]
    assert (grid["generation"], grid["classification"], grid["seeds"]) == (["summarization"], ["sentiment"], [42])
    assert list(grid["runs"]) == ["full", "prefix", "adapter", "lora", "pa", "mam"]
    assert grid["runs"]["mam"]["offline"] == {"attn_bn": 30, "ffn_bn": 64,
                                              "classification": {"attn_bn": 5, "ffn_bn": 16}}


def test_every_run_of_a_grid_with_parts_is_in_exactly_one():
    from unipeft_bench.parts import check_parts

    grid = composed("grid=evidence_generation")["grid"]
    parts = check_parts(grid)
    assert list(parts) == ["1", "2", "3", "4"] and sorted(sum(parts.values(), [])) == sorted(grid["runs"])
    for broken, message in (({**parts, "5": ["full"]}, "'full' is in more than one part"),
                            ({"1": parts["1"]}, "in no part; every run needs one"),
                            ({**parts, "5": ["fulll"]}, "'fulll' is not a run of the grid"),
                            (["full"], "expected a mapping of part names")):
        with pytest.raises(DataError, match=message):
            check_parts({**grid, "parts": broken})
    assert check_parts(composed()["grid"]) == {}  # a grid without parts


def test_a_part_lists_its_runs_train_and_evaluate_stages(monkeypatch, capsys):
    from unipeft_bench import parts

    monkeypatch.chdir(ROOT)
    assert parts.main(["evidence_generation", "4"]) == 0
    stages = capsys.readouterr().out.split()
    assert stages[:2] == ["train_generation@summarization-pa_attn-30", "evaluate_generation@summarization-pa_attn-30"]
    assert len(stages) == 6 and stages[-1] == "evaluate_generation@summarization-mam-30-512"
    assert parts.main(["evidence_generation", "9"]) == 1
    assert capsys.readouterr().err == "error: grid 'evidence_generation': no part '9'; its parts: 1, 2, 3, 4\n"
    assert parts.main(["evidence_generation"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "1: full pa-200 sa_ffn-200 pa_attn-200 sa_attn-200 sa_ffn-1024"


def test_a_part_saved_from_one_workspace_restores_into_another(tmp_path):
    """--save copies what aggregate and findings read (predictions, test metrics, curves) and the part's dvc.lock
    entries; --restore brings every saved part back; a part not run yet is refused with nothing saved."""
    import yaml

    from unipeft_bench import parts

    grid = composed("grid=evidence_generation")["grid"]
    clone, saved, fresh = tmp_path / "clone", tmp_path / "saved", tmp_path / "fresh"
    lock = {}
    for run in grid["parts"]["1"]:
        for path, text in ((f"predictions/summarization/{run}/seed42.jsonl", f'{{"id": "{run}"}}\n'),
                           (f"metrics/summarization/{run}/seed42.json", "{}\n"),
                           (f"metrics/train/summarization/{run}/seed42/plots/metrics/eval/rouge2.tsv", "step\n")):
            (clone / path).parent.mkdir(parents=True, exist_ok=True)
            (clone / path).write_text(text)
        lock[f"train_generation@summarization-{run}"] = {"cmd": f"train {run}"}
    lock["aggregate"] = {"cmd": "aggregate"}
    (clone / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": lock}))
    (clone / "params.yaml").write_text("grid: {name: evidence_generation}\n")
    with pytest.raises(DataError, match="part '2': no predictions/summarization/pa-512 here; run the part first"):
        parts.save(grid, "2", saved, clone)
    assert not saved.exists()
    assert len(parts.save(grid, "1", saved, clone)) == 3 * len(grid["parts"]["1"])
    assert set(yaml.safe_load((saved / "dvc-lock.yaml").read_text())) == {
        f"train_generation@summarization-{run}" for run in grid["parts"]["1"]}  # the part's stages only
    assert (saved / "params.yaml").read_text() == (clone / "params.yaml").read_text()
    restored = parts.restore(saved, fresh)
    assert len(restored) == 3 * len(grid["parts"]["1"])
    assert all((fresh / p).read_bytes() == (clone / p).read_bytes() for p in restored)
    with pytest.raises(DataError, match="no saved results"):
        parts.restore(tmp_path / "nothing", fresh)


def test_a_run_name_means_the_same_run_in_every_grid():
    """runs/<task>/<run>/seed<seed> and its metrics are shared by every grid that names the run."""
    seen: dict[str, tuple[str, dict]] = {}
    for name in GRIDS:
        for run_name, spec in composed(f"grid={name}")["grid"]["runs"].items():
            first = seen.setdefault(run_name, (name, spec))
            assert spec == first[1], f"{run_name}: {name} and {first[0]} define it differently"


@pytest.mark.parametrize("name", PAPER_GRIDS)
def test_in_the_real_profile_each_run_is_a_row_of_the_paper(name):
    """The real budgets are the paper's: each run finds its printed numbers, in the grid's own table first."""
    params = composed(f"grid={name}", "profile=real")
    grid = params["grid"]
    for run in resolved(params):
        entry = tables.paper_entry(run.task, run.method, effective_sizes(run.method, run.budget), grid["paper"])
        point = (name, run.name, run.task)
        if point in NOT_IN_THE_PAPER:
            assert entry is None, point
            continue
        assert entry is not None, f"{name}: {run.name} on {run.task} has no row in paper_results.yaml"
        if name.startswith("table") and run.method not in ("full", "bitfit"):
            assert entry["source"] == grid["paper"], (*point, entry["source"])


@pytest.mark.parametrize("name", ["table4", "table2", "evidence"])
def test_dvc_expands_the_matrix_stages_to_the_grids_runs(name, tmp_path):
    """dvc.yaml's matrix stages, as DVC resolves them against the grid's composition (what `dvc exp run -S
    grid=<name>` gives); table2 has no generation task, so its generation matrices are empty;
    evidence composes its task lists per profile."""
    params = composed(f"grid={name}")
    (tmp_path / "dvc.yaml").write_bytes((ROOT / "dvc.yaml").read_bytes())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env)
    listed = subprocess.run([str(dvc), "stage", "list", "--name-only"], cwd=tmp_path, check=True, env=env,
                            capture_output=True, text=True).stdout.split()
    grid = params["grid"]
    for kind in KINDS:
        expected = {f"{stage}_{kind}@{task}-{run}" for stage in ("train", "evaluate")
                    for task in grid[kind] for run in grid["runs"]}
        assert {stage for stage in listed if stage.endswith(f"_{kind}") or f"_{kind}@" in stage} == expected
    assert "aggregate" in listed
