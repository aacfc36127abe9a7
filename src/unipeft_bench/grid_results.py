"""A grid's results as the aggregate, findings and report stages read them: the grid (params.yaml `grid`), each run's
metrics file (metrics/<task>/<run>/seed<seed>.json) as a flat record, the trivial baselines, the validation curves
of the train stage's DVCLive logs, and how each task appears in the paper."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import baselines
from .errors import DataError
from .io import need
from .tasks import task as get_task


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


def column_name(task: str, profile: str) -> str:
    """The dataset's name in the real profile; in the offline one the task's, since the data are stand-ins."""
    return TASK_VIEWS[task].paper_name if profile == "real" else task


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


def write_outputs(outputs: dict[Path, str | bytes]) -> None:
    """Each file through a temporary name and a rename, so no reader sees half a file."""
    for path, content in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_bytes(content if isinstance(content, bytes) else content.encode())
        os.replace(temporary, path)
