"""What torch.compile (inductor) gains or loses on this CPU for prefix methods, against eager mode.

    python benchmarks/compile_speed.py [--methods prefix mam] [--repeats 10] [--out PATH]

A random-weight BART (d=256, 3+3 layers, 4 heads, FFN 1024), a batch of 8 sources of 64 tokens and 8 targets of 24:
the seconds per training step (forward + backward) and per evaluation forward, eager and compiled, the compile time
(first call of each mode), the number of graphs dynamo made and whether anything recompiled in steady state.
Prints one line per method and mode and writes them as JSON (default benchmarks/results/compile_speed.json).
No downloads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch._dynamo.testing import CompileCounter
from transformers import BartConfig, BartForConditionalGeneration

import unipeft


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    config = BartConfig(vocab_size=1000, d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024,
                        max_position_embeddings=128, dropout=0.0, attention_dropout=0.0)
    return BartForConditionalGeneration(config)


def batch() -> dict:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(4, 1000, (8, 64), generator=g),
            "attention_mask": torch.ones(8, 64, dtype=torch.long),
            "labels": torch.randint(4, 1000, (8, 24), generator=g)}


def seconds(step) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def steps(model, inputs):
    def train():
        model.train()
        model(**inputs).loss.backward()

    def evaluate():
        model.eval()
        with torch.no_grad():
            model(**inputs)
    return {"train": train, "eval": evaluate}


def measure(method: str, repeats: int) -> list[dict]:
    inputs = batch()
    eager_model = build()
    unipeft.attach(eager_model, method, attn_bn=30)
    compiled_model = build()
    unipeft.attach(compiled_model, method, attn_bn=30)
    counter = CompileCounter()
    inductor = torch._dynamo.backends.registry.lookup_backend("inductor")
    compiled = torch.compile(compiled_model, backend=lambda gm, ex: (counter(gm, ex), inductor(gm, ex))[1])
    rows = []
    eager_steps, compiled_steps = steps(eager_model, inputs), steps(compiled, inputs)
    for mode in ("train", "eval"):
        seconds(eager_steps[mode])  # warm-up: first-shape allocations
        graphs_before = counter.frame_count
        first = seconds(compiled_steps[mode])
        graphs = counter.frame_count - graphs_before
        eager, fast = [], []
        with torch._dynamo.config.patch(error_on_recompile=True):  # steady state: raises if anything recompiles
            for _ in range(repeats):  # interleaved, so that load from other processes falls on both alike
                eager.append(seconds(eager_steps[mode]))
                fast.append(seconds(compiled_steps[mode]))
        eager, fast = statistics.median(eager), statistics.median(fast)
        rows.append({"method": method, "mode": mode, "eager_s": round(eager, 4), "compiled_s": round(fast, 4),
                     "speedup": round(eager / fast, 2), "first_compiled_call_s": round(first, 1), "graphs": graphs,
                     "recompiles_in_steady_state": 0})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["prefix", "mam"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "compile_speed.json")
    args = parser.parse_args()
    rows = []
    for method in args.methods:
        torch._dynamo.reset()
        for row in measure(method, args.repeats):
            rows.append(row)
            print(f"{row['method']:8s} {row['mode']:5s} eager {row['eager_s']:.4f} s  "
                  f"compiled {row['compiled_s']:.4f} s"
                  f"  speed-up x{row['speedup']:.2f}  (first compiled call {row['first_compiled_call_s']:.1f} s, "
                  f"{row['graphs']} graphs, no recompilation)", flush=True)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
