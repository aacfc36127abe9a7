"""The paper's tables and figures from the per-run metrics files: what stages/aggregate.py computes.

Seeds are summarised as the paper does: generation tasks as mean ± sample standard deviation (Table 6:
"± is the std over 3 seeds"), classification tasks as the median (Table 2: "median of 5 runs") ± std.
Everything is computed in memory; `build` returns the files to write, so a bad input writes nothing.
"""

from __future__ import annotations

import functools
import io as bytes_io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

import unipeft

from . import baselines
from .errors import DataError
from .io import need
from .tasks import task as get_task

PAPER_RESULTS = Path(__file__).with_name("paper_results.yaml")
# Outside metrics/, which holds the stage's inputs (the runs' scores and curves).
# Each grid writes under its own `grid.results` (results for the default grid, results/<name> for the paper's
# tables and figures), so that the outputs of several grids live side by side.
DEFAULT_RESULTS = "results"


@dataclass(frozen=True)
class TaskView:
    """How one task appears in the paper: its dataset name, the metrics its tables print, the one its figures plot."""

    paper_name: str
    columns: tuple[tuple[str, str], ...]  # (score key, column label) shown in the Markdown table
    primary: str  # the score of the figures (Figure 4 plots XSum R-2)
    axis_label: str  # the primary score's name on a figure
    paper_decimals: int  # as the paper prints them, so its numbers read as printed
    optional: tuple[str, ...] = ()  # scores only some profiles write; kept in the CSV when present


TASK_VIEWS = {
    "summarization": TaskView("XSum", (("rouge1", "R-1"), ("rouge2", "R-2"), ("rougeLsum", "R-L")), "rouge2",
                              "ROUGE-2", 2, optional=("rougeL",)),
    "translation": TaskView("en-ro", (("bleu", "BLEU"),), "bleu", "BLEU", 1),
    "nli": TaskView("MNLI", (("accuracy", ""),), "accuracy", "accuracy", 1, optional=("accuracy_mismatched",)),
    "sentiment": TaskView("SST-2", (("accuracy", ""),), "accuracy", "accuracy", 1),
}

METHOD_NAMES = {
    "full": "Full fine-tuning", "bitfit": "BitFit", "prompt": "Prompt tuning", "prefix": "Prefix",
    "prefix_direct": "Prefix, no MLP", "prefix_gated": "Prefix, gated form", "prefix_nogate": "Prefix −gating",
    "adapter": "Houlsby adapter", "adapter_pfeiffer": "Pfeiffer adapter", "sa_attn": "SA attn", "sa_ffn": "SA ffn",
    "lora": "LoRA", "lora_ffn": "LoRA ffn", "pa": "PA ffn", "pa_attn": "PA attn", "scaled_pa": "Scaled PA",
    "scaled_pa_learned": "Scaled PA, learned s", "mh_pa": "MH PA", "mh_pa_lora_init": "MH PA, P_v = 0 at start",
    "mh_pa_bart": "MH PA, BART-file form", "mam": "MAM", "mam_glue": "MAM",
    "pa_attn_ffn": "PA attn + PA ffn", "prefix_lora_ffn": "Prefix + LoRA ffn",
}


# ---- reading the grid and its metrics files ----------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    profile: str
    seeds: tuple[int, ...]
    runs: tuple[str, ...]  # in the order the tables show them
    generation: tuple[str, ...]
    classification: tuple[str, ...]
    name: str = "default"  # conf/grid/<name>.yaml
    results: Path = Path(DEFAULT_RESULTS)
    title: str = ""  # the heading of its tables; empty: one per kind of task
    paper: str = ""  # the paper_results.yaml source (e.g. "Table 4") whose numbers come first

    @property
    def tables(self) -> Path:
        return self.results / "tables"

    @property
    def plots(self) -> Path:
        return self.results / "plots"


def read_grid(params: dict) -> Grid:
    profile = need(params, "profile")
    if profile not in ("offline", "real"):
        raise DataError(f"params.yaml: profile must be 'offline' or 'real', got {profile!r}")
    seeds, runs = need(params, "grid.seeds"), need(params, "grid.runs")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise DataError(f"params.yaml: grid.seeds must be a non-empty list of integers, got {seeds!r}")
    if not isinstance(runs, dict) or not runs:
        raise DataError("params.yaml: grid.runs must map run names to their specs")
    kinds = {kind: params["grid"].get(kind) or [] for kind in ("generation", "classification")}
    for kind, expected in (("generation", "seq2seq"), ("classification", "classification")):
        if not isinstance(kinds[kind], list):
            raise DataError(f"params.yaml: grid.{kind} must be a list of tasks, got {kinds[kind]!r}")
        for name in kinds[kind]:
            if get_task(name).kind != expected:
                raise DataError(f"params.yaml: grid.{kind} lists {name!r}, a {get_task(name).kind} task")
    return Grid(profile, tuple(seeds), tuple(runs), tuple(kinds["generation"]), tuple(kinds["classification"]),
                str(params["grid"].get("name") or "default"), results_directory(params["grid"]),
                str(params["grid"].get("title") or ""), str(params["grid"].get("paper") or ""))


def results_directory(grid: dict) -> Path:
    """grid.results: a directory inside the project (DVC tracks it as the aggregate stage's output)."""
    results = grid.get("results") or DEFAULT_RESULTS
    path = Path(str(results))
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"params.yaml: grid.results must be a directory inside the project, got {results!r}")
    return path


# where the evaluate stage writes (unipeft_bench.runs.Run): each grid run's seeds in one folder
def metrics_path(root: Path, task: str, run: str, seed: int) -> Path:
    return root / "metrics" / task / run / f"seed{seed}.json"


def predictions_path(root: Path, task: str, run: str, seed: int) -> Path:
    return root / "predictions" / task / run / f"seed{seed}.jsonl"


def reported_scores(task: str, scores: dict, where: str) -> dict[str, float]:
    """The scores the paper's tables print, under the keys of paper_results.yaml."""
    if task == "translation":  # the paper's BLEU is tokenised and Romanian-normalised: bleu_paper, where it exists
        bleu_paper = scores.get("bleu_paper")
        return {"bleu": need(scores, "bleu", where) if bleu_paper is None else bleu_paper}
    view = TASK_VIEWS[task]
    out = {key: need(scores, key, where) for key, _ in view.columns}
    out.update({key: scores[key] for key in view.optional if scores.get(key) is not None})
    return out


def read_metrics(path: Path, task: str, run: str, seed: int, profile: str) -> dict:
    """One metrics file as a flat record; a file of another run or profile is stale, and an error."""
    if not path.is_file():
        raise DataError(f"{path}: not found; run the evaluate stage for {task} {run} seed {seed}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    for key, expected in (("task", task), ("run", run), ("seed", seed), ("profile", profile)):
        if need(data, key, str(path)) != expected:
            raise DataError(f"{path}: {key} is {data[key]!r}, expected {expected!r}")
    return {"task": task, "run": run, "seed": seed, "method": need(data, "method", str(path)),
            "sizes": need(data, "sizes", str(path)), "params_percent": need(data, "params.paper_percent", str(path)),
            "scores": reported_scores(task, need(data, "scores", str(path)), str(path)),
            "training": data.get("training") or {}}


def read_all(grid: Grid, root: Path) -> list[dict]:
    return [read_metrics(metrics_path(root, task, run, seed), task, run, seed, grid.profile)
            for task in grid.generation + grid.classification for run in grid.runs for seed in grid.seeds]


BASELINE = "baseline"  # the trivial baseline's run name in the tables (no grid run may take it: validation)


def read_baselines(grid: Grid, root: Path) -> list[dict]:
    """Each task's trivial baseline as a one-seed record, where its tokenized data exist."""
    records = []
    for task in grid.generation + grid.classification:
        scores = baselines.scores(task, root, romanian=grid.profile == "real" and task == "translation")
        if scores is not None:
            records.append({"task": task, "run": BASELINE, "seed": 0, "method": BASELINE, "sizes": {},
                            "params_percent": 0.0, "scores": reported_scores(task, scores, f"{task} baseline"),
                            "training": {}, "seeds": 1})
    return records


# ---- labels and numbers as the paper writes them -------------------------------------------------------------------
@functools.cache
def _attention_size_is_a_length(method: str) -> bool:
    """Prefix and prompt sizes are lengths l; every other size is a bottleneck r (the paper's letters)."""
    try:
        modifications = unipeft.preset(method).modifications
    except unipeft.ConfigError:
        return False
    return any(m.position == "embeddings" or (m.position == "head" and m.function == "softmax")
               for m in modifications)


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def method_label(method: str, sizes: dict) -> str:
    """E.g. "MAM (l=30, r=512, s=4)", "LoRA (r=16, s=2)", "Full fine-tuning"."""
    attn, ffn, scale = sizes.get("attn"), sizes.get("ffn"), sizes.get("scale")
    letter = "l" if _attention_size_is_a_length(method) else "r"
    if attn is not None and ffn is not None and letter == "r":
        parts = [f"r={_number(attn)}"] if attn == ffn else [f"attn r={_number(attn)}", f"ffn r={_number(ffn)}"]
    else:
        parts = ([f"{letter}={_number(attn)}"] if attn is not None else []) + (
            [f"r={_number(ffn)}"] if ffn is not None else [])
    if scale is not None:
        parts.append(f"s={_number(scale)}")
    name = METHOD_NAMES.get(method, method)
    return f"{name} ({', '.join(parts)})" if parts else name


def percent(value: float) -> str:
    """The paper's style: "100%", "6.7%", "12.3%", "0.5%", "0.08%", "0.075%" (two significant digits below 1)."""
    if value >= 100 or value <= 0:
        return f"{value:.0f}%"
    if value >= 1:
        return f"{value:.1f}%"
    return f"{value:.{1 - math.floor(math.log10(value))}f}".rstrip("0").rstrip(".") + "%"


def mean_pm_std(center: float, std: float) -> str:
    return f"{center:.2f}" if pd.isna(std) else f"{center:.2f} ± {std:.2f}"


# ---- the paper's numbers -------------------------------------------------------------------------------------------
@functools.cache
def paper_results() -> tuple[dict, ...]:
    return tuple(yaml.safe_load(PAPER_RESULTS.read_text())["results"])


def _scale(value):
    return 1.0 if value is None else (float(value) if isinstance(value, (int, float)) else value)


def _matches(entry: dict, method: str, sizes: dict) -> bool:
    methods = entry["method"] if isinstance(entry["method"], list) else [entry["method"]]
    expected = entry.get("sizes") or {}
    if method not in methods or any(expected.get(k) != sizes.get(k) for k in ("attn", "ffn")):
        return False
    return "scale" not in expected or _scale(expected["scale"]) == _scale(sizes.get("scale"))


def paper_entry(task: str, method: str, sizes: dict, prefer: str = "") -> dict | None:
    """The first entry of paper_results.yaml (its order is the precedence) with this task, method and sizes;
    one from the `prefer`red source first, so that a grid of Table 4 shows Table 4's row where it has one."""
    matches = [e for e in paper_results() if task in e["scores"] and _matches(e, method, sizes)]
    return next(iter([e for e in matches if e["source"] == prefer] + matches), None)


def paper_cell(entry: dict | None, task: str) -> str:
    """The paper's numbers as printed: "45.06/21.90/36.87 ±.08/.01/.04", "37.5±.1"; missing ones as "–"."""
    if entry is None:
        return ""
    view, scores, stds = TASK_VIEWS[task], entry["scores"][task], (entry.get("std") or {}).get(task)
    decimals = view.paper_decimals
    values = "/".join(f"{scores[k]:.{decimals}f}" if k in scores else "–" for k, _ in view.columns)
    if not stds:
        return values
    spread = "/".join(f"{stds[k]:.{decimals}f}".lstrip("0") if k in stds else "–" for k, _ in view.columns)
    return f"{values} ±{spread}" if len(view.columns) > 1 else f"{values}±{spread}"


# ---- tables ---------------------------------------------------------------------------------------------------------
CENTER = {"generation": "mean", "classification": "median"}  # Table 6 averages seeds; Table 2 takes the median
# Student's t, 97.5% quantile, by degrees of freedom (seeds - 1): the 95% interval of a mean over a few seeds.
# Written out rather than importing scipy for eight numbers; beyond 8, the normal's 1.96 is within 0.3.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}


def summarise(records: list[dict]) -> pd.DataFrame:
    """Mean, median, sample std, count and the mean's 95% t-interval over seeds, indexed by (task, run, score
    key); one seed has no interval."""
    long = pd.DataFrame([{"task": r["task"], "run": r["run"], "key": key, "value": float(value)}
                         for r in records for key, value in r["scores"].items()])
    stats = long.groupby(["task", "run", "key"], sort=False)["value"].agg(["mean", "median", "std", "count"])
    half = stats["count"].map(lambda n: T_975.get(n - 1, 1.96)) * stats["std"] / stats["count"] ** 0.5
    return stats.assign(ci_low=stats["mean"] - half, ci_high=stats["mean"] + half)


def training_summary(records: list[dict], task: str, run: str) -> dict:
    """How the run's seeds trained (metrics files' `training`): median steps, how many stopped early, rate."""
    trained = [r["training"] for r in records if (r["task"], r["run"]) == (task, run) and r["training"]]
    if not trained:
        return {}
    steps = pd.Series([t.get("steps") for t in trained], dtype=float)
    return {"steps_median": steps.median(), "stopped_early": sum(bool(t.get("stopped_early")) for t in trained),
            "best_step_median": pd.Series([t.get("best_step") for t in trained], dtype=float).median(),
            "learning_rate": trained[0].get("learning_rate"), "trained_seeds": len(trained)}


def column_name(task: str, profile: str) -> str:
    """The dataset's name in the real profile; in the offline one the task's, since the data are stand-ins."""
    return TASK_VIEWS[task].paper_name if profile == "real" else task


def _task_columns(task: str, run: str, stats: pd.DataFrame, center: str, profile: str,
                  entry: dict | None, training: dict) -> tuple[dict, dict]:
    """One task's share of a row: all its scores (and the paper's) for the CSV, the printed ones for Markdown."""
    view, name, real = TASK_VIEWS[task], column_name(task, profile), profile == "real"
    numeric, shown = {}, {}
    for key in stats.loc[(task, run)].index:  # every reported score, the optional ones included
        for column in (center, "std", "ci_low", "ci_high"):
            numeric[f"{task}_{key}_{column}"] = stats.loc[(task, run, key), column]
    several = stats.loc[(task, run), "count"].min() > 1
    for key, label in view.columns:
        shown[f"{name} {label}".strip()] = mean_pm_std(stats.loc[(task, run, key), center],
                                                       stats.loc[(task, run, key), "std"])
        if real:
            numeric[f"{task}_{key}_paper"] = None if entry is None else entry["scores"][task].get(key)
    if several:  # the primary score's interval; the others' are in the CSV
        low, high = stats.loc[(task, run, view.primary), ["ci_low", "ci_high"]]
        shown[f"{name} 95% CI"] = f"[{low:.2f}, {high:.2f}]"
    if training:
        numeric.update({f"{task}_{key}": value for key, value in training.items()})
        shown[f"{name} steps (stopped early)"] = (f"{training['steps_median']:.0f} "
                                                  f"({training['stopped_early']}/{training['trained_seeds']})")
    if real:
        shown[f"{name} (paper)"] = paper_cell(entry, task)
    return numeric, shown


def _run_rows(grid: Grid, kind: str, run: str, first: dict, stats: pd.DataFrame,
              records: list[dict]) -> tuple[dict, dict]:
    """One run's row twice: numbers for the CSV and text for the Markdown table."""
    tasks, real = getattr(grid, kind), grid.profile == "real"
    head = first[(tasks[0], run)]
    label = baseline_label(tasks) if run == BASELINE else method_label(head["method"], head["sizes"])
    numeric = {"run": run, "method": head["method"], "label": label, "params_percent": head["params_percent"],
               "seeds": head.get("seeds", len(grid.seeds))}
    shown = {"Method": label,
             "#params": " / ".join(dict.fromkeys(percent(first[(t, run)]["params_percent"]) for t in tasks))}
    entries = {t: paper_entry(t, first[(t, run)]["method"], first[(t, run)]["sizes"], grid.paper) if real else None
               for t in tasks}
    matched = {t: e for t, e in entries.items() if e is not None}
    if real:
        paper_percent = next((e["params_percent"] for e in matched.values()), None)
        numeric.update(paper_params_percent=paper_percent, paper_source=_sources(matched, grid.profile))
        shown["#params (paper)"] = "" if paper_percent is None else percent(paper_percent)
    for task in tasks:
        task_numeric, task_shown = _task_columns(task, run, stats, CENTER[kind], grid.profile, entries[task],
                                                 training_summary(records, task, run))
        numeric.update(task_numeric)
        shown.update(task_shown)
    if real:
        shown["Paper source"] = numeric["paper_source"]
    return numeric, shown


def _sources(matched: dict[str, dict], profile: str) -> str:
    sources = {task: entry["source"] for task, entry in matched.items()}
    if len(set(sources.values())) <= 1:
        return next(iter(sources.values()), "")
    return "; ".join(f"{column_name(task, profile)}: {source}" for task, source in sources.items())


def _distinct_labels(shown: pd.DataFrame, runs: tuple[str, ...]) -> pd.DataFrame:
    """Two runs of the same method and sizes (other settings differ) get their run name, to tell them apart."""
    repeated = shown["Method"].duplicated(keep=False)
    shown.loc[repeated, "Method"] = [f"{label} [{run}]" for label, run in zip(shown["Method"][repeated],
                                                                               pd.Series(runs)[repeated])]
    return shown


def baseline_label(tasks: tuple[str, ...]) -> str:
    return f"Trivial baseline ({' / '.join(dict.fromkeys(baselines.NAMES[task] for task in tasks))})"


def has_baselines(kind_tasks: tuple[str, ...], records: list[dict]) -> bool:
    return bool(kind_tasks) and {r["task"] for r in records if r["run"] == BASELINE} >= set(kind_tasks)


def results_table(grid: Grid, kind: str, records: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The numeric table (CSV) and its formatted twin (Markdown): the trivial baseline's row first (where every
    task of the kind has one), then one row per run, in grid order."""
    tasks = getattr(grid, kind)
    if not tasks:
        return pd.DataFrame(columns=["run", "method", "label", "params_percent", "seeds"]), pd.DataFrame()
    mine = [r for r in records if r["task"] in tasks]
    first = {(r["task"], r["run"]): r for r in reversed(mine)}  # the first seed's record: method, sizes, #params
    stats = summarise(mine)
    runs = ((BASELINE,) if has_baselines(tasks, mine) else ()) + grid.runs
    rows = [_run_rows(grid, kind, run, first, stats, mine) for run in runs]
    # columns in a trained run's order: the baseline's row has no interval or steps
    columns = list(dict.fromkeys([key for _, s in rows[1:] for key in s] + list(rows[0][1])))
    numeric, shown = pd.DataFrame([n for n, _ in rows]), pd.DataFrame([s for _, s in rows], columns=columns)
    return numeric.round(4), _distinct_labels(shown.fillna(""), runs)


def markdown(shown: pd.DataFrame) -> str:
    """A pipe table, written here because pandas' to_markdown needs tabulate, which would reformat our cells."""
    def line(cells) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"
    text_columns = ("Method", "Paper source")  # left-aligned; the numbers right-aligned
    rule = "|" + "|".join("---" if column in text_columns else "---:" for column in shown.columns) + "|"
    return "\n".join([line(shown.columns), rule] + [line(row) for row in shown.itertuples(index=False)])


def table_notes(grid: Grid, kind: str, baselined: bool = True) -> list[str]:
    tasks, seeds = getattr(grid, kind), ", ".join(map(str, grid.seeds))
    notes = ["Trivial baseline: " + "; ".join(f"{column_name(task, grid.profile)}, the {baselines.NAMES[task]}"
                                              for task in tasks) +
             " (src/unipeft_bench/baselines.py), scored on the same test examples and references as the runs."
             if baselined else "No trivial baseline: the tasks' tokenized data (data/tokenized/) were not found.",
             f"Scores: mean ± sample standard deviation over seeds {seeds}, as the paper's Table 6 (3 seeds)."
             if kind == "generation" else
             f"Scores: accuracy, median ± sample standard deviation over seeds {seeds}, as the paper's Table 2 "
             "(median of 5 runs).",
             "95% CI: Student's t interval of the mean over the seeds (where there are several); steps: the median "
             "number of training steps over seeds, and how many seeds stopped early (their validation score had "
             "stopped improving).",
             "#params: the paper's count (Appendix B: no biases, LayerNorms or prefix MLP) as a percentage of its "
             "denominator for the model (409.6M for BART and mBART; the base model otherwise)."]
    if "summarization" in tasks:
        notes.append("R-L is ROUGE-Lsum (summaries split into sentences, as the paper's script; its Table 5 header "
                     "says LSum); plain ROUGE-L is in the CSV.")
    if "translation" in tasks:
        notes.append("BLEU: the paper's tokenised BLEU after Romanian normalisation (bleu_paper)." if grid.profile ==
                     "real" else "BLEU: sacreBLEU with its defaults; the paper's Romanian normalisation does not "
                     "apply to the stand-in's Spanish targets.")
    if grid.profile == "real":
        first = f"; {grid.paper}'s own rows first" if grid.paper else ""
        notes.append("(paper): the paper's numbers for the same method and sizes, as printed, from "
                     f"src/unipeft_bench/paper_results.yaml (table in 'Paper source'{first}); empty where it has no "
                     "such run.")
    else:
        notes.append("Offline profile: stand-in data and small models, so the paper's numbers are not "
                     "comparable and are not shown.")
    notes.append(f"Grid `{grid.name}` (conf/grid/{grid.name}.yaml): `dvc exp run -S grid={grid.name}`.")
    return notes


def table_markdown(grid: Grid, kind: str, shown: pd.DataFrame, baselined: bool = True) -> str:
    title = grid.title or {"generation": "Generation tasks (the shape of the paper's Tables 3-6 and 12)",
                           "classification": "Classification tasks (the shape of the paper's Table 2)"}[kind]
    if shown.empty:
        return f"# {title}\n\nno tasks of this kind in the grid\n"
    return f"# {title}\n\n{markdown(shown)}\n\n" + "".join(f"- {note}\n" for note in table_notes(grid, kind,
                                                                                                     baselined))


# ---- figures --------------------------------------------------------------------------------------------------------
def plot_data(grid: Grid, task: str, numeric: pd.DataFrame) -> pd.DataFrame:
    """Figures 4-5's points: the primary score (the table's center over seeds) against the % of parameters; in
    the real profile the paper's point for the same run beside it (paper_params_percent, paper_score)."""
    kind = "generation" if task in grid.generation else "classification"
    primary = TASK_VIEWS[task].primary
    columns = {f"{task}_{primary}_{CENTER[kind]}": "score", f"{task}_{primary}_ci_low": "score_low",
               f"{task}_{primary}_ci_high": "score_high"}
    if grid.profile == "real":
        columns.update(paper_params_percent="paper_params_percent", **{f"{task}_{primary}_paper": "paper_score"})
    data = numeric[["method", "run", "label", "params_percent", *columns]].rename(columns=columns)
    return data.assign(label=data["label"].where(data["method"] != BASELINE, baseline_label((task,))))


def _draw_methods(axes, data: pd.DataFrame, x: str, y: str, paper: bool) -> None:
    """One line per method through its budgets; the paper's in the same colour, dashed with open markers."""
    trained = data[data["method"] != BASELINE]
    methods = trained.loc[trained["method"] != "full", "method"].drop_duplicates()
    colours = {method: f"C{index % 10}" for index, method in enumerate(methods)}
    peft = trained[(trained["method"] != "full") & (trained[x] > 0)].dropna(subset=[x, y])
    for method, points in peft.groupby("method", sort=False):
        points = points.sort_values(x)
        name = METHOD_NAMES.get(method, method)
        style = dict(linestyle="--", marker="o", markerfacecolor="none", label=f"{name} (paper)") if paper else \
            dict(marker="o", label=name)
        axes.plot(points[x], points[y], color=colours[method], **style)
        if not paper and points["score_low"].notna().any():  # the 95% interval over seeds, around the center
            below = (points[y] - points["score_low"]).clip(lower=0)
            above = (points["score_high"] - points[y]).clip(lower=0)
            axes.errorbar(points[x], points[y], yerr=[below, above], fmt="none", ecolor=colours[method], alpha=0.6,
                          capsize=3)
    if not paper:
        for _, baseline in data[data["method"] == BASELINE].dropna(subset=[y]).iterrows():
            axes.axhline(baseline[y], linestyle=":", color="black", label=baseline["label"])
    for _, full in data[data["method"] == "full"].dropna(subset=[y]).iterrows():
        axes.axhline(full[y], linestyle=":" if paper else "--", color="grey",
                     label="Full fine-tuning (paper)" if paper else "Full fine-tuning")
        if not paper and pd.notna(full["score_low"]):
            axes.axhspan(full["score_low"], full["score_high"], color="grey", alpha=0.12)


def plot_png(data: pd.DataFrame, task: str, profile: str) -> bytes:
    """One line per method through its budgets on a log x axis; full fine-tuning as a dashed horizontal line;
    the paper's points beside them where the data have them (real profile)."""
    from matplotlib import ticker
    from matplotlib.figure import Figure  # no pyplot: no global state, and saving a PNG uses the Agg canvas

    view = TASK_VIEWS[task]
    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    axes = figure.subplots()
    peft = data[~data["method"].isin(("full", BASELINE)) & (data["params_percent"] > 0)]
    _draw_methods(axes, data, "params_percent", "score", paper=False)
    if "paper_score" in data:
        _draw_methods(axes, data, "paper_params_percent", "paper_score", paper=True)
    if not peft.empty:
        axes.set_xscale("log")  # budgets span 0.01% to 10%, as the paper's Figures 4-5
        axes.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}%"))
        axes.xaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set(xlabel="parameters (the paper's count, log scale)", ylabel=view.axis_label,
             title=f"{column_name(task, profile)}: {view.axis_label} against the parameter budget")
    axes.grid(True, which="both", alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    buffer = bytes_io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, metadata={"Software": None})  # no version: same input, same file
    return buffer.getvalue()


# ---- validation curves ----------------------------------------------------------------------------------------------
# The train stage's checkpoint selection metric (`select`), the same in both profiles.
VALIDATION_METRIC = {"summarization": "rouge2", "translation": "loss", "nli": "accuracy", "sentiment": "accuracy"}


def validation_curves(grid: Grid, task: str, root: Path) -> pd.DataFrame:
    """Each run's validation score against the epoch, averaged over the seeds that reached it, from the train
    stage's DVCLive logs (metrics/train/<task>/<run>/seed<seed>/plots/metrics: DVCLive counts log calls, so the
    epoch logged beside each evaluation places it); empty where no run logged one."""
    metric, frames = VALIDATION_METRIC[task], []
    for run in grid.runs:
        for seed in grid.seeds:
            logs = root / "metrics/train" / task / run / f"seed{seed}" / "plots/metrics"
            if (logs / "eval" / f"{metric}.tsv").is_file() and (logs / "epoch.tsv").is_file():
                scores = pd.read_csv(logs / "eval" / f"{metric}.tsv", sep="\t")
                epochs = pd.read_csv(logs / "epoch.tsv", sep="\t")
                frames.append(scores.merge(epochs, on="step").assign(run=run, seed=seed))
    if not frames:
        return pd.DataFrame(columns=["run", "epoch", "score", "seeds"])
    long = pd.concat(frames).assign(epoch=lambda d: d["epoch"].round(3))
    curves = long.groupby(["run", "epoch"], sort=False)[metric].agg(["mean", "count"]).reset_index()
    return curves.rename(columns={"mean": "score", "count": "seeds"})


def curves_png(curves: pd.DataFrame, task: str, profile: str) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.6), layout="constrained")
    axes = figure.subplots()
    for index, (run, points) in enumerate(curves.groupby("run", sort=False)):
        axes.plot(points["epoch"], points["score"], marker=".", linewidth=1, color=f"C{index % 10}",
                  linestyle=("-", "--", ":")[index // 10 % 3], label=run)
    metric = VALIDATION_METRIC[task]
    axes.set(xlabel="epoch", ylabel=f"validation {metric} (mean over seeds)",
             title=f"{column_name(task, profile)}: validation {metric} during training")
    axes.grid(True, alpha=0.3)
    if not curves.empty:
        axes.legend(fontsize="x-small", ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    buffer = bytes_io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return buffer.getvalue()


# ---- everything, in memory ------------------------------------------------------------------------------------------
def report_line(task: str, data: pd.DataFrame, numeric: pd.DataFrame) -> str:
    labels = dict(zip(numeric["run"], numeric["label"]))
    full, peft = data[data["method"] == "full"], data[~data["method"].isin(("full", BASELINE))]
    parts = []
    if not peft.empty:
        best = peft.loc[peft["score"].idxmax()]
        parts.append(f"best {best['score']:.2f} by {labels[best['run']]} at {percent(best['params_percent'])}")
    if not full.empty:
        parts.append(f"full fine-tuning {full['score'].iloc[0]:.2f}")
    baseline = data[data["method"] == BASELINE]
    if not baseline.empty:
        parts.append(f"trivial baseline {baseline['score'].iloc[0]:.2f}")
    return f"{task} {TASK_VIEWS[task].primary}: " + "; ".join(parts)


def build(params: dict, root: Path = Path(".")) -> tuple[dict[Path, str | bytes], list[str]]:
    """Every output file's content, keyed by path, and a short report; reads everything before returning."""
    grid = read_grid(params)
    records = read_all(grid, root) + read_baselines(grid, root)
    outputs, report = {}, []
    for kind in ("generation", "classification"):
        numeric, shown = results_table(grid, kind, records)
        outputs[root / grid.tables / f"{kind}.csv"] = numeric.to_csv(index=False)
        outputs[root / grid.tables / f"{kind}.md"] = table_markdown(grid, kind, shown,
                                                                    has_baselines(getattr(grid, kind), records))
        report.append(f"{kind}: {len(numeric)} runs x {len(getattr(grid, kind))} tasks x {len(grid.seeds)} seeds "
                      f"-> {grid.tables / kind}.md, .csv")
        for task in getattr(grid, kind):
            data = plot_data(grid, task, numeric)
            outputs[root / grid.plots / f"{task}.csv"] = data.to_csv(index=False)
            outputs[root / grid.plots / f"{task}.png"] = plot_png(data, task, grid.profile)
            curves = validation_curves(grid, task, root)
            if not curves.empty:
                outputs[root / grid.plots / f"{task}_validation.csv"] = curves.to_csv(index=False)
                outputs[root / grid.plots / f"{task}_validation.png"] = curves_png(curves, task, grid.profile)
            report.append(report_line(task, data, numeric))
    return outputs, report


def write_outputs(outputs: dict[Path, str | bytes]) -> None:
    """Each file through a temporary name and a rename, so no reader sees half a file."""
    for path, content in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_bytes(content if isinstance(content, bytes) else content.encode())
        os.replace(temporary, path)
