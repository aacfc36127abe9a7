"""Can a model learn an offline stand-in task? One run trained and scored on test beside the task's trivial baseline.

    python benchmarks/stand_in_check.py translation --method full --steps 150 --rate 1e-4
    python benchmarks/stand_in_check.py summarization --method prefix --attn-bn 30 --steps 200 --rate 1e-3 \
        --set eval_examples=100

Trains with the train stage's own code and train.<profile>.<task> from params.yaml (steps and rate replaced),
evaluates with the evaluate stage's code and evaluate.<profile>.<task>, scores the trivial baseline
(src/unipeft_bench/baselines.py) on the same test examples, prints both and writes them to
benchmarks/results/stand_in_<task>_<method>_<steps>_steps_<rate>.json; what it trained is deleted. This is how SmolLM2 was
checked on translation before the pipeline took it as that task's offline model (docs/data-and-models.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))

from evaluate import evaluate  # noqa: E402
from train import train  # noqa: E402

from unipeft_bench import baselines, io  # noqa: E402
from unipeft_bench.grid_results import TASK_VIEWS  # noqa: E402
from unipeft_bench.models import offline_environment  # noqa: E402
from unipeft_bench.runs import Run, model_name  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task")
    parser.add_argument("--method", default="full")
    parser.add_argument("--attn-bn", type=int)
    parser.add_argument("--ffn-bn", type=int)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="train settings, YAML values")
    args = parser.parse_args()
    params = io.params()
    profile = params["profile"]
    if profile == "offline":
        offline_environment()
    budget = {k: v for k, v in (("attn_bn", args.attn_bn), ("ffn_bn", args.ffn_bn)) if v is not None}
    run = Run(args.task, f"check-{args.method}", args.method, budget, params["seed"],
              model_name(params, profile, args.task), profile)
    overrides = {key: yaml.safe_load(value) for key, _, value in (pair.partition("=") for pair in args.set)}
    settings = {**io.need(params, f"train.{profile}.{args.task}"), "steps": args.steps, **overrides,
                "learning_rate": args.rate, "learning_rate_by_method": {}, "learning_rate_by_run": {}}
    try:
        training = train(run, settings)
        report, _, _ = evaluate(run, io.need(params, f"evaluate.{profile}.{args.task}"))
    finally:
        shutil.rmtree(run.adapter_dir, ignore_errors=True)
        shutil.rmtree(run.live_dir, ignore_errors=True)
    primary = TASK_VIEWS[args.task].primary
    baseline = baselines.scores(args.task, Path("."))
    result = {"task": args.task, "model": run.model, "method": args.method, "budget": budget, "steps": args.steps,
              "learning_rate": args.rate, "settings": overrides, "seed": run.seed, "test_examples": report["evaluation"]["examples"],
              "scores": report["scores"], "baseline": {"name": baselines.NAMES[args.task], "scores": baseline},
              "training_seconds": training["seconds"], "evaluation_seconds": report["evaluation"]["seconds"]}
    out = Path("benchmarks/results") / f"stand_in_{args.task}_{args.method}_{args.steps}_steps_{args.rate:g}.json"
    io.write_json_atomic(out, result)
    print(f"{args.task} {args.method} after {args.steps} steps: {primary} {report['scores'][primary]:.2f}; "
          f"{baselines.NAMES[args.task]} baseline {baseline[primary]:.2f} ({result['test_examples']} test examples, "
          f"{training['seconds']:.0f} s training) -> {out}")
    print(json.dumps(result["scores"]))


if __name__ == "__main__":
    main()
