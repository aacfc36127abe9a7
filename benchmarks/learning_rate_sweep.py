"""Which learning rate suits a method at a budget? Short training runs, the best validation score of each.

    python benchmarks/learning_rate_sweep.py sentiment --steps 60 --rates 5e-3 2e-3 1e-3 \
        --runs lora:attn_bn=4 pa:ffn_bn=128 mam:attn_bn=30,ffn_bn=128

Trains each method × rate with the train stage's own code and train.<profile>.<task> from params.yaml (only the
steps and the rate replaced, validation halfway and at the end), prints one line each, and deletes what it
trained. This is how the offline grid's per-method rates were chosen (README); the scores are validation scores.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))

from train import train  # noqa: E402

from unipeft_bench import io  # noqa: E402
from unipeft_bench.models import offline_environment  # noqa: E402
from unipeft_bench.runs import Run, model_name  # noqa: E402


def parse_run(text: str) -> tuple[str, dict]:
    method, _, sizes = text.partition(":")
    return method, {k: int(v) for k, v in (pair.split("=") for pair in sizes.split(",") if pair)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rates", type=float, nargs="+", required=True)
    parser.add_argument("--runs", nargs="+", required=True, help="method[:attn_bn=N,ffn_bn=N]")
    args = parser.parse_args()
    params = io.params()
    profile = params["profile"]
    if profile == "offline":
        offline_environment()
    base = dict(io.need(params, f"train.{profile}.{args.task}"))
    for text in args.runs:
        method, budget = parse_run(text)
        for rate in args.rates:
            settings = {**base, "steps": args.steps, "eval_every": args.steps // 2, "learning_rate": rate,
                        "learning_rate_by_method": {}, "learning_rate_by_run": {}}
            run = Run(args.task, f"sweep-{method}", method, budget, params["seed"],
                      model_name(params, profile, args.task), profile)
            report = train(run, settings)
            best = report["best_metric"]
            print(f"{args.task} {text} lr={rate:g}: best {best['name']} {best['value']:.2f} "
                  f"at step {report['best_step']} ({report['seconds']:.0f} s)", flush=True)
            shutil.rmtree(run.adapter_dir)
            shutil.rmtree(run.live_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
