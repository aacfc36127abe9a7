"""The paper's tables from a grid's records: method labels and budgets as the paper writes them, the paper's own
numbers (paper_results.yaml) beside ours, and seeds summarised as the paper does: generation tasks as mean ± sample
standard deviation (Table 6: "± is the std over 3 seeds"), classification tasks as the median (Table 2: "median of
5 runs") ± std."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pandas as pd
import yaml

import unipeft

from . import baselines
from .grid_results import BASELINE, TASK_VIEWS, Grid, column_name


PAPER_RESULTS = Path(__file__).with_name("paper_results.yaml")


METHOD_NAMES = {
    "full": "Full fine-tuning", "bitfit": "BitFit", "prompt": "Prompt tuning", "prefix": "Prefix",
    "prefix_direct": "Prefix, no MLP", "prefix_gated": "Prefix, gated form", "prefix_nogate": "Prefix −gating",
    "adapter": "Houlsby adapter", "adapter_pfeiffer": "Pfeiffer adapter", "sa_attn": "SA attn", "sa_ffn": "SA ffn",
    "lora": "LoRA", "lora_ffn": "LoRA ffn", "pa": "PA ffn", "pa_attn": "PA attn", "scaled_pa": "Scaled PA",
    "scaled_pa_learned": "Scaled PA, learned s", "mh_pa": "MH PA", "mh_pa_lora_init": "MH PA, P_v = 0 at start",
    "mh_pa_bart": "MH PA, BART-file form", "mam": "MAM", "mam_glue": "MAM",
    "pa_attn_ffn": "PA attn + PA ffn", "prefix_lora_ffn": "Prefix + LoRA ffn",
}


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
