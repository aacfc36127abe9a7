"""A grid spread over several machines: its runs dealt into N shards of about equal cost, one per worker.

    python -m unipeft_bench.shards --workers 8 --index 3       # shard 3's stage names, one line (for $(...))
    python -m unipeft_bench.shards --workers 8 --estimate      # the plan: every run, its estimated cost, its shard
    python -m unipeft_bench.shards --grid table4 --workers 8 ...   # a named grid (conf/grid/<name>.yaml)
    python -m unipeft_bench.shards --push [--remote NAME]     # a worker's runs and run-cache to the remote

A shard is a list of train and evaluate stages (each task × run of the grid, and the single experiment), which a
worker runs with `dvc repro <stages>` and shares with `--push` (`dvc push --run-cache` and what it misses); the
coordinator's `dvc repro --pull` then restores them from the run-cache instead of training them (README, "Several
machines"; scripts/cluster/).

Cost is an estimate of each run's training compute, the usual 6·N·D rule for a step of N parameters over D tokens:
forward 2·N·D, backward 4·N·D with every weight trained, about 2·N·D without weight gradients for the frozen ones
(4·N·D in all; measured here, full fine-tuning took 1.4x a PEFT method's time per step on both SmolLM2 and MiniLM:
metrics/*/seed42.json). The method and budget are otherwise left out: among the default grid's PEFT runs the time
per step differed by up to 16% on SmolLM2 and 28% on MiniLM (MAM against PA).
Shards are dealt longest run first, each to the least loaded shard (a greedy schedule within 4/3 of the best).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from . import io
from .errors import DataError
from .run_settings import run_settings
from .runs import EXPERIMENT
from .tasks import task as get_task

# Parameters of the models the project names (their model cards; SmolLM2 as loaded: tied embeddings counted
# once), for the estimate only; a model not here counts as 1e8, marked in the plan.
MODEL_PARAMETERS = {
    "models/smollm2": 134.5e6, "minilm": 22.7e6, "facebook/bart-large": 406e6, "facebook/mbart-large-cc25": 610e6,
    "FacebookAI/roberta-base": 125e6, "roberta-base": 125e6,
}
UNKNOWN_MODEL = 1e8
# Training examples of the paper's datasets (Hugging Face's xsum, wmt16 ro-en, glue mnli and sst2), for runs
# counted in epochs whose data is not limited in params.yaml.
REAL_TRAIN_EXAMPLES = {"summarization": 204_045, "translation": 610_320, "nli": 392_702, "sentiment": 67_349}
TRAINS_EVERY_WEIGHT = ("full",)


@dataclass(frozen=True)
class Unit:
    """One train stage and its evaluate stage: a task × run of the grid at all its seeds, or the experiment."""

    task: str
    run: str
    method: str
    seeds: int
    steps: int
    tokens_per_step: int
    parameters: float
    known_model: bool

    @property
    def cost(self) -> float:  # training FLOPs, all seeds
        per_token = 6 if self.method in TRAINS_EVERY_WEIGHT else 4
        return per_token * self.parameters * self.tokens_per_step * self.steps * self.seeds

    @property
    def stages(self) -> list[str]:
        if self.run == EXPERIMENT:
            return ["exp_train", "exp_evaluate"]
        kind = "generation" if get_task(self.task).kind == "seq2seq" else "classification"
        return [f"train_{kind}@{self.task}-{self.run}", f"evaluate_{kind}@{self.task}-{self.run}"]


def _unit(params: dict, record: dict) -> Unit:
    """A run's unit from its settings (run_settings: what its train stage depends on)."""
    first, settings = record["runs"][0], record["train"]
    task = first["task"]
    lengths = io.need(params, f"tokenize.{first['profile']}.{task}")
    per_example = lengths["source"] + (lengths.get("target") or 0)
    batch = settings.get("batch_size", 1) * settings.get("gradient_accumulation", 1)
    tokens = (settings["max_tokens_per_batch"] * settings.get("gradient_accumulation", 1)
              if settings.get("max_tokens_per_batch") else batch * per_example)
    steps = settings.get("steps")
    if steps is None:  # epochs: over the limited stand-in, or the paper's dataset
        examples = (lengths.get("limit") or {}).get("train") or REAL_TRAIN_EXAMPLES[task]
        steps = int(settings["epochs"] * examples / batch)
    model = first["model"]
    return Unit(task, first["name"], first["method"], len(record["runs"]), steps, tokens,
                MODEL_PARAMETERS.get(model, UNKNOWN_MODEL), model in MODEL_PARAMETERS)


def units(params: dict) -> list[Unit]:
    """Every train stage of the grid and the experiment's, with what its cost is estimated from."""
    grid = io.need(params, "grid")
    tasks = [task for kind in ("generation", "classification") for task in grid.get(kind) or []]
    names = [*([task, run] for task in tasks for run in grid["runs"]), [EXPERIMENT]]
    return [_unit(params, run_settings(params, name)) for name in names]


def deal(found: list[Unit], workers: int) -> list[list[Unit]]:
    """`workers` shards, costliest unit first onto the least loaded shard (ties: the first); deterministic."""
    if not isinstance(workers, int) or workers < 1:
        raise DataError(f"--workers: expected a positive integer, got {workers!r}")
    if workers > len(found):
        # an empty shard would be `dvc repro` with no targets: the whole grid on that worker
        raise DataError(f"--workers {workers}: the grid has {len(found)} train stages; use at most {len(found)}")
    shards: list[list[Unit]] = [[] for _ in range(workers)]
    loads = [0.0] * workers
    for unit in sorted(found, key=lambda u: (-u.cost, u.task, u.run)):
        lightest = loads.index(min(loads))
        shards[lightest].append(unit)
        loads[lightest] += unit.cost
    return shards


def plan(shards: list[list[Unit]]) -> str:
    """The plan as a Markdown table: each unit's shard, what its cost comes from, and each shard's share."""
    total = sum(u.cost for shard in shards for u in shard)
    lines = ["| shard | task | run | method | seeds | steps | tokens/step | parameters | TFLOP | share |",
             "|---:|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for index, shard in enumerate(shards):
        for u in shard:
            size = f"{u.parameters / 1e6:.1f}M" + ("" if u.known_model else " (assumed)")
            lines.append(f"| {index} | {u.task} | {u.run} | {u.method} | {u.seeds} | {u.steps:,} | "
                         f"{u.tokens_per_step:,} | {size} | {u.cost / 1e12:,.1f} | {u.cost / total:.1%} |")
    lines.append("")
    lines += [f"shard {i}: {len(s)} runs, {sum(u.cost for u in s) / total:.1%} of the grid's estimated compute"
              for i, s in enumerate(shards)]
    return "\n".join(lines)


def push(remote: str | None = None) -> int:
    """`dvc push --run-cache`, and the outputs of every run-cache entry, which it leaves behind where an output is
    declared `cache: false` (the metrics, curves and predictions, kept in git). DVC 3.67 pushes the run-cache
    entries and the cached outputs of dvc.lock, not those: run-cache keeps them in the local cache, and without
    them another machine's `dvc repro --pull` finds the entry, cannot restore it, and runs the stage again
    (measured with tests/test_cluster.py). DVC's own Repo.used_objs(used_run_cache=...) still collects them; this
    pushes what it collects. Returns the number of files sent."""
    from dvc.repo import Repo

    with Repo() as repo:
        sent = repo.push(run_cache=True, remote=remote)
        entries = [(path.parent.name, path.name) for path in Path(repo.stage_cache.cache_dir).glob("*/*/*")]
        used = repo.stage_cache.get_used_objs(entries, remote=remote)
        return sent + len(repo.cloud.push(set().union(*used.values()), remote=remote).transferred)


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m unipeft_bench.shards")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--index", type=int, help="the shard whose stage names to print (0 to workers-1)")
    parser.add_argument("--estimate", action="store_true", help="print the plan as a table")
    parser.add_argument("--grid", help="a grid of conf/grid/ (default: params.yaml's)")
    parser.add_argument("--push", action="store_true", help="push this workspace's runs and run-cache")
    parser.add_argument("--remote", help="the DVC remote to push to (default: the default remote)")
    args = parser.parse_args(argv)
    if not args.push and (args.workers is None or (args.index is None) == (not args.estimate)):
        parser.error("give --workers and one of --index or --estimate (or --push)")
    from dvc.exceptions import DvcException

    try:
        if args.push:
            print(f"{push(args.remote)} files pushed")
            return 0
        from .parts import composed_params

        shards = deal(units(composed_params(args.grid) if args.grid else io.params()), args.workers)
        if args.estimate:
            print(plan(shards))
        elif not 0 <= args.index < args.workers:
            raise DataError(f"--index {args.index}: expected 0 to {args.workers - 1}")
        else:
            print(" ".join(stage for unit in shards[args.index] for stage in unit.stages))
    except (DataError, DvcException) as err:  # e.g. no remote configured: DVC's own message, on one line
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
