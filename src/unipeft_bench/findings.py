"""The paper's findings checked on the grid's runs: what stages/findings.py computes.

The claims are data (findings.yaml): pairs of grid runs, the one the paper favours first, on some tasks, with the
expected direction. Each comparison is a hierarchical paired bootstrap, over seeds and over test examples: each
resample draws the seeds with replacement (a seed's pair of runs, trained from the same seed, stays together) and
the test examples with replacement (one draw for both runs and every seed: the test set is shared), and its
statistic is the mean over the drawn seeds of the difference of the runs' scores on the drawn examples. Drawing
seeds too is what lets one collapsed seed widen the interval instead of deciding the verdict. Per-example
statistics are what the score is built from: accuracy 0/1, ROUGE-2 F1, and for BLEU the sentence's n-gram counts,
from which sacreBLEU recomputes corpus BLEU on every resample (BLEU is not a mean of sentence scores).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from . import baselines, grid_results, tables
from .errors import DataError

FINDINGS = Path(__file__).with_name("findings.yaml")
RESAMPLES = 5000
BOOTSTRAP_SEED = 0  # fixed: the same input gives the same intervals
CONFIDENCE = 0.95
HOLDS, CONTRADICTED, INCONCLUSIVE, NOT_RUN = "holds", "contradicted", "inconclusive", "not run in this grid"
KINDS = ("generation", "classification")
# A recomputed score may differ from the metrics file's only by the file's rounding to 2 decimals.
TOLERANCE = 0.011
# A task carries claims only if full fine-tuning beats its trivial baseline by more than this many points (the
# interval's low end): on a stand-in the model cannot learn, differences between methods say nothing.
STAND_IN_MARGIN = 1.0
FULL = "full"  # the run the stand-in check compares with the baseline


# ---- the claims -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    paper: str
    tasks: object  # a kind, a list of task names, or {profile: either}
    expect: str  # better | close
    margin: float
    pairs: tuple[tuple[str, str], ...]  # (favoured, other)
    note: str
    untestable: dict = field(default_factory=dict)  # {profile: why that profile's stand-ins cannot test it}

    @property
    def threshold(self) -> float:
        """The difference (favoured - other) the interval must clear: 0 for better, -margin for close."""
        return 0.0 if self.expect == "better" else -self.margin

    @property
    def runs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(run for pair in self.pairs for run in pair))

    @property
    def paper_source(self) -> str:
        """The first table it cites, whose numbers paper_results.yaml gives first (real profile)."""
        return self.paper.split(",")[0].strip()

    def task_names(self, grid: grid_results.Grid) -> tuple[str, ...]:
        """The grid's tasks this claim is tested on."""
        spec = self.tasks[grid.profile] if isinstance(self.tasks, dict) else self.tasks
        if spec in KINDS:
            return getattr(grid, spec)
        return tuple(task for task in spec if task in grid.generation + grid.classification)

    def expectation(self, favoured: str, other: str) -> str:
        return f"{favoured} > {other}" if self.expect == "better" else f"{favoured} ≥ {other} − {self.margin:g}"


def _pairs(entry: dict, where: str) -> tuple[tuple[str, str], ...]:
    if "pairs" in entry:
        pairs = entry["pairs"]
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise DataError(f"{where}: pairs must be a list of [favoured, other] run names")
        return tuple((str(a), str(b)) for a, b in pairs)
    if not isinstance(entry.get("favoured"), list) or not isinstance(entry.get("other"), list):
        raise DataError(f"{where}: give pairs, or favoured and other as lists of run names")
    return tuple((str(a), str(b)) for a in entry["favoured"] for b in entry["other"])


def read_claim(entry: dict, where: str) -> Claim:
    missing = [key for key in ("id", "claim", "paper", "tasks", "expect", "note") if key not in entry]
    if missing:
        raise DataError(f"{where}: missing key {missing[0]!r}")
    if entry["expect"] not in ("better", "close"):
        raise DataError(f"{where}: expect must be 'better' or 'close', got {entry['expect']!r}")
    if entry["expect"] == "close" and not isinstance(entry.get("margin"), (int, float)):
        raise DataError(f"{where}: expect: close needs a numeric margin (in score points)")
    untestable = entry.get("untestable") or {}
    if not isinstance(untestable, dict) or not all(isinstance(v, str) for v in untestable.values()):
        raise DataError(f"{where}: untestable must map a profile to one sentence saying why")
    return Claim(str(entry["id"]), str(entry["claim"]), str(entry["paper"]), entry["tasks"], entry["expect"],
                 float(entry.get("margin") or 0.0), _pairs(entry, where), " ".join(str(entry["note"]).split()),
                 {k: " ".join(v.split()) for k, v in untestable.items()})


def load_claims(path: Path = FINDINGS) -> list[Claim]:
    if not path.is_file():
        raise DataError(f"{path}: not found")
    entries = (yaml.safe_load(path.read_text()) or {}).get("claims") or []
    claims = [read_claim(entry, f"{path}: claim {i + 1}") for i, entry in enumerate(entries)]
    if len({c.id for c in claims}) != len(claims):
        raise DataError(f"{path}: claim ids must be unique")
    return claims


# ---- per-example statistics of one run ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scorer:
    """How a split is scored: per-example statistics, and the score from their (resampled) sums."""

    key: str  # the score's key in the metrics file (as grid_results.read_metrics reports it)
    statistics: Callable[[list], np.ndarray]  # predictions -> (examples, k)
    score: Callable[[np.ndarray], np.ndarray]  # sums (resamples, k), over `size` examples -> scores (resamples,)


def mean_score(size: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda sums: 100.0 * sums[:, 0] / size


def accuracy_scorer(labels: list[int], key: str) -> Scorer:
    labels = np.asarray(labels)
    return Scorer(key, lambda predictions: (np.asarray(predictions) == labels).astype(float)[:, None],
                  mean_score(len(labels)))


def rouge2_scorer(references: list[str]) -> Scorer:
    from rouge_score import rouge_scorer

    # As metrics.rouge (stemming); ROUGE-2 tokenises on non-alphanumerics, so its sentence split changes nothing.
    scorer = rouge_scorer.RougeScorer(["rouge2"], use_stemmer=True)
    return Scorer("rouge2", lambda predictions: np.array(
        [[scorer.score(ref, pred)["rouge2"].fmeasure] for pred, ref in zip(predictions, references, strict=True)]),
        mean_score(len(references)))


def bleu_scorer(references: list[str], paper_convention: bool) -> Scorer:
    """Corpus BLEU from summed sentence statistics, as sacreBLEU's own paired bootstrap does; with the paper's
    Romanian normalisation and `-tok none -s none` where the metrics file reports that BLEU (bleu_paper)."""
    from sacrebleu.metrics import BLEU

    if paper_convention:
        from .romanian import normalise

        metric, prepare = BLEU(tokenize="none", smooth_method="none"), normalise
    else:
        metric, prepare = BLEU(), str
    refs = [[prepare(r) for r in references]]
    return Scorer("bleu", lambda predictions: np.array(
        metric._extract_corpus_statistics([prepare(p) for p in predictions], refs), dtype=float),
        lambda sums: np.array([metric._compute_score_from_stats(row).score for row in sums]))


@dataclass(frozen=True)
class Split:
    task: str
    name: str  # test | test_mismatched
    ids: tuple
    scorer: Scorer

    @property
    def label(self) -> str:
        return self.task if self.name == "test" else f"{self.task} ({self.name.removeprefix('test_')})"


def scored_splits(task: str, root: Path, bleu_paper: bool) -> list[Split]:
    """The task's test splits as the evaluate stage scored them, references from data/tokenized/<task>."""
    from datasets import load_from_disk

    data_dir = root / "data" / "tokenized" / task
    if not (data_dir / "dataset_dict.json").is_file():
        raise DataError(f"{data_dir}: not found; run the tokenize stage for {task}")
    data = load_from_disk(str(data_dir))
    if task in grid_results.TASK_VIEWS and grid_results.TASK_VIEWS[task].primary == "accuracy":
        return [Split(task, split, tuple(data[split]["id"]), accuracy_scorer(data[split]["labels"], key))
                for split, key in (("test", "accuracy"), ("test_mismatched", "accuracy_mismatched")) if split in data]
    from transformers import AutoTokenizer

    from .generation import decode_labels

    # The headline references: the tokenized labels decoded, as the evaluate stage scores them.
    references = decode_labels(AutoTokenizer.from_pretrained(str(data_dir / "tokenizer")), data["test"]["labels"])
    scorer = rouge2_scorer(references) if task == "summarization" else bleu_scorer(references, bleu_paper)
    return [Split(task, "test", tuple(data["test"]["id"]), scorer)]


def read_predictions(path: Path, split: Split) -> list:
    """The run's predictions for the split, in the dataset's order."""
    if not path.is_file():
        raise DataError(f"{path}: not found; run the evaluate stage")
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        by_id = {r["id"]: r["prediction"] for r in records if r["split"] == split.name}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a predictions file of {{split, id, prediction}} records ({err})") from None
    if set(by_id) != set(split.ids):
        raise DataError(f"{path}: {split.name} predictions do not match the {len(split.ids)} test examples of "
                        f"data/tokenized/{split.task}; rerun the evaluate stage")
    return [by_id[i] for i in split.ids]


def run_statistics(path: Path, split: Split, reported: float) -> np.ndarray:
    """Per-example statistics of one run and seed, checked against the score its metrics file reports."""
    statistics = split.scorer.statistics(read_predictions(path, split))
    recomputed = float(split.scorer.score(statistics.sum(0, keepdims=True))[0])
    if abs(recomputed - reported) > TOLERANCE:
        raise DataError(f"{path}: its predictions score {recomputed:.2f} {split.scorer.key}, the metrics file "
                        f"{reported:.2f}; rerun the evaluate stage")
    return statistics


# ---- the bootstrap and the verdicts ---------------------------------------------------------------------------------
@functools.cache
def resample_counts(size: int, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """How often each example is drawn in each resample (resamples, size): the same for every comparison on
    the same number of examples, so the stage is deterministic and comparisons on a split share their draws."""
    rng = np.random.default_rng([seed, size])
    drawn = rng.integers(0, size, size=(resamples, size)) + size * np.arange(resamples)[:, None]
    return np.bincount(drawn.ravel(), minlength=resamples * size).reshape(resamples, size)


@dataclass(frozen=True)
class Effect:
    difference: float  # favoured - other, mean over seeds
    low: float
    high: float
    per_seed: tuple[float, ...]


@functools.cache
def resample_seeds(seeds: int, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Which seeds each resample draws, with replacement (resamples, seeds); a stream apart from the examples'."""
    return np.random.default_rng([seed, seeds, 1]).integers(0, seeds, size=(resamples, seeds))


def paired_bootstrap(favoured: list[np.ndarray], other: list[np.ndarray], score, resamples: int = RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> Effect:
    """favoured, other: per-seed (examples, k) statistics, seeds in the same order; score: sums -> scores."""
    counts = resample_counts(favoured[0].shape[0], resamples, seed)
    differences = np.stack([score(counts @ a) - score(counts @ b)
                            for a, b in zip(favoured, other, strict=True)])  # (seeds, resamples)
    drawn = resample_seeds(len(favoured), resamples, seed).T  # (seeds, resamples)
    pooled = differences[drawn, np.arange(resamples)].mean(0)
    per_seed = tuple(float(score(a.sum(0, keepdims=True))[0] - score(b.sum(0, keepdims=True))[0])
                     for a, b in zip(favoured, other))
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(pooled, [tail, 100 - tail])
    return Effect(float(np.mean(per_seed)), float(low), float(high), per_seed)


def verdict(effect: Effect, threshold: float) -> str:
    """Holds when the interval lies entirely on the paper's side of the threshold, contradicted when entirely on
    the other side."""
    if effect.low > threshold:
        return HOLDS
    return CONTRADICTED if effect.high < threshold else INCONCLUSIVE


def claim_verdict(verdicts: list[str]) -> str:
    """A universal claim: it holds when every comparison holds, and one contradiction contradicts it."""
    if not verdicts:
        return NOT_RUN
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


def paper_numbers(split: Split, favoured: dict, other: dict, prefer: str) -> tuple[float, float] | None:
    """The paper's primary score for both runs (records of grid_results.read_metrics), where it prints both."""
    if split.name != "test":
        return None  # the paper reports MNLI matched only
    key = grid_results.TASK_VIEWS[split.task].primary
    found = [tables.paper_entry(split.task, r["method"], r["sizes"], prefer) for r in (favoured, other)]
    values = [None if e is None else e["scores"][split.task].get(key) for e in found]
    return None if None in values else (values[0], values[1])


# ---- every claim on the grid ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    split: Split
    favoured: str
    other: str
    effect: Effect
    verdict: str
    paper: tuple[float, float] | None  # the paper's scores for both runs (real profile), where it prints them


@dataclass(frozen=True)
class StandIn:
    """Whether a task can carry claims: full fine-tuning against the task's trivial baseline on the same test
    examples (the baseline is the same for every seed)."""

    task: str
    baseline: str
    effect: Effect | None  # full - baseline; None where the grid has no full fine-tuning run

    @property
    def carries(self) -> bool:
        return self.effect is None or self.effect.low > STAND_IN_MARGIN

    @property
    def why_not(self) -> str:
        return "" if self.carries else (
            f"the {self.task} stand-in carries no claim: full fine-tuning beats the {self.baseline} baseline by "
            f"{self.effect.difference:+.2f} [{self.effect.low:+.2f}, {self.effect.high:+.2f}], not clearly more "
            f"than {STAND_IN_MARGIN:g} point")


@dataclass(frozen=True)
class Checked:
    claim: Claim
    verdict: str
    comparisons: tuple[Comparison, ...]
    needs: str  # what the grid lacks: "" when every comparison ran
    why_untested: str = ""  # the claim's `untestable` sentence, or why its task's stand-in carries no claim


def _plan(claim: Claim, grid: grid_results.Grid) -> tuple[list[tuple[str, str, str]], str]:
    """(task, favoured, other) of the claim that the grid can run, and what it lacks for the rest."""
    tasks = claim.task_names(grid)
    missing = [run for run in claim.runs if run not in grid.runs]
    plan = [(task, a, b) for task in tasks for a, b in claim.pairs if a in grid.runs and b in grid.runs]
    lacks = ([f"runs {', '.join(missing)}"] if missing else []) + (
        [] if tasks else [_task_words(claim.tasks, grid.profile)])
    return plan, "; ".join(lacks)


def _task_words(tasks, profile: str) -> str:
    spec = tasks[profile] if isinstance(tasks, dict) else tasks
    return f"a {spec} task" if spec in KINDS else f"the {' or '.join(spec)} task"


def stand_in_check(grid: grid_results.Grid, task: str, split: Split, statistics: dict, root: Path) -> StandIn:
    """Full fine-tuning (each seed) against the trivial baseline, with the claims' own bootstrap."""
    name = baselines.NAMES[task]
    if FULL not in grid.runs:
        return StandIn(task, name, None)
    predicted = baselines.predictions(task, baselines.tokenized(task, root))[split.name]
    baseline = split.scorer.statistics(predicted)
    effect = paired_bootstrap([statistics[(split.name, task, FULL, s)] for s in grid.seeds],
                              [baseline] * len(grid.seeds), split.scorer.score)
    return StandIn(task, name, effect)


def check(params: dict, root: Path = Path("."), claims: list[Claim] | None = None) -> tuple[
        grid_results.Grid, list[Checked], dict[str, StandIn]]:
    """Every claim's verdict on the grid's runs, and each claimed task's stand-in check; reads every input before
    returning (nothing is written here)."""
    grid = grid_results.read_grid(params)
    claims = load_claims() if claims is None else claims
    plans = {claim.id: _plan(claim, grid) for claim in claims if grid.profile not in claim.untestable}
    points = {(task, run) for plan, _ in plans.values() for task, a, b in plan for run in (a, b)}
    points = sorted(points | {(task, FULL) for task, _ in points if FULL in grid.runs})  # the stand-in check's
    # The metrics files first (the cheapest to miss), then the references, then the predictions.
    records = {(task, run, seed): grid_results.read_metrics(grid_results.metrics_path(root, task, run, seed), task,
                                                            run, seed, grid.profile)
               for task, run in points for seed in grid.seeds}
    one_run = dict(points)  # per task, one of its runs: its metrics file says which BLEU the task reports
    splits = {task: scored_splits(task, root, _reports_paper_bleu(root, task, run, grid.seeds[0]))
              for task, run in one_run.items()}
    statistics = {(split.name, task, run, seed): _statistics(root, records, split, run, seed)
                  for task, run in points for split in splits[task] for seed in grid.seeds}
    stand_ins = {task: stand_in_check(grid, task, splits[task][0], statistics, root) for task in splits}
    checked = []
    for claim in claims:
        if grid.profile in claim.untestable:
            checked.append(Checked(claim, INCONCLUSIVE, (), "", claim.untestable[grid.profile]))
            continue
        plan, needs = plans[claim.id]
        comparisons = []
        for task, favoured, other in plan:
            for split in splits[task]:
                effect = paired_bootstrap([statistics[(split.name, task, favoured, s)] for s in grid.seeds],
                                          [statistics[(split.name, task, other, s)] for s in grid.seeds],
                                          split.scorer.score)
                paper = paper_numbers(split, records[(task, favoured, grid.seeds[0])],
                                      records[(task, other, grid.seeds[0])], claim.paper_source) \
                    if grid.profile == "real" else None
                found = verdict(effect, claim.threshold) if stand_ins[task].carries else INCONCLUSIVE
                comparisons.append(Comparison(split, favoured, other, effect, found, paper))
        why = "; ".join(dict.fromkeys(stand_ins[task].why_not for task, _, _ in plan if stand_ins[task].why_not))
        checked.append(Checked(claim, claim_verdict([c.verdict for c in comparisons]), tuple(comparisons), needs,
                               why))
    return grid, checked, stand_ins


def _statistics(root: Path, records: dict, split: Split, run: str, seed: int) -> np.ndarray:
    path = grid_results.metrics_path(root, split.task, run, seed)
    reported = records[(split.task, run, seed)]["scores"].get(split.scorer.key)
    if reported is None:
        raise DataError(f"{path}: no {split.scorer.key!r} score; rerun the evaluate stage")
    return run_statistics(grid_results.predictions_path(root, split.task, run, seed), split, float(reported))


def _reports_paper_bleu(root: Path, task: str, run: str, seed: int) -> bool:
    """Whether the metrics file's BLEU is the paper's (Romanian targets): then the bootstrap recomputes that one."""
    if task != "translation":
        return False
    scores = json.loads(grid_results.metrics_path(root, task, run, seed).read_text())["scores"]
    return scores.get("bleu_paper") is not None

