"""What the methods cost on a decoder-only model on this CPU, side by side in one run: a training step, generation
with the KV cache, and training memory, each against its baseline (full fine-tuning, the bare model).

    python benchmarks/decoder_only.py [--layers 4] [--batch 8] [--tokens 128] [--repeats 5] [--threads 2] \
        [--ffn-bn 512] [--attn-bn 30] [--loss all|completion] > benchmarks/results/decoder_only.txt

`--loss all`: language modelling on every position, the LM head over all of them (the model's own loss).
`--loss completion`: the pipeline's prompt → completion loss (src/unipeft_bench/causal_lm.py), the last
`--completion` tokens of each row labelled and the LM head run on them only.

A random-weight LlamaForCausalLM shaped like SmolLM2-135M (hidden 576, 9 heads, 3 key/value heads, FFN 1536,
vocabulary 49152, tied embeddings) but shallower, seed 0. No downloads. Prints seconds and ratios; the targets
(LoRA, PA, prefix ≤ 0.7× full per step; prefix, MH PA ≤ 1.15× bare in generate; LoRA ≤ 0.6× full in memory) are
printed beside the figures, not asserted: timings depend on the machine. Times are medians over interleaved
repeats, mins in parentheses; run it on an otherwise idle machine (2 threads on 2 busy cores inflate them 3-30x).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import unipeft
from unipeft.functions import PrefixVectors
from unipeft_bench.causal_lm import completion_loss

TRAINED = ("full", "lora", "pa", "prefix", "mh_pa", "mam")
GENERATED = ("bare", "prefix", "mh_pa", "lora")
TARGETS = {"lora": 0.7, "pa": 0.7, "prefix": 0.7}  # step time, ratio to full
GENERATE_TARGETS = {"prefix": 1.15, "mh_pa": 1.15}  # generate time, ratio to bare


def build(args, method: str | None):
    """The same weights for every variant (seed 0), so that only the method differs; `None` is the bare model."""
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
                         vocab_size=49152, num_hidden_layers=args.layers, tie_word_embeddings=True,
                         max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config)
    attachment = None
    if method is not None:
        budget = {"prefix": {"attn_bn": args.attn_bn}, "mh_pa": {"attn_bn": args.attn_bn},
                  "pa": {"ffn_bn": args.ffn_bn}}.get(method, {})
        attachment = unipeft.attach(model, method, **budget)
    return model, attachment


def batch(args) -> dict:
    ids = torch.randint(3, 49152, (args.batch, args.tokens), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()  # the loss shifts the labels: causal LM loss
    if args.loss == "completion":
        labels[:, :args.tokens - args.completion] = -100  # the prompt has no loss
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def train_step(model, inputs: dict, loss: str):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step():
        (model(**inputs).loss if loss == "all" else completion_loss(model, **inputs)).backward()
        optimizer.step()
        optimizer.zero_grad()
    return step


def interleaved(steps: dict, repeats: int) -> dict:
    """(median, min) seconds per variant, running A B C A B C ... so that load from other processes falls on all
    alike. Both are printed: other processes only ever add time, so a min far below the median shows a noisy run."""
    for step in steps.values():
        step()  # warm-up: first-shape allocations, optimizer state
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def memory_child(args) -> None:
    """Runs in its own process so that each variant's peak is its own. The peak is VmHWM, not ru_maxrss: a child
    started by subprocess (vfork + exec) inherits its parent's ru_maxrss, which here is larger than any child's.
    Writing 5 to clear_refs resets VmHWM to the current RSS, so the model's construction transients do not count."""
    model, _ = build(args, args.memory_child)
    step = train_step(model, batch(args), args.loss)
    built = rss_mb()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for _ in range(3):
        step()
    print(json.dumps({"built_mb": built, "peak_mb": rss_mb("VmHWM")}))


def count_computes(model, prompts: dict) -> int:
    """Calls of PrefixVectors.compute during one generate: 1 per vector set if the library's claim holds (not 1
    per new token)."""
    calls, original = [0], PrefixVectors.compute

    def counted(self):
        calls[0] += 1
        return original(self)
    PrefixVectors.compute = counted
    try:
        model.generate(**prompts, max_new_tokens=32, min_new_tokens=32, do_sample=False)
    finally:
        PrefixVectors.compute = original
    return calls[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ffn-bn", type=int, default=512)
    parser.add_argument("--attn-bn", type=int, default=30)
    parser.add_argument("--loss", choices=("all", "completion"), default="all")
    parser.add_argument("--completion", type=int, default=16, help="labelled tokens a row with --loss completion")
    parser.add_argument("--memory-child", choices=TRAINED, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args)
    print(f"torch {torch.__version__}, {args.threads} threads, Llama {args.layers} layers (SmolLM2-135M widths), "
          f"batch {args.batch}×{args.tokens}, {args.repeats} interleaved repeats, median; loss: "
          f"{'every position' if args.loss == 'all' else f'the last {args.completion} tokens of each row only'}",
          flush=True)

    # 1. Training step ------------------------------------------------------------------------------------------
    models = {m: build(args, m) for m in TRAINED}
    inputs = batch(args)
    seconds = interleaved({m: train_step(models[m][0], inputs, args.loss) for m in TRAINED}, args.repeats)
    print("\ntraining step (forward + backward + AdamW)  trainable  s/step median (min)  × full median (min)  target")
    for m in TRAINED:
        (median, least), full = seconds[m], seconds["full"]
        ratio = median / full[0]
        target = f"≤ {TARGETS[m]:.2f} {'met' if ratio <= TARGETS[m] else 'MISSED'}" if m in TARGETS else ""
        print(f"  {m:<38} {models[m][1].counts().trainable:>11,}  {median:8.3f} ({least:6.3f})  "
              f"{ratio:9.2f} ({least / full[1]:.2f})  {target}", flush=True)
    del models

    # 2. Generation with the KV cache ---------------------------------------------------------------------------
    prompts = {"input_ids": torch.randint(3, 49152, (4, 64), generator=torch.Generator().manual_seed(2))}
    prompts["attention_mask"] = torch.ones_like(prompts["input_ids"])
    generators = {m: build(args, None if m == "bare" else m)[0].eval() for m in GENERATED}

    def generate(model):
        return lambda: model.generate(**prompts, max_new_tokens=32, min_new_tokens=32, do_sample=False)
    with torch.no_grad():
        seconds = interleaved({m: generate(generators[m]) for m in GENERATED}, args.repeats)
    print("\ngenerate (4 prompts × 64 tokens, 32 new, greedy, KV cache)  s/call median (min)  × bare median (min)  "
          "target")
    for m in GENERATED:
        (median, least), bare = seconds[m], seconds["bare"]
        ratio = median / bare[0]
        target = f"≤ {GENERATE_TARGETS[m]:.2f} {'met' if ratio <= GENERATE_TARGETS[m] else 'MISSED'}" \
            if m in GENERATE_TARGETS else ""
        print(f"  {m:<51} {median:8.3f} ({least:6.3f})  {ratio:9.2f} ({least / bare[1]:.2f})  {target}", flush=True)
    for m in ("prefix", "mh_pa"):
        print(f"  PrefixVectors.compute calls during one generate ({m}, 32 new tokens): "
              f"{count_computes(generators[m], prompts)}")
    del generators

    # 3. Training memory, one process per variant --------------------------------------------------------------
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "memory_child"]
    print("\ntraining memory (peak RSS over 3 steps − RSS after build)     built MB  training MB  × full  target")
    full = None
    for m in ("full", "lora", "pa", "prefix"):
        out = subprocess.run([sys.executable, __file__, f"--memory-child={m}", *flags], check=True,
                             capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        training = row["peak_mb"] - row["built_mb"]
        full = full or training
        target = f"≤ 0.60 {'met' if training / full <= 0.6 else 'MISSED'}" if m == "lora" else ""
        print(f"  {m:<59} {row['built_mb']:8.0f}  {training:11.0f}  {training / full:6.2f}  {target}", flush=True)


if __name__ == "__main__":
    main()
