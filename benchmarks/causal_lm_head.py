"""What the LM head costs a decoder-only training step, and what computing it on the completion positions only saves
(src/unipeft_bench/causal_lm.py completion_loss, as the train stage does), side by side in one run.

    python benchmarks/causal_lm_head.py [--repeats 7] | tee benchmarks/results/causal_lm_head.txt

A tiny-but-wide Llama: SmolLM2's vocabulary (49,152) and tied embeddings, hidden 128, 4 heads (2 key/value), 2
layers, so that the head is as large a share of the step as in a small real model. Each step is a LoRA training
step (forward, backward, AdamW) of the pipeline's kind, on right-padded prompt → completion batches: the offline
summarization shape (12 rows, prompts of 40-64 tokens, completions of 6-24) and a translation-like one (8 rows,
prompts and completions of 64-96). Full vocabulary: the model's own loss (logits at every position). Completion
only: the head on the labelled positions. Both in fp32 and under bf16 autocast (the offline profile's). Each way
runs its repeats in a block after one warm-up step (interleaving single steps let one way's large frees and
allocations slow the other), in two rounds, A B then B A; each row is the median of the 2 × repeats steps. The two
losses are printed to show they agree.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import unipeft
from unipeft_bench.causal_lm import completion_loss

VOCAB, HIDDEN = 49_152, 128


def tiny_wide_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=4,
                                         num_key_value_heads=2, num_hidden_layers=2, intermediate_size=4 * HIDDEN,
                                         max_position_embeddings=512, tie_word_embeddings=True))
    unipeft.attach(model, "lora", attn_bn=8)
    return model.train()


def batch(rows: int, prompt: tuple[int, int], completion: tuple[int, int], seed: int) -> dict:
    """Right-padded rows of random tokens: labels -100 on the prompt and the padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = [(int(torch.randint(prompt[0], prompt[1] + 1, (), generator=g)),
                int(torch.randint(completion[0], completion[1] + 1, (), generator=g))) for _ in range(rows)]
    width = max(p + c for p, c in lengths)
    ids = torch.zeros(rows, width, dtype=torch.long)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for i, (p, c) in enumerate(lengths):
        ids[i, :p + c] = torch.randint(3, VOCAB, (p + c,), generator=g)
        mask[i, :p + c] = 1
        labels[i, p:p + c] = ids[i, p:p + c]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def full_vocabulary(model, b):
    return model(**b, use_cache=False).loss


def completion_only(model, b):
    return completion_loss(model, b["input_ids"], b["attention_mask"], b["labels"])


def step_time(model, optimizer, loss_of, b, bf16: bool) -> tuple[float, float]:
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        loss = loss_of(model, b)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - started, loss.item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    repeats = parser.parse_args().repeats
    shapes = {"summarization (12 rows, prompt 40-64, completion 6-24)": (12, (40, 64), (6, 24)),
              "translation (8 rows, prompt 64-96, completion 64-96)": (8, (64, 96), (64, 96))}
    ways = {"full vocabulary": full_vocabulary, "completion only": completion_only}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}; Llama vocab {VOCAB}, "
          f"hidden {HIDDEN}, 2 layers, tied embeddings, LoRA r=8; 2 rounds of {repeats} steps, median seconds/step")
    print(f"{'batch':<56} {'precision':<9} {'full vocabulary':>15} {'completion only':>15} {'ratio':>6} "
          f"{'labelled':>8}  losses (full, completion only)")
    for name, (rows, prompt, completion) in shapes.items():
        b = batch(rows, prompt, completion, seed=0)
        labelled = (b["labels"][:, 1:] != -100).sum().item() / b["labels"][:, 1:].numel()
        for bf16 in (False, True):
            model = tiny_wide_llama()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)  # same weights
            times, losses = {way: [] for way in ways}, {}
            for order in (list(ways), list(ways)[::-1]):  # A B, then B A: drift in the machine's speed evens out
                for way in order:
                    losses[way] = step_time(model, optimizer, ways[way], b, bf16)[1]  # warm-up: first allocations
                    times[way] += [step_time(model, optimizer, ways[way], b, bf16)[0] for _ in range(repeats)]
            full, ours = (statistics.median(times[way]) for way in ways)
            print(f"{name:<56} {'bf16' if bf16 else 'fp32':<9} {full:>15.4f} {ours:>15.4f} {full / ours:>5.2f}x "
                  f"{labelled:>8.0%}  {losses['full vocabulary']:.6f}, {losses['completion only']:.6f}")


if __name__ == "__main__":
    main()
