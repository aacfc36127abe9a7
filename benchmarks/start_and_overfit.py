"""How far does each method move the pretrained model before training, and can it fit 16 examples?

    python benchmarks/start_and_overfit.py [--steps 40] [--runs mh_pa:attn_bn=5@1e-3 pa:ffn_bn=16@5e-3 ...]

Its output on this machine: benchmarks/results/start_and_overfit.txt.

On the packaged MiniLM with a sentiment head (data/tokenized/sentiment, 16 training snippets): the mean
per-token distance of the last hidden state from the frozen model's at initialisation (beside the norm of that
state), then AdamW on the same 16 examples: the loss and the gradient norm of the trainable parameters at the
start and after --steps. A method that can learn drives the loss towards 0; one whose Δh swamps the
representation stays at log 2 = 0.69 while its gradients vanish.
"""

from __future__ import annotations

import argparse

import torch
from datasets import load_from_disk
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import unipeft
from unipeft_bench.models import resolve

# The MH PA forms (docs/design-space.md, differences from the official code): the BART file's, the official
# mBART one with its PyTorch-default prefix MLP, and the same with P_v = 0 at the start; then methods that train,
# for reference.
DEFAULT_RUNS = ["mh_pa_bart:attn_bn=5@1e-3", "mh_pa:attn_bn=5@1e-3", "mh_pa:attn_bn=5@1e-2",
                "mh_pa_lora_init:attn_bn=5@1e-3", "mh_pa_lora_init:attn_bn=5@1e-2", "mh_pa_lora_init:attn_bn=30@1e-3",
                "pa:ffn_bn=16@5e-3", "prefix:attn_bn=5@1e-3"]


def parse(text: str) -> tuple[str, dict, float]:
    spec, _, rate = text.partition("@")
    method, _, sizes = spec.partition(":")
    return method, {k: int(v) for k, v in (pair.split("=") for pair in sizes.split(",") if pair)}, float(rate)


def gradient_norm(model) -> float:
    return float(torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="method[:attn_bn=N,ffn_bn=N]@rate")
    args = parser.parse_args()
    data = load_from_disk("data/tokenized/sentiment")["train"].select(range(16))
    tokenizer = AutoTokenizer.from_pretrained("data/tokenized/sentiment/tokenizer")
    batch = tokenizer.pad({"input_ids": data["input_ids"], "attention_mask": data["attention_mask"]},
                          return_tensors="pt")
    labels = torch.tensor(data["labels"])
    for text in args.runs:
        method, budget, rate = parse(text)
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(resolve("minilm"), num_labels=2).eval()
        with torch.no_grad():
            frozen = model.base_model(**batch).last_hidden_state
            unipeft.attach(model, method, **budget)
            moved = (model.base_model(**batch).last_hidden_state - frozen).norm(dim=-1).mean().item()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=rate, weight_decay=0)
        model.train()
        trace = []
        for step in range(args.steps + 1):
            loss = model(**batch, labels=labels).loss
            loss.backward()
            if step in (0, args.steps):
                trace.append((loss.item(), gradient_norm(model)))
            optimizer.step()
            optimizer.zero_grad()
        (loss0, grad0), (loss1, grad1) = trace
        print(f"{text:<28} Δh at init {moved:6.2f} (hidden-state norm {frozen.norm(dim=-1).mean():.2f})   "
              f"loss {loss0:.3f} → {loss1:.3f}   gradient norm {grad0:.3f} → {grad1:.3f}", flush=True)


if __name__ == "__main__":
    main()
