"""What a training step and an evaluation batch cost on this CPU, side by side in one run, under the choices
the offline profile makes: bf16 autocast and dropout off.

    python benchmarks/cpu_step_costs.py [--repeats 5]

Needs models/smollm2 (dvc repro llm_backbone). Prints seconds per step and each variant's ratio to fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import unipeft
from unipeft_bench.models import resolve


def timed(step, repeats: int) -> float:
    step()  # warm-up: first-shape allocations
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def precision(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def no_dropout(model) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def train_step(model, batch: dict, bf16: bool):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step():
        with precision(bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    torch.manual_seed(0)
    rows = []

    def measure(name: str, build, make_step) -> None:
        base = None
        for variant, bf16, dropout in (("fp32", False, True), ("bf16", True, True), ("fp32, no dropout", False, False),
                                       ("bf16, no dropout", True, False)):
            model = build()
            if not dropout:
                no_dropout(model)
            seconds = timed(make_step(model, bf16), repeats)
            base = base or seconds
            rows.append((name, variant, seconds, base / seconds))

    def peft(load, method, **budget):
        def build():
            model = load()
            unipeft.attach(model, method, **budget)
            return model
        return build

    smollm2 = lambda: AutoModelForCausalLM.from_pretrained("models/smollm2")  # noqa: E731
    prompt_and_summary = torch.randint(1000, 20000, (8, 112))
    summarization = {"input_ids": prompt_and_summary,
                     "labels": torch.cat([torch.full((8, 96), -100), prompt_and_summary[:, 96:]], dim=1)}
    measure("summarization LoRA r=8 step on SmolLM2 (bs 8, 96+16 tokens)", peft(smollm2, "lora", attn_bn=8),
            lambda m, bf16: train_step(m, summarization, bf16))
    classifier = lambda: AutoModelForSequenceClassification.from_pretrained(resolve("minilm"), num_labels=2)  # noqa
    sentiment = {"input_ids": torch.randint(1000, 20000, (16, 48)), "labels": torch.randint(0, 2, (16,))}
    measure("sentiment LoRA r=4 step (bs 16, 48 tokens)", peft(classifier, "lora", attn_bn=4),
            lambda m, bf16: train_step(m, sentiment, bf16))

    def classify(model, bf16):
        model.eval()
        inputs = torch.randint(1000, 20000, (128, 48))

        def step():
            with torch.no_grad(), precision(bf16):
                model(input_ids=inputs)
        return step
    measure("sentiment evaluation batch (128 × 48 tokens)", classifier, classify)

    def greedy(model, bf16):
        model.eval()
        inputs = torch.randint(1000, 20000, (50, 96))

        def step():
            with torch.no_grad(), precision(bf16):
                model.generate(input_ids=inputs, do_sample=False, min_new_tokens=24, max_new_tokens=24)
        return step
    measure("summarization greedy generation on SmolLM2 (50 × 96 tokens, 24 out)", smollm2, greedy)

    width = max(len(r[0]) for r in rows)
    for name, variant, seconds, ratio in rows:
        print(f"{name:<{width}}  {variant:<17} {seconds:7.3f} s   ×{ratio:.2f}")


if __name__ == "__main__":
    main()
