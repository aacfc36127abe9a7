"""Does the offline backbone earn its place? Full fine-tuning against the trivial baselines.

    python benchmarks/backbone_vs_baselines.py summarization --steps 800 --learning-rate 3e-4 --test 200
    python benchmarks/backbone_vs_baselines.py translation --steps 300 --learning-rate 3e-4 --test 200

Fine-tunes every parameter of models/backbone on the tokenized training split (HF Seq2SeqTrainer), decodes the
test split with beam search, and prints the task's score beside the baseline's on the same examples: the
document's first sentence (ROUGE) for summarization, the untranslated source (BLEU) for translation.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from datasets import load_from_disk
from transformers import (AutoTokenizer, DataCollatorForSeq2Seq, EncoderDecoderModel, Seq2SeqTrainer,
                          Seq2SeqTrainingArguments, set_seed)

from unipeft_bench.generation import generate
from unipeft_bench.metrics import bleu, lead_sentence, rouge
from unipeft_bench.models import offline_environment


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=["summarization", "translation"])
    parser.add_argument("--model", default="models/backbone")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--test", type=int, default=200, help="test examples to decode")
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--out", help="also write the result as JSON to this file")
    args = parser.parse_args()
    offline_environment()
    set_seed(0)
    data = load_from_disk(f"data/tokenized/{args.task}")
    tokenizer = AutoTokenizer.from_pretrained(f"data/tokenized/{args.task}/tokenizer")
    model = EncoderDecoderModel.from_pretrained(args.model)
    columns = ["input_ids", "attention_mask", "labels"]
    started = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Seq2SeqTrainer(
            model=model, train_dataset=data["train"].select_columns(columns),
            data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
            args=Seq2SeqTrainingArguments(output_dir=scratch, max_steps=args.steps, learning_rate=args.learning_rate,
                                          per_device_train_batch_size=args.batch_size, warmup_steps=args.steps // 20,
                                          label_smoothing_factor=0.1, weight_decay=0.01, logging_steps=25,
                                          save_strategy="no", report_to="none", seed=0))
        trainer.train()
    train_seconds = time.time() - started
    test = data["test"].select(range(min(args.test, len(data["test"]))))
    no_repeat = 3 if args.task == "summarization" else 0  # the paper blocks repeated trigrams for XSum only
    predictions = generate(model, tokenizer, test, num_beams=args.beams, max_new_tokens=64,
                           no_repeat_ngram_size=no_repeat)
    references = test["target"]
    if args.task == "summarization":
        model_score = rouge(predictions, references)
        baseline = rouge([lead_sentence(s) for s in test["source"]], references)
        baseline_name = "first sentence of the document"
    else:
        model_score, baseline = bleu(predictions, references), bleu(list(test["source"]), references)
        baseline_name = "copy of the source"
    result = {"task": args.task, "model": args.model, "steps": args.steps, "learning_rate": args.learning_rate,
              "train_seconds": round(train_seconds), "test_examples": len(test), "full_fine_tuning": model_score,
              "baseline": baseline_name, "baseline_score": baseline,
              "examples": [{"prediction": p, "reference": r} for p, r in zip(predictions[:3], references[:3])]}
    text = json.dumps(result, indent=1, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
