"""End to end: the project's own dvc.yaml on a tiny profile, in a temporary git repository.

`dvc repro` (prepare → llm_backbone → tokenize → train → evaluate → aggregate → findings, and the single
experiment), then `dvc exp run -S method=lora`, then `dvc metrics diff`, then one of the paper's grids (`dvc exp run
-S grid=table5`, two of its runs), as a user would run them. The raw assets are small files in the offline assets'
formats; the classification model is the packaged MiniLM; the generation tasks are tokenized with SmolLM2's
tokenizer (the llm_backbone stage converts the packaged model, as in the default run) and train a random Llama of
SmolLM2's vocabulary and a width of 16, committed with the project, so that a step takes milliseconds.

With Hydra enabled (.dvc/config), `dvc exp run` recomposes params.yaml from conf/, so the tiny settings are written
where the composition reads them (conf/config.yaml, conf/grid/default.yaml) as well as to params.yaml.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import data_fixtures as fx
from test_grids import composed

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


TINY_LLAMA = "models/tiny-llama"


# `dvc exp run -S` values the validate stage refuses before DVC removes any output (issue 22: each of these once
# cost the workspace an output); the full table of bad values is tests/test_validate.py's
BAD_SETTINGS = [
    ("method=lorra", "method: unknown preset 'lorra'"),
    ("budget.attn_bn=-3", "budget.attn_bn: expected a positive integer"),
    ("model=models/no_such_model", "model: no model directory 'models/no_such_model'"),
    ("train.offline.sentiment.select=f1", "train.offline.sentiment.select: unknown 'f1'"),
    ("grid.seeds=[7,7]", "grid.seeds: [7, 7] repeats a seed"),
    ("data.sentiment.validation_fraction=1.5", "data.sentiment.validation_fraction: expected a fraction in (0, 1)"),
]


def tiny_params() -> dict:
    params = composed()  # conf/ with its defaults, which params.yaml equals (tests/test_grids.py)
    params["models"]["offline"].update(summarization=TINY_LLAMA, translation=TINY_LLAMA)
    for task, options in params["tokenize"]["offline"].items():
        if isinstance(options, dict):
            options.update(limit={"train": 24, "validation": 8, "test": 6})
    for settings in params["train"]["offline"].values():
        settings.update(steps=2, batch_size=4, eval_batch_size=4, eval_every=1, eval_examples=4, log_every=1)
    params["grid"].update(generation=["summarization", "translation"], classification=["nli", "sentiment"],  # all four
                          seeds=[7, 8], runs={name: params["grid"]["runs"][name] for name in ("full", "mam")})
    for task in ("summarization", "translation"):
        params["evaluate"]["offline"][task]["generation"].update(max_length=8)
    return params


def save_tiny_llama(path: Path) -> None:
    """A random Llama with SmolLM2-135M's vocabulary, special tokens and head layout, 16 wide."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(config).save_pretrained(path)


def write_tiny_conf(repo: Path, params: dict) -> None:
    """conf/ with the tiny settings, composing to `params`; the paper's grids as they are."""
    shutil.copytree(ROOT / "conf", repo / "conf")
    config = {"defaults": ["_self_", {"grid": "default"}],
              **{key: {} if key == "grid" else value for key, value in params.items()}}  # the grid in its place
    (repo / "conf/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (repo / "conf/grid/default.yaml").write_text(yaml.safe_dump(params["grid"], sort_keys=False))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def dvc_fails(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode != 0, f"dvc {' '.join(args)} succeeded:\n{done.stdout[-3000:]}"
    return done.stdout + done.stderr


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def tiny_project(repo: Path, params: dict | None = None) -> Path:
    """A committed git + DVC copy of the project at `repo`, on the tiny offline profile (or `params`)."""
    for name in ("stages", "src"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    write_tiny_conf(repo, params or tiny_params())
    fx.offline_assets(repo / "assets")
    save_tiny_llama(repo / TINY_LLAMA)
    (repo / ".gitignore").write_text("/assets/\n/checkpoints/\n")
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")  # [hydra] enabled
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "project")  # as a clone of it: DVCLive needs a commit to compare against
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return tiny_project(tmp_path_factory.mktemp("pipeline"))


@pytest.mark.slow
def test_repro_then_one_experiment_then_metrics_diff(repo):
    out = dvc(repo, "repro")
    for stage in ("validate", "llm_backbone", "train_generation@summarization-mam",
                  "evaluate_classification@sentiment-full", "aggregate", "findings", "exp_evaluate"):
        assert f"Running stage '{stage}'" in out
    # one stage, one process, both seeds
    assert {p.name for p in (repo / "metrics/summarization/mam").iterdir()} == {"seed7.json", "seed8.json"}
    adapter_file = repo / "runs/summarization/mam/seed8/adapter_model.safetensors"
    assert adapter_file.stat().st_nlink == 2  # hardlinked to its copy in .dvc/cache, not stored twice

    run = json.loads((repo / "metrics/summarization/mam/seed7.json").read_text())
    assert run["method"] == "mam" and run["seed"] == 7 and run["training"]["steps"] == 2
    assert set(run["scores"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert 0 < run["params"]["paper"] < run["params"]["base_params"]  # a budget, not the whole model
    assert (repo / "runs/summarization/mam/seed7/adapter_model.safetensors").is_file()
    translation = json.loads((repo / "metrics/translation/mam/seed7.json").read_text())
    assert translation["scores"]["bleu_signature"].startswith("nrefs:1") and translation["scores"]["bleu_paper"] is None
    assert 0 <= json.loads((repo / "metrics/nli/full/seed7.json").read_text())["scores"]["accuracy"] <= 100
    full = json.loads((repo / "metrics/sentiment/full/seed7.json").read_text())
    assert 0 <= full["scores"]["accuracy"] <= 100 and full["params"]["trainable"] > full["params"]["base_params"]
    table = (repo / "results/tables/generation.md").read_text()
    assert "MAM (l=30, r=64, s=4)" in table and "Full fine-tuning" in table and "translation BLEU" in table
    assert "| Trivial baseline (first sentence / source copied) | 0% |" in table  # the first row
    assert "| Trivial baseline (majority class) | 0% |" in (repo / "results/tables/classification.md").read_text()
    assert (repo / "results/plots/sentiment.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((repo / "experiment/metrics.json").read_text())["method"] == "mam"
    # the default grid has none of the claims' runs (conf/grid/evidence*.yaml have them)
    counts = json.loads((repo / "results/findings.json").read_text())["counts"]
    assert counts["not_run_in_this_grid"] == 10
    assert "not run in this grid" in (repo / "results/findings.md").read_text()

    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "baseline")
    out = dvc(repo, "exp", "run", "-S", "method=lora")
    assert "Running stage 'exp_train'" in out and "Running stage 'exp_evaluate'" in out
    assert "Running stage 'llm_backbone'" not in out and "Running stage 'train_generation" not in out
    experiment = json.loads((repo / "experiment/metrics.json").read_text())
    assert experiment["method"] == "lora" and experiment["sizes"]["attn"] == 8  # params.yaml budget.attn_bn

    diff = json.loads(dvc(repo, "metrics", "diff", "--json"))
    changed = diff["experiment/metrics.json"]
    assert "params.paper" in changed and changed["params.paper"]["old"] != changed["params.paper"]["new"]
    assert yaml.safe_load((repo / "params.yaml").read_text())["grid"]["seeds"] == [7, 8]  # recomposed: still tiny

    # A bad value stops at the validate stage, in one line naming the key, before DVC removes any output
    # (issue 12)
    kept = {path: sorted(p.name for p in (repo / path).iterdir())
            for path in ("experiment/adapter", "experiment/train/plots/metrics", "results/tables", "results/plots")}
    for setting, message in BAD_SETTINGS:
        failed = dvc_fails(repo, "exp", "run", "-S", setting)
        assert f"error: params.yaml {message}" in failed and "dvc checkout" in failed, (setting, failed[-2000:])
        assert "Running stage 'exp_train'" not in failed and "Running stage 'aggregate'" not in failed, setting
        assert {path: sorted(p.name for p in (repo / path).iterdir()) for path in kept} == kept, setting

    # One of the paper's grids, two of its runs (Hydra's ~ deletes the others), its tables beside the default's
    dropped = [f"~grid.runs.{run}" for run in ("lora_ffn-102", "pa-512", "scaled_pa-512")]
    out = dvc(repo, "exp", "run", "-S", "grid=table5", *(arg for run in dropped for arg in ("-S", run)))
    for stage in ("train_generation@summarization-lora_ffn-102-s1",
                  "evaluate_generation@summarization-scaled_pa_learned-512", "aggregate"):
        assert f"Running stage '{stage}'" in out
    assert "Running stage 'train_generation@summarization-mam" not in out  # the default grid is not rerun
    table = (repo / "results/table5/tables/generation.md").read_text()
    assert table.startswith("# Table 5: composition function")
    assert "LoRA ffn (r=30, s=1)" in table and "Scaled PA, learned s (r=256, s=learned)" in table  # SmolLM2 sizes
    assert (repo / "results/table5/plots/summarization.png").read_bytes()[:4] == b"\x89PNG"
    assert "MAM (l=30, r=64, s=4)" in (repo / "results/tables/generation.md").read_text()  # the default's, kept


@pytest.mark.slow
def test_a_grid_in_parts_trains_each_part_once_and_the_findings_read_them_all(repo):
    """A grid whose runs are split in named parts (as conf/grid/evidence_generation.yaml): each part's stages run
    on their own, a part already run is not retrained, and aggregate and findings then read every part."""
    evidence = yaml.safe_load((ROOT / "conf/grid/evidence_generation.yaml").read_text())["grid"]["runs"]
    grid = {"name": "in_parts", "results": "results/in_parts", "generation": ["summarization"], "classification": [],
            "seeds": [7], "parts": {"1": ["full", "pa-200"], "2": ["sa_ffn-200"]},
            "runs": {run: evidence[run] for run in ("full", "pa-200", "sa_ffn-200")}}
    (repo / "conf/grid/in_parts.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a grid in two parts")

    def part(name: str) -> list[str]:
        done = subprocess.run([sys.executable, "-m", "unipeft_bench.parts", "in_parts", name], cwd=repo,
                              capture_output=True, text=True, check=True)
        return done.stdout.split()

    assert part("2") == ["train_generation@summarization-sa_ffn-200", "evaluate_generation@summarization-sa_ffn-200"]
    out = dvc(repo, "exp", "run", "-S", "grid=in_parts", *part("1"))
    assert "Running stage 'train_generation@summarization-pa-200'" in out
    assert "sa_ffn-200'" not in out and "Running stage 'aggregate'" not in out
    out = dvc(repo, "exp", "run", "-S", "grid=in_parts", *part("2"))
    assert "Running stage 'train_generation@summarization-sa_ffn-200'" in out
    assert "Running stage 'train_generation@summarization-pa-200'" not in out  # part 1 is not retrained
    out = dvc(repo, "exp", "run", "-S", "grid=in_parts", "aggregate", "findings")
    assert "Running stage 'findings'" in out and "Running stage 'train_" not in out
    found = json.loads((repo / "results/in_parts/findings.json").read_text())
    assert list(found["claims"]["parallel_beats_sequential"]["comparisons"]) == [
        "summarization pa-200 vs sa_ffn-200"]  # one run from each part
    assert set(found["stand_ins"]) == {"summarization"}
    rows = (repo / "results/in_parts/tables/generation.md").read_text()
    assert "PA ffn (r=100)" in rows and "SA ffn (r=100)" in rows
