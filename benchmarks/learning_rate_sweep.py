"""Which learning rate suits a method at a budget? Short training runs, the best validation score of each.

    python benchmarks/learning_rate_sweep.py sentiment --steps 60 --rates 5e-3 2e-3 1e-3 \
        --runs lora:attn_bn=4 pa:ffn_bn=128 mam:attn_bn=30,ffn_bn=128
    python benchmarks/learning_rate_sweep.py sentiment --steps 300 --rates 3e-4 1e-4 --seeds 42 2 4 \
        --set eval_every=50 eval_examples=500 --runs mh_pa_lora_init:attn_bn=5

Trains each method × rate × seed with the train stage's own code and train.<profile>.<task> from params.yaml (the
steps and the rate replaced, validation halfway and at the end unless --set says otherwise), prints one line each
(with the best step's score: a run that collapsed to one class shows the majority class's share), and deletes
what it trained; with seeds_in_parallel (in the settings or --set) the seeds train at once. This is how the
offline grids' rates were chosen (docs/evidence.md); the scores are validation scores.
"""

from __future__ import annotations

import argparse
import shutil
import yaml
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))

from train import train  # noqa: E402

from unipeft_bench import io  # noqa: E402
from unipeft_bench.models import offline_environment  # noqa: E402
from unipeft_bench.runs import Run, each_run, model_name  # noqa: E402


def parse_run(text: str) -> tuple[str, dict]:
    method, _, sizes = text.partition(":")
    return method, {k: int(v) for k, v in (pair.split("=") for pair in sizes.split(",") if pair)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rates", type=float, nargs="+", required=True)
    parser.add_argument("--runs", nargs="+", required=True, help="method[:attn_bn=N,ffn_bn=N]")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: params.yaml's seed")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="train settings, YAML values")
    args = parser.parse_args()
    params = io.params()
    profile = params["profile"]
    if profile == "offline":
        offline_environment()
    base = dict(io.need(params, f"train.{profile}.{args.task}"))
    overrides = {key: yaml.safe_load(value) for key, _, value in (pair.partition("=") for pair in args.set)}
    for text in args.runs:
        method, budget = parse_run(text)
        for rate in args.rates:
            settings = {**base, "steps": args.steps, "eval_every": args.steps // 2, **overrides,
                        "learning_rate": rate, "learning_rate_by_method": {}, "learning_rate_by_run": {}}
            runs = [Run(args.task, f"sweep-{method}", method, budget, seed, model_name(params, profile, args.task),
                        profile) for seed in args.seeds or [params["seed"]]]
            for run, report in each_run(train, runs, settings, f"train.{profile}.{args.task}"):
                best = report["best_metric"]
                scores = run.live_dir / "plots" / "metrics" / "eval" / f"{best['name']}.tsv"
                curve = [line.split("\t")[1] for line in scores.read_text().split("\n")[1:] if line] \
                    if scores.is_file() else []
                print(f"{args.task} {text} lr={rate:g} seed={run.seed}: best {best['name']} {best['value']:.2f} "
                      f"at step {report['best_step']} of {report['steps']} ({report['seconds']:.0f} s); every "
                      f"{settings['eval_every']} steps: {' '.join(curve)}", flush=True)
                shutil.rmtree(run.adapter_dir)
                shutil.rmtree(run.live_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
