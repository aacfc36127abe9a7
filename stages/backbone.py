"""DVC stage `backbone`: the offline seq2seq model, since no pretrained encoder-decoder installs from a registry.

    python stages/backbone.py

transformers' EncoderDecoderModel is warm-started from the packaged MiniLM: all six layers as the encoder,
the first `decoder_layers` as the decoder, each cross-attention copied from its layer's self-attention and the
LM-head transform set to the identity. It is then pretrained as a denoising autoencoder (BART's text
infilling) on the *training* texts of the offline seq2seq tasks, so that its cross-attention is trained before
any PEFT method sees it. Writes models/backbone/ and its loss curves (DVCLive) under
metrics/backbone/. In the real profile it builds nothing and says so in models/backbone/UNUSED.md.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

from unipeft_bench import io
from unipeft_bench.denoising import InfillingCollator
from unipeft_bench.errors import DataError
from unipeft_bench.models import offline_environment, resolve


def texts(tasks: list[str], split: str, limit: int, seed: int) -> list[dict]:
    """Sources and targets of the tasks' split (both languages for translation), shuffled, at most `limit`."""
    pool = [r[field] for task in tasks for r in io.read_jsonl(Path("data") / task / f"{split}.jsonl")
            for field in ("source", "target")]
    random.Random(seed).shuffle(pool)
    return [{"text": t} for t in pool[:limit]]


def build(p: dict, encoder: str):
    """MiniLM on both sides of an EncoderDecoderModel, before any denoising."""
    import torch
    from transformers import AutoTokenizer, EncoderDecoderModel

    tokenizer = AutoTokenizer.from_pretrained(encoder)
    # A deep encoder and a shallow decoder (Kasai et al. 2021): the decoder takes MiniLM's first layers, which
    # halves the cost of a training step and makes beam search several times faster on a CPU.
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(encoder, encoder,
                                                               decoder_num_hidden_layers=p["decoder_layers"])
    # transformers 5 generates only with these ids in both configs.
    for key, value in (("decoder_start_token_id", tokenizer.cls_token_id), ("pad_token_id", tokenizer.pad_token_id),
                       ("eos_token_id", tokenizer.sep_token_id)):
        setattr(model.config, key, value)
        setattr(model.generation_config, key, value)
    if p["cross_attention_init"] == "self_attention":
        for layer in model.decoder.bert.encoder.layer:  # start each cross-attention as its layer's self-attention
            layer.crossattention.load_state_dict(layer.attention.state_dict())
    with torch.no_grad():  # the LM-head transform starts as the identity, so outputs begin near their embedding
        transform = model.decoder.cls.predictions.transform
        transform.dense.weight.copy_(torch.eye(transform.dense.weight.shape[0]))
        transform.dense.bias.zero_()
    return model, tokenizer


def optimizer_and_schedule(model, p: dict):
    """AdamW with a larger learning rate for the parts that start untrained (cross-attention, LM-head transform):
    with one rate for all, the decoder learns to read the encoder several times more slowly."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    new = [q for n, q in model.named_parameters() if "crossattention" in n or "predictions.transform" in n]
    fresh = {id(q) for q in new}
    pretrained = [q for q in model.parameters() if id(q) not in fresh]
    optimizer = torch.optim.AdamW([{"params": new, "lr": p["learning_rate_new"]},
                                   {"params": pretrained, "lr": p["learning_rate"]}], weight_decay=0.01)
    return optimizer, get_linear_schedule_with_warmup(optimizer, p["warmup_steps"], p["steps"])


def main() -> int:
    offline_environment()
    try:
        params = io.params()
        if io.need(params, "profile") == "real":  # the paper's models are pretrained; nothing to build
            with io.atomic_directory("models/backbone") as staging:
                (staging / "UNUSED.md").write_text("The real profile uses the paper's pretrained models "
                                                   "(params.yaml models.real); this offline backbone is not built.\n")
            return 0
        p = io.need(params, "backbone")
        train, validation = (texts(p["tasks"], s, n, p["seed"]) for s, n in (("train", p["texts"]),
                                                                             ("validation", p["eval_texts"])))
        encoder = resolve(p["encoder"])
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    import torch
    from dvclive import Live
    from transformers import Trainer, TrainingArguments, set_seed
    from transformers.integrations import DVCLiveCallback

    set_seed(p["seed"])
    model, tokenizer = build(p, encoder)
    for module in model.modules():  # for this training only: the saved config keeps MiniLM's dropout
        if isinstance(module, torch.nn.Dropout):
            module.p = p["dropout"]
    collator = InfillingCollator(tokenizer, p["max_length"], p["seed"], p["mask_ratio"], p["poisson_lambda"])
    with tempfile.TemporaryDirectory() as scratch, Live("metrics/backbone", dvcyaml=None, save_dvc_exp=False) as live:
        args = TrainingArguments(
            output_dir=scratch, max_steps=p["steps"], per_device_train_batch_size=p["batch_size"],
            per_device_eval_batch_size=p["batch_size"], max_grad_norm=1.0, logging_steps=p["log_every"],
            eval_strategy="steps", eval_steps=p["eval_every"], save_strategy="no", report_to="none",
            seed=p["seed"], remove_unused_columns=False, dataloader_num_workers=0,
            bf16=p["bf16"], use_cpu=p["bf16"] and not torch.cuda.is_available())  # Trainer's condition for CPU bf16
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                          data_collator=collator, callbacks=[DVCLiveCallback(live=live)],
                          optimizers=optimizer_and_schedule(model, p))
        trainer.train()
    with io.atomic_directory("models/backbone") as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return 0


if __name__ == "__main__":
    sys.exit(main())
