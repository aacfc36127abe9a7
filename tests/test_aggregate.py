"""The aggregate stage on made-up metrics files: tables, the paper's columns, plots, and errors."""

from __future__ import annotations

import json
import statistics

import pandas as pd
import pytest
import yaml

import aggregate
import unipeft
from unipeft_bench import figures, grid_results, tables

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
        for run in runs:
            (root / "metrics" / task / run).mkdir(parents=True, exist_ok=True)
            for seed in seeds:
                record = {"task": task, "profile": profile, "run": run, "method": METHOD[run], "seed": seed,
                          "sizes": SIZES[run], "scores": scores(task, run, seed, profile),
                          "params": {"method": METHOD[run], "paper_percent": PERCENT[run]}}
                grid_results.metrics_path(root, task, run, seed).write_text(json.dumps(record))


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
            half = 4.303 * statistics.stdev(values) / 3 ** 0.5  # Student's t(0.975, 2 df): 3 seeds
            mean = statistics.mean(values)
            assert row[f"{task} 95% CI"] == f"[{mean - half:.2f}, {mean + half:.2f}]"


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
    missing = tmp_path / "metrics/nli/full/seed2.json"
    missing.unlink()
    assert run_stage(tmp_path, monkeypatch) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: metrics/nli/full/seed2.json: not found") and error.count("\n") == 1
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
    assert list(data.columns) == ["method", "run", "label", "params_percent", "score", "score_low", "score_high"]
    assert list(data["run"]) == runs and list(data["method"]) == ["full", "lora", "lora", "prefix"]
    assert list(data["params_percent"]) == [PERCENT[run] for run in runs]
    expected = [statistics.mean(made_up("summarization", run, seed, "rouge2") for seed in seeds) for run in runs]
    assert list(data["score"]) == pytest.approx(expected, abs=1e-4)  # R-2, as Figure 4
    # the error bars: the mean's 95% t-interval over the 2 seeds, t(0.975, 1 df) = 12.706
    half = [12.706 * statistics.stdev(made_up("summarization", run, seed, "rouge2") for seed in seeds) / 2 ** 0.5
            for run in runs]
    assert list(data["score_high"] - data["score"]) == pytest.approx(half, abs=1e-3)
    sentiment = pd.read_csv(tmp_path / "results/plots/sentiment.csv")
    assert list(sentiment["score"]) == pytest.approx(
        [statistics.median(made_up("sentiment", run, seed, "accuracy") for seed in seeds) for run in runs])
    for task in ("summarization", "sentiment"):
        assert (tmp_path / f"results/plots/{task}.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def save_tokenized(root, task: str, splits: dict) -> None:
    """data/tokenized/<task> as the tokenize stage writes it: generation splits with a word-level tokenizer whose
    decoded labels are the targets."""
    from datasets import Dataset, DatasetDict
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = root / "data/tokenized" / task
    if task in ("nli", "sentiment"):
        DatasetDict({name: Dataset.from_dict({"id": [f"{name}{i}" for i in range(len(labels))], "labels": labels})
                     for name, labels in splits.items()}).save_to_disk(str(folder))
        return
    words = sorted({w for rows in splits.values() for row in rows for text in row for w in text.split()})
    backend = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}},
                                         unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")
    DatasetDict({name: Dataset.from_dict({"id": [f"{name}{i}" for i in range(len(rows))],
                                          "source": [source for source, _ in rows],
                                          "labels": [tokenizer(target)["input_ids"] for _, target in rows]})
                 for name, rows in splits.items()}).save_to_disk(str(folder))
    tokenizer.save_pretrained(str(folder / "tokenizer"))


def test_the_trivial_baselines_row_comes_first_and_is_a_dotted_line(tmp_path, monkeypatch):
    runs = ["full", "lora"]
    write_workspace(tmp_path, runs, [1, 2], generation=["summarization", "translation"],
                    classification=["sentiment"])
    documents = [("the cat sat on the mat. it was warm there.", "a cat sat on a mat"),
                 ("dogs bark at night. cats do not.", "dogs bark at night")]
    save_tokenized(tmp_path, "summarization", {"test": documents})
    save_tokenized(tmp_path, "translation", {"test": [("hola amigo", "hola amigo"), ("buenos dias", "good day")]})
    save_tokenized(tmp_path, "sentiment", {"train": [1, 0, 1, 1, 0], "test": [0, 1, 1, 0]})  # majority: 1
    assert run_stage(tmp_path, monkeypatch) == 0

    from unipeft_bench import metrics

    generation = markdown_rows(tmp_path / "results/tables/generation.md")
    assert [row["Method"] for row in generation] == ["Trivial baseline (first sentence / source copied)",
                                                     "Full fine-tuning", "LoRA (r=8, s=2)"]
    rouge = metrics.rouge(["the cat sat on the mat.", "dogs bark at night."], ["a cat sat on a mat",
                                                                               "dogs bark at night"])
    assert [generation[0][f"summarization {key}"] for key in ("R-1", "R-2", "R-L")] == [
        f"{rouge[key]:.2f}" for key in ("rouge1", "rouge2", "rougeLsum")]
    bleu = metrics.bleu(["hola amigo", "buenos dias"], ["hola amigo", "good day"])["bleu"]
    assert generation[0]["translation BLEU"] == f"{bleu:.2f}" and generation[0]["#params"] == "0%"
    classification = markdown_rows(tmp_path / "results/tables/classification.md")
    assert classification[0]["Method"] == "Trivial baseline (majority class)"
    assert classification[0]["sentiment"] == "50.00"  # label 1 on 2 of 4
    assert classification[0]["sentiment 95% CI"] == ""  # one value: no interval
    plotted = pd.read_csv(tmp_path / "results/plots/sentiment.csv")
    assert list(plotted["run"]) == ["baseline", *runs] and plotted["score"][0] == 50.0
    notes = (tmp_path / "results/tables/classification.md").read_text()
    assert "Trivial baseline: sentiment, the majority class" in notes


def test_without_tokenized_data_the_tables_say_there_is_no_baseline(tmp_path, monkeypatch):
    write_workspace(tmp_path, ["full"], [1], classification=["sentiment"])
    assert run_stage(tmp_path, monkeypatch) == 0
    assert [row["Method"] for row in markdown_rows(tmp_path / "results/tables/classification.md")] == \
        ["Full fine-tuning"]
    assert "No trivial baseline" in (tmp_path / "results/tables/classification.md").read_text()


def test_the_majority_label_breaks_ties_by_the_smallest_label():
    from unipeft_bench.baselines import majority_label

    assert majority_label([2, 1, 2, 1, 0]) == 1 and majority_label([3, 3, 0]) == 3


def test_labels_and_percentages_read_like_the_paper():
    assert tables.method_label("prefix_lora_ffn", {"attn": 30, "ffn": 102, "scale": 4.0}) == \
        "Prefix + LoRA ffn (l=30, r=102, s=4)"
    assert tables.method_label("pa_attn_ffn", {"attn": 30, "ffn": 512}) == \
        "PA attn + PA ffn (attn r=30, ffn r=512)"
    assert tables.method_label("prompt", {"attn": 300}) == "Prompt tuning (l=300)"
    assert tables.method_label("mh_pa", {"attn": 200}) == "MH PA (r=200)"
    assert [tables.percent(p) for p in (100.0, 12.288, 6.6838, 0.4732, 0.08, 0.075)] == \
        ["100%", "12.3%", "6.7%", "0.47%", "0.08%", "0.075%"]


def test_every_paper_entry_names_a_preset_and_known_scores():
    presets = set(unipeft.preset_names())
    for entry in tables.paper_results():
        methods = entry["method"] if isinstance(entry["method"], list) else [entry["method"]]
        assert set(methods) <= presets, entry["row"]
        assert set(entry.get("sizes") or {}) <= {"attn", "ffn", "scale"}, entry["row"]
        assert entry["source"].split()[0] in ("Table", "Figure") and entry["params_percent"] > 0, entry["row"]
        for task, numbers in {**entry["scores"], **(entry.get("std") or {})}.items():
            assert set(numbers) <= {key for key, _ in grid_results.TASK_VIEWS[task].columns}, entry["row"]


def test_the_first_matching_paper_entry_wins():
    entry = tables.paper_entry("summarization", "lora_ffn", {"attn": None, "ffn": 102, "scale": 4.0})
    assert entry["source"] == "Table 6" and entry["scores"]["summarization"]["rouge2"] == 21.29
    plain = tables.paper_entry("summarization", "lora_ffn", {"attn": None, "ffn": 102, "scale": None})
    assert plain["row"] == "LoRA, s=1"  # no scale is s = 1
    assert tables.paper_entry("translation", "lora_ffn", {"ffn": 102, "scale": 1.0}) is None


# ---- the named grids of conf/grid/: each table and figure of the paper in its shape --------------------------------
def write_grid_workspace(root, name: str, profile: str = "offline") -> dict:
    """params.yaml as `dvc exp run -S grid=<name> -S profile=<profile>` composes it, and a made-up metrics file
    for each of the grid's runs, with the sizes and method the evaluate stage would record."""
    from test_grids import composed, effective_sizes, resolved

    params = composed(f"grid={name}", f"profile={profile}")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    index = {run: position for position, run in enumerate(params["grid"]["runs"])}
    for run in resolved(params):
        values = {key: round(20 + index[run.name] + (run.seed * 7 % 5) * 0.37 + len(key) * 0.11, 2)
                  for key in KEYS[run.task]}
        if run.task == "translation":
            values.update(bleu_signature="nrefs:1|...", bleu_paper=values["bleu"] + 1 if profile == "real" else None)
        record = {"task": run.task, "profile": profile, "run": run.name, "method": run.method, "seed": run.seed,
                  "sizes": effective_sizes(run.method, run.budget), "scores": values,
                  "params": {"method": run.method, "paper_percent": 0.1 * (index[run.name] + 1)}}
        path = grid_results.metrics_path(root, run.task, run.name, run.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    return params


def test_a_named_grid_writes_its_own_directory_with_the_papers_title(tmp_path, monkeypatch):
    params = write_grid_workspace(tmp_path, "table4")
    assert run_stage(tmp_path, monkeypatch) == 0

    tables = tmp_path / "results/table4/tables"
    text = (tables / "generation.md").read_text()
    assert text.startswith("# Table 4: attention-side methods at l or r = 200 and 30 (en-ro)\n")
    assert "`dvc exp run -S grid=table4`" in text
    rows = markdown_rows(tables / "generation.md")
    assert [row["Method"] for row in rows] == [  # method × budget, in the paper's row order; SmolLM2's sizes
        "PA attn (r=100)", "Prefix (l=100)", "MH PA (r=100)", "Prefix −gating (l=100)", "Prefix (l=15)",
        "Prefix −gating (l=15)", "PA ffn (r=15)", "PA attn (r=15)", "MH PA (r=15)"]
    assert list(rows[0]) == ["Method", "#params", "translation BLEU"]
    assert list(pd.read_csv(tables / "generation.csv")["run"]) == list(params["grid"]["runs"])
    assert (tmp_path / "results/table4/plots/translation.png").read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "results/tables").exists()  # the default grid's tables stay as they are


def test_table4_in_the_real_profile_shows_table_4s_own_rows(tmp_path, monkeypatch):
    write_grid_workspace(tmp_path, "table4", profile="real")
    assert run_stage(tmp_path, monkeypatch) == 0

    rows = {row["Method"]: row for row in markdown_rows(tmp_path / "results/table4/tables/generation.md")}
    expected = {"PA attn (r=200)": "35.6", "Prefix (l=200)": "35.6", "MH PA (r=200)": "35.8",
                "Prefix −gating (l=200)": "", "Prefix (l=30)": "35.2", "Prefix −gating (l=30)": "34.9",
                "PA ffn (r=30)": "33.0", "PA attn (r=30)": "33.7", "MH PA (r=30)": "35.3"}
    assert {label: row["en-ro (paper)"] for label, row in rows.items()} == expected
    assert rows["Prefix (l=200)"]["Paper source"] == "Table 4"  # not Table 6's row of the same run
    assert "Table 4's own rows first" in (tmp_path / "results/table4/tables/generation.md").read_text()


def test_table2_has_mnli_and_sst2_columns_and_the_papers_medians(tmp_path, monkeypatch):
    write_grid_workspace(tmp_path, "table2", profile="real")
    assert run_stage(tmp_path, monkeypatch) == 0

    rows = markdown_rows(tmp_path / "results/table2/tables/classification.md")
    assert [row["Method"] for row in rows] == ["Full fine-tuning", "BitFit", "Prefix (l=32)", "LoRA (r=16, s=2)",
                                               "Houlsby adapter (r=16)", "MAM (l=16, r=16, s=2)"]
    assert [column for column in rows[0] if column.startswith(("MNLI", "SST-2"))] == [
        "MNLI", "MNLI 95% CI", "MNLI (paper)", "SST-2", "SST-2 95% CI", "SST-2 (paper)"]
    assert [row["MNLI (paper)"] for row in rows] == ["87.6±.4", "84.7", "86.3±.4", "87.2±.4", "87.2±.2", "87.4±.3"]
    assert rows[-1]["SST-2 (paper)"] == "94.2±.3" and rows[-1]["#params (paper)"] == "0.5%"
    seeds = [42, 2, 4, 6, 8]
    values = [round(20 + 5 + (seed * 7 % 5) * 0.37 + len("accuracy") * 0.11, 2) for seed in seeds]
    assert rows[-1]["MNLI"] == f"{statistics.median(values):.2f} ± {statistics.stdev(values):.2f}"  # 5 seeds
    assert not (tmp_path / "results/table2/tables/generation.csv").read_text().strip("\n").count("\n")


def test_table5_rows_are_the_composition_functions(tmp_path, monkeypatch):
    write_grid_workspace(tmp_path, "table5", profile="real")
    assert run_stage(tmp_path, monkeypatch) == 0

    rows = markdown_rows(tmp_path / "results/table5/tables/generation.md")
    assert [(row["Method"], row["XSum (paper)"]) for row in rows] == [
        ("LoRA ffn (r=102, s=4)", "44.59/21.31/36.25"), ("LoRA ffn (r=102, s=1)", "44.17/20.83/35.74"),
        ("PA ffn (r=512)", "44.35/20.98/35.98"), ("Scaled PA (r=512, s=4)", "44.85/21.54/36.58"),
        ("Scaled PA, learned s (r=512, s=learned)", "44.56/21.31/36.29")]
    assert {row["Paper source"] for row in rows} == {"Table 5"}


def test_a_figure_grid_plots_the_papers_points_beside_ours_in_the_real_profile(tmp_path, monkeypatch):
    write_grid_workspace(tmp_path, "figure4", profile="real")
    assert run_stage(tmp_path, monkeypatch) == 0

    data = pd.read_csv(tmp_path / "results/figure4/plots/summarization.csv")
    assert list(data.columns) == ["method", "run", "label", "params_percent", "score", "score_low", "score_high",
                                  "paper_params_percent", "paper_score"]
    prefix = data.set_index("run").loc[["prefix-1", "prefix-30", "prefix-200", "prefix-512"]]
    assert list(prefix["paper_score"]) == [18.14, 20.01, 20.46, 20.40]  # Figure 4's prefix curve, XSum R-2
    assert list(prefix["paper_params_percent"]) == [0.018, 0.54, 3.6, 9.2]
    bleu = pd.read_csv(tmp_path / "results/figure4/plots/translation.csv").set_index("run")
    assert bleu.loc["lora-400", "paper_score"] == 36.6 and bleu.loc["full", "paper_score"] == 37.3
    assert (tmp_path / "results/figure4/plots/translation.png").read_bytes().startswith(b"\x89PNG")

    offline = tmp_path / "offline"
    offline.mkdir()
    write_grid_workspace(offline, "figure4")
    assert run_stage(offline, monkeypatch) == 0
    assert list(pd.read_csv(offline / "results/figure4/plots/translation.csv").columns) == [
        "method", "run", "label", "params_percent", "score", "score_low", "score_high"]  # no paper points offline


def test_grid_results_must_stay_inside_the_project(tmp_path, monkeypatch, capsys):
    write_workspace(tmp_path, ["mam"], [1], generation=["summarization"])
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["grid"]["results"] = "../elsewhere"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert run_stage(tmp_path, monkeypatch) == 1
    assert "grid.results must be a directory inside the project" in capsys.readouterr().err


def test_validation_curves_place_each_evaluation_by_its_logged_epoch(tmp_path):
    """DVCLive counts log calls, not training steps: the epoch logged at the same call places an evaluation."""
    grid = grid_results.Grid("offline", (1, 2), ("lora", "full"), (), ("sentiment",))
    for seed, accuracies in ((1, [70.0, 80.0, 75.0]), (2, [72.0, 78.0])):  # seed 2 stopped early
        logs = tmp_path / "metrics/train/sentiment/lora" / f"seed{seed}" / "plots/metrics"
        (logs / "eval").mkdir(parents=True)
        # training logs (steps 1, 3, 5) between the evaluations (steps 2, 4, 6)
        (logs / "epoch.tsv").write_text("step\tepoch\n" + "".join(
            f"{step}\t{step / 10}\n" for step in range(1, 2 * len(accuracies) + 1)))
        (logs / "eval/accuracy.tsv").write_text("step\taccuracy\n" + "".join(
            f"{2 * k}\t{a}\n" for k, a in enumerate(accuracies, 1)))
    curves = grid_results.validation_curves(grid, "sentiment", tmp_path)  # full logged nothing: no curve
    assert curves.to_dict("list") == {"run": ["lora"] * 3, "epoch": [0.2, 0.4, 0.6], "score": [71.0, 79.0, 75.0],
                                      "seeds": [2, 2, 1]}
    assert figures.curves_png(curves, "sentiment", "offline").startswith(b"\x89PNG")
