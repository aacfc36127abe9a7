"""Decoder-only causal language models in the pipeline: which models are, how they load, the completion-only loss,
the Trainer that trains and validates with it, and batched generation of completions.

Generation tasks on such a model are prompt → completion (src/unipeft_bench/prompts.py tokenizes them); a
classification task uses the model's `*ForSequenceClassification`, which reads the last non-pad token.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import DataError
from .prompts import IGNORE, PROMPT_FILE, prompt_length

# Families whose logits are exactly lm_head(last hidden state): the completion-only loss applies the head itself.
# Others (logit soft-capping, scaled logits: Gemma 2, Cohere, Granite, ...) compute the full-vocabulary loss
# through the model, which is the same loss, only slower.
HEAD_ONLY_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2"})


def is_decoder_only(config) -> bool:
    """A causal LM that is not an encoder-decoder, and not an encoder that transformers can also run as a decoder
    (BERT, RoBERTa: they map to a masked LM too)."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    model_type = getattr(config, "model_type", None)
    return (not getattr(config, "is_encoder_decoder", False) and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def prompt_settings(data_dir: Path) -> dict | None:
    """The prompt the tokenize stage wrote beside prompt → completion data; None for seq2seq data."""
    path = data_dir / PROMPT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def check_data_for_model(data_dir: Path, model_name: str, config, task_kind: str, where: str) -> bool:
    """Whether the run is prompt → completion on a decoder-only model, refused in one line where the tokenized data
    was made for the other kind of model; `where`: the task's tokenize settings, tokenize.<profile>.<task>."""
    prompted = prompt_settings(data_dir) is not None
    if task_kind != "seq2seq":
        return False
    if getattr(config, "is_encoder_decoder", False):
        if prompted:
            raise DataError(f"{data_dir}: tokenized as prompt → completion (params.yaml {where}.prompt) for a "
                            f"decoder-only model, but {model_name} is an encoder-decoder; remove the prompt")
        return False
    if not is_decoder_only(config):
        raise DataError(f"model {model_name}: a {config.model_type} model cannot generate; a generation task needs an "
                        "encoder-decoder or a decoder-only causal LM")
    if not prompted:
        raise DataError(f"{data_dir}: tokenized as source → target for an encoder-decoder, but {model_name} is "
                        f"decoder-only: set params.yaml {where}.prompt (and the model's tokenizer in "
                        f"{where.rsplit('.', 1)[0]}.tokenizer)")
    return True


def prepare_model(model, tokenizer, name: str, data_dir: Path) -> None:
    """A decoder-only model checked against the data's tokenizer and set up for its padding (use_pad_and_eos)."""
    check_vocabulary(model, tokenizer, name, data_dir)
    use_pad_and_eos(model, tokenizer)


def check_vocabulary(model, tokenizer, name: str, data_dir: Path) -> None:
    """Refused in one line where the data was tokenized with another vocabulary than the model's: the model
    directory's own tokenizer, where it has one, and in any case no more tokens than the model has embeddings."""
    fix = "tokenize the task with the model's tokenizer (params.yaml tokenize.<profile>.tokenizer)"
    embeddings = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > embeddings:
        raise DataError(f"{data_dir}/tokenizer has {len(tokenizer)} tokens, more than the model {name} has "
                        f"embeddings ({embeddings}): {fix}")
    if any((Path(name) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        from transformers import AutoTokenizer

        if AutoTokenizer.from_pretrained(name).get_vocab() != tokenizer.get_vocab():
            raise DataError(f"{data_dir}/tokenizer is not the tokenizer of {name}: {fix}")


def use_pad_and_eos(model, tokenizer) -> None:
    """Batches padded with the tokenizer's pad token (its EOS where it had none, as the tokenize stage sets it):
    the classifier finds each row's last real token by it (config.pad_token_id), and generation pads finished rows
    with it and stops at the tokenizer's EOS, which ends every trained completion, as well as at the model's."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        ends = generation.eos_token_id
        ends = [] if ends is None else [ends] if isinstance(ends, int) else list(ends)
        generation.eos_token_id = ends + [t for t in (tokenizer.eos_token_id,) if t is not None and t not in ends]
        generation.pad_token_id = tokenizer.pad_token_id


# ---- the loss -------------------------------------------------------------------------------------------------
def completion_loss(model, input_ids, attention_mask, labels, label_smoothing: float = 0.0,
                    num_items_in_batch=None):
    """The causal LM loss (position t predicts label t+1; -100 ignored), with the LM head applied only where a label
    is: over a vocabulary of 49K-152K the full head is a large part of a small model's step, and the prompt and
    padding positions it would cover have no loss (benchmarks/causal_lm_head.py). Equal to the model's own loss
    (mean over the labelled tokens; with num_items_in_batch, their sum over it, as Trainer's gradient accumulation
    wants) and, with label smoothing, to Trainer's LabelSmoother.

    The whole model still runs (logits_to_keep=1: the head on one position), not only its base, so that hooks on
    the model itself run as they would (unipeft opens a pass for its prefix vectors there); a hook on the base
    model keeps the last hidden state, as the head would have read it."""
    unwrapped = _unwrapped(model)
    if unwrapped.config.model_type not in HEAD_ONLY_FAMILIES:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return _cross_entropy(logits[:, :-1], labels[:, 1:], label_smoothing, num_items_in_batch)
    kept = {}

    def keep(module, args, output):
        kept["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = unwrapped.base_model.register_forward_hook(keep)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    targets = labels[:, 1:]
    rows, columns = (targets != IGNORE).nonzero(as_tuple=True)
    logits = unwrapped.get_output_embeddings()(kept["hidden"][rows, columns])
    return _cross_entropy(logits, targets[rows, columns], label_smoothing, num_items_in_batch)


def _cross_entropy(logits, targets, label_smoothing: float, num_items_in_batch):
    import torch.nn.functional as F

    logits, targets = logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)
    if num_items_in_batch is None:
        return F.cross_entropy(logits, targets, ignore_index=IGNORE, label_smoothing=label_smoothing)
    total = F.cross_entropy(logits, targets, ignore_index=IGNORE, label_smoothing=label_smoothing, reduction="sum")
    return total / num_items_in_batch


def _unwrapped(model):
    return model.module if hasattr(model, "module") else model  # DDP / DataParallel


# ---- training and validation ----------------------------------------------------------------------------------
def completion_trainer(trainer_class):
    """`trainer_class` (Trainer) whose loss is completion_loss and whose validation generates from each example's
    prompt (left-padded) and scores only the new tokens. Why not Seq2SeqTrainer: its predict_with_generate feeds the
    whole input (prompt and completion) to generate, which is right for an encoder's source only."""
    import torch

    class CompletionTrainer(trainer_class):
        def __init__(self, *args, validation_generation: dict | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.validation_generation = validation_generation or {}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # num_items_in_batch comes only where the Trainer counts on the loss being normalised by it (training
            # with label smoothing: training.resumable_trainer); the head runs under the model's autocast
            counted = num_items_in_batch if self.model_accepts_loss_kwargs else None
            with self.accelerator.autocast():
                loss = completion_loss(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
                                       self.args.label_smoothing_factor, counted)
            if self.args.average_tokens_across_devices and counted is not None:
                loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss: DDP averages the gradients
            return (loss, None) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad():
                loss = self.compute_loss(model, inputs).detach()
                if prediction_loss_only:
                    return loss, None, None
                new_tokens = generate_completions(self.model, self.processing_class, inputs["input_ids"].tolist(),
                                                  inputs["labels"].tolist(), **self.validation_generation)
            return loss, new_tokens, inputs["labels"]

    CompletionTrainer.__name__ = CompletionTrainer.__qualname__ = trainer_class.__name__
    return CompletionTrainer


def training_collator(tokenizer):
    """Right-padded batches (positions count from each row's first token, as the model's default position ids do),
    labels padded with -100: transformers' DataCollatorForSeq2Seq pads `labels` so, and without a model it builds
    no decoder inputs."""
    from transformers import DataCollatorForSeq2Seq

    tokenizer.padding_side = "right"
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE)


# ---- generation -----------------------------------------------------------------------------------------------
def generation_kwargs(generation: dict, prompt_width: int) -> dict:
    """The seq2seq decoding settings (params.yaml evaluate.*.generation, train.*.validation_generation) with the
    same meaning for a decoder-only model, whose generated sequence starts with the prompt: lengths count new
    tokens (max_length → max_new_tokens, min_length → min_new_tokens), and no_repeat_ngram_size looks at the new
    tokens only (transformers' would also ban every n-gram of the prompt, i.e. of the source: a summary could
    then copy no three words of its document)."""
    from transformers import LogitsProcessor, LogitsProcessorList, NoRepeatNGramLogitsProcessor

    class OnNewTokens(LogitsProcessor):
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, input_ids, scores):
            return self.inner(input_ids[:, prompt_width:], scores)

    kwargs = dict(generation)
    for old, new in (("max_length", "max_new_tokens"), ("min_length", "min_new_tokens")):
        if old in kwargs:
            kwargs[new] = kwargs.pop(old)
    ngram = kwargs.pop("no_repeat_ngram_size", None)
    kwargs["no_repeat_ngram_size"] = None  # not the model's own default either: it would see the prompt
    if ngram:
        kwargs["logits_processor"] = LogitsProcessorList([OnNewTokens(NoRepeatNGramLogitsProcessor(ngram))])
    return kwargs


def generate_completions(model, tokenizer, input_ids: list[list[int]], labels: list[list[int]], **generation):
    """The new tokens generated after each row's prompt (its tokens before the first label), the prompts of the
    batch left-padded so that every row continues from its last prompt token. A tensor (rows × longest, padded with
    the pad token)."""
    prompts = [ids[:prompt_length(row_labels)] for ids, row_labels in zip(input_ids, labels)]
    batch = tokenizer.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt").to(model.device)
    width = batch["input_ids"].shape[1]
    generated = model.generate(**batch, **generation_kwargs(generation, width))
    return generated[:, width:]


def generate(model, tokenizer, dataset, batch_size: int, **generation) -> list[str]:
    """Decoded completions for every row of a prompt → completion split, in order."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            rows = dataset[start:start + batch_size]
            new_tokens = generate_completions(model, tokenizer, rows["input_ids"], rows["labels"], **generation)
            out += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [text.strip() for text in out]
