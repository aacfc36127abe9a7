"""The aggregate stage on made-up metrics files: tables, the paper's columns, plots, and errors."""

from __future__ import annotations

import json
import statistics

import pandas as pd
import pytest
import yaml

import aggregate
import unipeft
from unipeft_bench import aggregation

SIZES = {  # the evaluate stage's effective sizes per run
    "mam": {"attn": 30, "ffn": 512, "scale": 4.0},
    "full": {"attn": None, "ffn": None, "scale": None},
    "lora": {"attn": 8, "ffn": None, "scale": 2.0},
    "lora16": {"attn": 16, "ffn": None, "scale": 2.0},
    "prefix": {"attn": 200, "ffn": None, "scale": None},
}
METHOD = {"mam": "mam", "full": "full", "lora": "lora", "lora16": "lora", "prefix": "prefix"}
PERCENT = {"mam": 6.6838, "full": 100.0, "lora": 0.288, "lora16": 0.576, "prefix": 3.6}
KEYS = {"summarization": ("rouge1", "rouge2", "rougeL", "rougeLsum"), "translation": ("bleu",),
        "nli": ("accuracy",), "sentiment": ("accuracy",)}


def made_up(task: str, run: str, seed: int, key: str) -> float:
    """Distinct, irregular numbers, so a wrong run, seed or statistic shows."""
    return round(20 + 3 * list(SIZES).index(run) + (seed * 7 % 5) * 0.37 + len(key) * 0.11 + len(task) * 0.5, 2)


def scores(task: str, run: str, seed: int, profile: str) -> dict:
    out = {key: made_up(task, run, seed, key) for key in KEYS[task]}
    if task == "translation":
        out.update(bleu_signature="nrefs:1|...", bleu_paper=None, bleu_paper_signature=None)
        if profile == "real":
            out.update(bleu_paper=made_up(task, run, seed, "bleu_paper"), bleu_paper_signature="tok:none|...")
    return out


def write_workspace(root, runs, seeds, generation=(), classification=(), profile="offline"):
    grid = {"seeds": list(seeds), "runs": {run: {"method": METHOD[run]} for run in runs},
            "generation": list(generation), "classification": list(classification)}
    (root / "params.yaml").write_text(yaml.safe_dump({"profile": profile, "grid": grid}, sort_keys=False))
    for task in (*generation, *classification):
        (root / "metrics" / task).mkdir(parents=True, exist_ok=True)
        for run in runs:
            for seed in seeds:
                record = {"task": task, "profile": profile, "run": run, "method": METHOD[run], "seed": seed,
                          "sizes": SIZES[run], "scores": scores(task, run, seed, profile),
                          "params": {"method": METHOD[run], "paper_percent": PERCENT[run]}}
                (root / "metrics" / task / f"{run}-seed{seed}.json").write_text(json.dumps(record))


def markdown_rows(path) -> list[dict]:
    """The pipe table of a Markdown file as dicts keyed by its header."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    return [dict(zip(cells[0], row)) for row in cells[2:]]


def run_stage(tmp_path, monkeypatch) -> int:
    monkeypatch.chdir(tmp_path)
    return aggregate.main()


def test_generation_table_shows_mean_and_std_over_seeds_in_grid_order(tmp_path, monkeypatch):
    runs, seeds = ["mam", "full", "lora"], [42, 7]
    write_workspace(tmp_path, runs, seeds, generation=["summarization", "translation"])
    assert run_stage(tmp_path, monkeypatch) == 0

    rows = markdown_rows(tmp_path / "results/tables/generation.md")
    assert [row["Method"] for row in rows] == ["MAM (l=30, r=512, s=4)", "Full fine-tuning", "LoRA (r=8, s=2)"]
    assert [row["#params"] for row in rows] == ["6.7%", "100%", "0.29%"]
    for row, run in zip(rows, runs):
        for column, task, key in (("summarization R-1", "summarization", "rouge1"),
                                  ("summarization R-L", "summarization", "rougeLsum"),
                                  ("translation BLEU", "translation", "bleu")):
            values = [made_up(task, run, seed, key) for seed in seeds]
            assert row[column] == f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
    assert not any("paper" in column for column in rows[0])  # stand-in data: nothing to compare with
    assert "Offline profile" in (tmp_path / "results/tables/generation.md").read_text()

    table = pd.read_csv(tmp_path / "results/tables/generation.csv")
    assert list(table["run"]) == runs
    rouge_l = [made_up("summarization", "lora", seed, "rougeL") for seed in seeds]
    assert table.loc[2, "summarization_rougeL_mean"] == pytest.approx(statistics.mean(rouge_l), abs=1e-4)
    assert "no tasks of this kind" in (tmp_path / "results/tables/classification.md").read_text()


def test_classification_table_shows_the_median_over_seeds(tmp_path, monkeypatch):
    runs, seeds = ["lora", "full"], [1, 2, 3]
    write_workspace(tmp_path, runs, seeds, classification=["nli", "sentiment"])
    assert run_stage(tmp_path, monkeypatch) == 0

    rows = markdown_rows(tmp_path / "results/tables/classification.md")
    assert [row["Method"] for row in rows] == ["LoRA (r=8, s=2)", "Full fine-tuning"]
    for row, run in zip(rows, runs):
        for task in ("nli", "sentiment"):
            values = [made_up(task, run, seed, "accuracy") for seed in seeds]
            assert statistics.median(values) != statistics.mean(values)  # the test tells them apart
            assert row[task] == f"{statistics.median(values):.2f} ± {statistics.stdev(values):.2f}"


def test_real_profile_puts_the_papers_numbers_alongside(tmp_path, monkeypatch):
    write_workspace(tmp_path, ["mam", "lora16", "lora"], [1, 2], generation=["summarization", "translation"],
                    classification=["nli"], profile="real")
    assert run_stage(tmp_path, monkeypatch) == 0

    generation = markdown_rows(tmp_path / "results/tables/generation.md")
    assert generation[0]["XSum (paper)"] == "45.06/21.90/36.87 ±.08/.01/.04"  # Table 6, MAM (l=30, r=512)
    assert generation[0]["en-ro (paper)"] == "37.5±.1"
    assert generation[0]["#params (paper)"] == "6.7%" and generation[0]["Paper source"] == "Table 6"
    assert generation[2]["XSum (paper)"] == ""  # LoRA r=8: the paper has no such run
    bleu = [made_up("translation", "mam", seed, "bleu_paper") for seed in (1, 2)]
    assert generation[0]["en-ro BLEU"].startswith(f"{statistics.mean(bleu):.2f} ± ")  # bleu_paper, not sacreBLEU

    classification = markdown_rows(tmp_path / "results/tables/classification.md")
    assert classification[1]["MNLI (paper)"] == "87.2±.4"  # Table 2, LoRA r=16
    table = pd.read_csv(tmp_path / "results/tables/generation.csv")
    assert list(table.loc[0, ["summarization_rouge1_paper", "summarization_rouge2_paper",
                              "summarization_rougeLsum_paper"]]) == [45.06, 21.90, 36.87]


def test_a_missing_metrics_file_names_it_and_writes_nothing(tmp_path, monkeypatch, capsys):
    write_workspace(tmp_path, ["mam", "full"], [1, 2], generation=["summarization"], classification=["nli"])
    missing = tmp_path / "metrics/nli/full-seed2.json"
    missing.unlink()
    assert run_stage(tmp_path, monkeypatch) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: metrics/nli/full-seed2.json: not found") and error.count("\n") == 1
    assert not (tmp_path / "results/tables").exists() and not (tmp_path / "results/plots").exists()


def test_a_metrics_file_of_the_other_profile_is_refused(tmp_path, monkeypatch, capsys):
    write_workspace(tmp_path, ["mam"], [1], generation=["summarization"])
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "profile": "real"}))
    assert run_stage(tmp_path, monkeypatch) == 1
    assert "profile is 'offline', expected 'real'" in capsys.readouterr().err


def test_plots_have_one_point_per_run_and_a_png(tmp_path, monkeypatch):
    runs, seeds = ["full", "lora", "lora16", "prefix"], [1, 2]
    write_workspace(tmp_path, runs, seeds, generation=["summarization"], classification=["sentiment"])
    assert run_stage(tmp_path, monkeypatch) == 0

    data = pd.read_csv(tmp_path / "results/plots/summarization.csv")
    assert list(data.columns) == ["method", "run", "params_percent", "score"]
    assert list(data["run"]) == runs and list(data["method"]) == ["full", "lora", "lora", "prefix"]
    assert list(data["params_percent"]) == [PERCENT[run] for run in runs]
    expected = [statistics.mean(made_up("summarization", run, seed, "rouge2") for seed in seeds) for run in runs]
    assert list(data["score"]) == pytest.approx(expected, abs=1e-4)  # R-2, as Figure 4
    sentiment = pd.read_csv(tmp_path / "results/plots/sentiment.csv")
    assert list(sentiment["score"]) == pytest.approx(
        [statistics.median(made_up("sentiment", run, seed, "accuracy") for seed in seeds) for run in runs])
    for task in ("summarization", "sentiment"):
        assert (tmp_path / f"results/plots/{task}.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_labels_and_percentages_read_like_the_paper():
    assert aggregation.method_label("prefix_lora_ffn", {"attn": 30, "ffn": 102, "scale": 4.0}) == \
        "Prefix + LoRA ffn (l=30, r=102, s=4)"
    assert aggregation.method_label("pa_attn_ffn", {"attn": 30, "ffn": 512}) == \
        "PA attn + PA ffn (attn r=30, ffn r=512)"
    assert aggregation.method_label("prompt", {"attn": 300}) == "Prompt tuning (l=300)"
    assert aggregation.method_label("mh_pa", {"attn": 200}) == "MH PA (r=200)"
    assert [aggregation.percent(p) for p in (100.0, 12.288, 6.6838, 0.4732, 0.08, 0.075)] == \
        ["100%", "12.3%", "6.7%", "0.47%", "0.08%", "0.075%"]


def test_every_paper_entry_names_a_preset_and_known_scores():
    presets = set(unipeft.preset_names())
    for entry in aggregation.paper_results():
        methods = entry["method"] if isinstance(entry["method"], list) else [entry["method"]]
        assert set(methods) <= presets, entry["row"]
        assert set(entry.get("sizes") or {}) <= {"attn", "ffn", "scale"}, entry["row"]
        assert entry["source"].split()[0] in ("Table", "Figure") and entry["params_percent"] > 0, entry["row"]
        for task, numbers in {**entry["scores"], **(entry.get("std") or {})}.items():
            assert set(numbers) <= {key for key, _ in aggregation.TASK_VIEWS[task].columns}, entry["row"]


def test_the_first_matching_paper_entry_wins():
    entry = aggregation.paper_entry("summarization", "lora_ffn", {"attn": None, "ffn": 102, "scale": 4.0})
    assert entry["source"] == "Table 6" and entry["scores"]["summarization"]["rouge2"] == 21.29
    plain = aggregation.paper_entry("summarization", "lora_ffn", {"attn": None, "ffn": 102, "scale": None})
    assert plain["row"] == "LoRA, s=1"  # no scale is s = 1
    assert aggregation.paper_entry("translation", "lora_ffn", {"ffn": 102, "scale": 1.0}) is None
