"""Decoder-only causal LMs in the pipeline: prompt → completion tokenization, the completion-only loss, left-padded
generation, and a tiny train + evaluate of a Llama on the fixture data, for generation and classification.

The tokenizer is a byte-level BPE trained here on the fixture words (no download), GPT-2 style: an EOS, no pad token;
one variant also starts every text with a BOS (as Llama's), one has a ChatML chat template (as SmolLM2-Instruct's).
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

import data_fixtures as fx
import unipeft
from unipeft_bench import causal_lm, prompts
from unipeft_bench.errors import DataError

VOCAB = 320
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PROMPT = "Describe this Debian package in one line.\n{source}\nSynopsis:"


def build_tokenizer(bos: bool = False, chat: bool = False, vocab: int = VOCAB) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [f"{fx._words(i, 20)} tool number {i}. Synopsis: Describe this Debian package" for i in range(200)]
    tokenizer.train_from_iterator(texts, trainer)
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(single="<|begin|> $A", pair="<|begin|> $A $B",
                                                                 special_tokens=[("<|begin|>", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>" if chat else "<|endoftext|>",
                                   **({"bos_token": "<|begin|>"} if bos else {}))
    if chat:
        fast.chat_template = CHATML
    return fast


def tiny(cls=LlamaForCausalLM, **extra):
    """A random Llama (hidden 32, 4 heads, 2 key/value heads, 2 layers) over the test tokenizer's vocabulary."""
    torch.manual_seed(0)
    config_class = {LlamaForCausalLM: LlamaConfig, LlamaForSequenceClassification: LlamaConfig,
                    Qwen2ForCausalLM: Qwen2Config}.get(cls)
    if cls is GPT2LMHeadModel:
        return cls(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256, bos_token_id=0,
                              eos_token_id=0)).eval()
    return cls(config_class(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                            num_hidden_layers=2, intermediate_size=64, max_position_embeddings=256,
                            tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, **extra)).eval()


RECORDS = [{"id": str(i), "source": f"{fx._words(i, 4 + 3 * i)} {i}", "target": f"tool number {i}"}
           for i in range(6)]
SETTINGS = {"prompt": PROMPT, "chat_template": False}


def encoded(tokenizer, settings=SETTINGS, source=64, target=16):
    rows, _ = prompts.encode(tokenizer, RECORDS, settings, source, target, "tokenize.offline.summarization")
    return rows


# ---- prompt formatting and loss masking ------------------------------------------------------------------------
@pytest.mark.parametrize("bos", [False, True])
def test_a_row_is_the_prompt_then_the_target_and_eos_with_labels_on_the_completion_only(bos):
    tokenizer = build_tokenizer(bos=bos)
    rows = encoded(tokenizer)
    for record, ids, labels in zip(RECORDS, rows["input_ids"], rows["labels"]):
        start = prompts.prompt_length(labels)
        assert labels[:start] == [-100] * start and -100 not in labels[start:]
        assert labels[start:] == ids[start:] and ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[:start]) == ("<|begin|>" if bos else "") + PROMPT.format(source=record["source"])
        assert tokenizer.decode(ids[start:-1]) == record["target"]
        assert ids[:start] == tokenizer(PROMPT.format(source=record["source"]))["input_ids"]  # as one string
    assert rows["attention_mask"] == [[1] * len(ids) for ids in rows["input_ids"]]


def test_the_source_limit_cuts_the_source_inside_the_prompt_and_never_the_completion():
    tokenizer = build_tokenizer()
    long = {"id": "x", "source": fx._words(0, 60), "target": "a synopsis of it"}
    rows, stats = prompts.encode(tokenizer, [long], SETTINGS, 8, 16, "w")
    start = prompts.prompt_length(rows["labels"][0])
    prompt = tokenizer.decode(rows["input_ids"][0][:start])
    cut = prompt.removeprefix(PROMPT.split("{source}")[0]).removesuffix(PROMPT.split("{source}")[1])
    assert long["source"].startswith(cut) and len(tokenizer(cut)["input_ids"]) == 8
    assert tokenizer.decode(rows["input_ids"][0][start:]) == "a synopsis of it<|endoftext|>"
    assert stats["source"]["truncated"] == 1.0
    rows, _ = prompts.encode(tokenizer, [long], SETTINGS, 8, 3, "w")  # the target limit: 2 tokens and EOS
    assert len(rows["input_ids"][0]) - prompts.prompt_length(rows["labels"][0]) == 3
    assert rows["input_ids"][0][-1] == tokenizer.eos_token_id


def test_a_chat_template_wraps_the_prompt_as_the_users_turn_and_the_completion_ends_the_assistants():
    tokenizer = build_tokenizer(chat=True)
    rows = encoded(tokenizer, {"prompt": PROMPT, "chat_template": True})
    start = prompts.prompt_length(rows["labels"][0])
    assert tokenizer.decode(rows["input_ids"][0][:start]) == (
        f"<|im_start|>user\n{PROMPT.format(source=RECORDS[0]['source'])}<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(rows["input_ids"][0][start:]) == "tool number 0<|im_end|>"
    with pytest.raises(DataError, match=r"^params.yaml w.chat_template: true, but the tokenizer has no chat"):
        prompts.encode(build_tokenizer(), RECORDS, {"prompt": PROMPT, "chat_template": True}, 8, 8, "w")


def test_training_batches_pad_on_the_right_with_eos_and_label_padding_is_ignored():
    tokenizer = build_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token  # as the tokenize stage sets it for a tokenizer without one
    rows = encoded(tokenizer)
    batch = causal_lm.training_collator(tokenizer)([{k: rows[k][i] for k in ("input_ids", "attention_mask",
                                                                             "labels")} for i in range(3)])
    for i in range(3):
        n, start = len(rows["input_ids"][i]), prompts.prompt_length(rows["labels"][i])
        assert batch["input_ids"][i, :n].tolist() == rows["input_ids"][i]
        assert (batch["input_ids"][i, n:] == tokenizer.eos_token_id).all() and not batch["attention_mask"][i, n:].any()
        assert (batch["labels"][i, :start] == -100).all() and (batch["labels"][i, n:] == -100).all()
        assert (batch["labels"][i, start:n] != -100).all()


# ---- the completion-only LM head --------------------------------------------------------------------------------
def _batch(tokenizer):
    tokenizer.pad_token = tokenizer.eos_token
    rows = encoded(tokenizer)
    return causal_lm.training_collator(tokenizer)([{k: rows[k][i] for k in ("input_ids", "attention_mask", "labels")}
                                                   for i in range(len(RECORDS))])


@pytest.mark.parametrize("cls", [LlamaForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel])
def test_the_completion_only_loss_equals_the_full_head_loss(cls):
    model, batch = tiny(cls), _batch(build_tokenizer())
    full = model(**batch).loss
    ours = causal_lm.completion_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-6)
    tokens = (batch["labels"][:, 1:] != -100).sum()  # Trainer's count for gradient accumulation
    summed = causal_lm.completion_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                       num_items_in_batch=tokens)
    torch.testing.assert_close(summed, model(**batch, num_items_in_batch=tokens).loss, rtol=1e-5, atol=1e-6)


def test_a_family_outside_the_head_only_list_takes_the_full_head_loss(monkeypatch):
    monkeypatch.setattr(causal_lm, "HEAD_ONLY_FAMILIES", frozenset())
    model, batch = tiny(), _batch(build_tokenizer())
    ours = causal_lm.completion_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"], 0.0,
                                     num_items_in_batch=7)
    torch.testing.assert_close(ours, model(**batch, num_items_in_batch=7).loss, rtol=1e-5, atol=1e-6)


def test_the_completion_only_loss_with_label_smoothing_equals_trainers_label_smoother():
    from transformers.trainer_pt_utils import LabelSmoother

    model, batch = tiny(), _batch(build_tokenizer())
    labels = batch.pop("labels")
    expected = LabelSmoother(epsilon=0.1)(model(**batch), labels, shift_labels=True)
    ours = causal_lm.completion_loss(model, batch["input_ids"], batch["attention_mask"], labels, 0.1)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "prefix", "prompt", "pa"])
def test_the_completion_only_loss_equals_the_full_head_loss_with_a_method_attached(method):
    """The hooks a method puts on the model and its base run as in a plain forward (prompt tuning's vectors
    are dropped again before the head; prefix vectors are computed for the pass)."""
    import unipeft

    model, batch = tiny(), _batch(build_tokenizer())
    attachment = unipeft.attach(model, method, **{"lora": {"attn_bn": 4}, "prefix": {"attn_bn": 3},
                                                  "prompt": {"attn_bn": 3}, "pa": {"ffn_bn": 8}}[method])
    for p in attachment.container.parameters():  # away from the identity at the start
        p.data.normal_(0, 0.2)
    full = model(**batch).loss
    ours = causal_lm.completion_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-6)
    ours.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# ---- generation -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("generation", [{"max_length": 6}, {"num_beams": 3, "max_length": 5, "min_length": 2}])
def test_left_padded_batched_generation_equals_generating_one_by_one(generation):
    tokenizer = build_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    model, rows = tiny(initializer_range=0.2), encoded(tokenizer)
    causal_lm.use_pad_and_eos(model, tokenizer)
    batched = causal_lm.generate_completions(model, tokenizer, rows["input_ids"], rows["labels"], **generation)
    assert len({prompts.prompt_length(labels) for labels in rows["labels"]}) > 1  # the batch is padded
    for i, (ids, labels) in enumerate(zip(rows["input_ids"], rows["labels"])):
        [alone] = causal_lm.generate_completions(model, tokenizer, [ids], [labels], **generation).tolist()
        row = batched[i].tolist()
        assert row[:len(alone)] == alone and set(row[len(alone):]) <= {tokenizer.pad_token_id}
        assert len(alone) <= generation["max_length"]


def test_no_repeat_ngram_size_looks_at_the_new_tokens_only():
    """A summary may copy three words of its document; it may not repeat three of its own."""
    scores = torch.zeros(1, 10)
    kwargs = causal_lm.generation_kwargs({"no_repeat_ngram_size": 3, "max_length": 9}, prompt_width=3)
    [processor] = kwargs["logits_processor"]
    assert kwargs["max_new_tokens"] == 9 and kwargs["no_repeat_ngram_size"] is None
    assert processor(torch.tensor([[4, 5, 6, 4, 5]]), scores.clone())[0, 6] == 0  # 4 5 6 is the prompt's
    assert processor(torch.tensor([[1, 2, 3, 4, 5, 6, 4, 5]]), scores.clone())[0, 6] == float("-inf")


# ---- the pipeline: tokenize, train, evaluate ---------------------------------------------------------------------
def save_model(path, cls=LlamaForCausalLM, bos=False, vocab=VOCAB):
    model, tokenizer = tiny(cls), build_tokenizer(bos=bos, vocab=vocab)
    model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = model.config.bos_token_id, \
        model.config.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def project(tmp_path, monkeypatch):
    from prepare import prepare
    from test_data import PARAMS as DATA_PARAMS

    fx.offline_assets(tmp_path / "assets")
    for task in ("summarization", "sentiment"):
        prepare(task, DATA_PARAMS, tmp_path)
    monkeypatch.chdir(tmp_path)
    save_model(tmp_path / "models" / "llama", bos=True)
    return tmp_path


def tokenize_for_llama(task: str, **options):
    from tokenize_splits import tokenize

    limits = {"limit": {"train": 24, "validation": 8, "test": 6}}
    task_options = {"source": 24, "target": 12, **limits, **options} if task == "summarization" else \
        {"source": 24, **limits}
    return tokenize(task, {"profile": "offline", "tokenize": {"offline": {
        "tokenizer": {task: "models/llama"}, task: task_options}}})


TRAIN = {"steps": 4, "batch_size": 4, "eval_batch_size": 4, "eval_every": 2, "eval_examples": 4, "learning_rate": 1e-3,
         "warmup": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "log_every": 1,
         "model_config": {"attention_dropout": 0.0}}


@pytest.mark.parametrize("method, budget, label_smoothing", [("lora", {"attn_bn": 4}, 0.1),
                                                             ("prefix", {"attn_bn": 3}, 0.0)])
def test_a_decoder_only_run_trains_and_evaluates_prompt_to_completion(project, method, budget, label_smoothing):
    from evaluate import evaluate_and_save
    from train import train
    from unipeft_bench.runs import Run

    report = tokenize_for_llama("summarization", prompt=PROMPT)
    assert json.loads((project / "data/tokenized/summarization/prompt.json").read_text()) == SETTINGS
    assert report["train"]["source"]["p50"] > 0 and 0 <= report["train"]["labels"]["truncated"] <= 1
    run = Run("summarization", f"{method}-small", method, budget, seed=3, model="models/llama")
    settings = {**TRAIN, "select": "rouge2", "label_smoothing": label_smoothing, "eval_batch_size": 2,
                "validation_generation": {"num_beams": 1, "max_length": 6}}
    trained = train(run, settings)
    assert trained["steps"] == 4 and trained["best_metric"]["name"] == "rouge2"
    assert trained["inputs"].startswith("prompt → completion")
    scores = evaluate_and_save(run, {"batch_size": 4, "generation": {"num_beams": 2, "max_length": 6,
                                                                     "no_repeat_ngram_size": 3}})
    assert set(scores) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    metrics = json.loads(run.metrics_path.read_text())
    assert metrics["evaluation"]["examples"] == 6 and 0 < metrics["params"]["paper"] < metrics["params"]["base_params"]
    predictions = [json.loads(line) for line in run.predictions_path.read_text().splitlines()]
    assert len(predictions) == 6 and not any("Synopsis:" in p["prediction"] for p in predictions)  # new tokens only


@pytest.mark.parametrize("method", sorted(unipeft.preset_names()))
def test_every_preset_trains_and_generates_prompt_to_completion(project, method):
    """What `dvc exp run -S method=<preset> -S task=summarization` does offline on SmolLM2, on a tiny Llama: every
    preset trains and generates through the stages' own functions; BitFit, with no bias to train, is refused in
    one line."""
    from evaluate import evaluate_and_save
    from train import train
    from unipeft_bench.runs import Run

    tokenize_for_llama("summarization", prompt=PROMPT)
    budget = unipeft.preset(method).applicable_budget({"attn_bn": 3, "ffn_bn": 4})
    run = Run("summarization", f"{method}-tiny", method, budget, seed=3, model="models/llama")
    settings = {**TRAIN, "steps": 2, "eval_every": 2, "select": "rouge2", "eval_batch_size": 2,
                "validation_generation": {"num_beams": 1, "max_length": 4}}
    if method == "bitfit":
        with pytest.raises(DataError, match="^method 'bitfit'.unfreeze: llama has no bias parameters to train$"):
            train(run, settings)
        return
    assert train(run, settings)["steps"] == 2
    scores = evaluate_and_save(run, {"batch_size": 3, "generation": {"num_beams": 1, "max_length": 4}})
    assert set(scores) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert len(run.predictions_path.read_text().splitlines()) == 6


def test_a_decoder_only_classifier_trains_and_evaluates(project):
    from evaluate import evaluate_and_save
    from train import train
    from unipeft_bench.runs import Run

    tokenize_for_llama("sentiment")
    run = Run("sentiment", "lora-small", "lora", {"attn_bn": 4}, seed=3, model="models/llama")
    trained = train(run, {**TRAIN, "select": "accuracy"})
    assert trained["steps"] == 4 and trained["head_trained"] is True
    scores = evaluate_and_save(run, {"batch_size": 4})
    assert 0 <= scores["accuracy"] <= 100


def test_a_decoder_only_model_on_data_tokenized_for_an_encoder_decoder_is_one_line(project):
    from train import train
    from unipeft_bench.runs import Run

    tokenize_for_llama("summarization")  # no prompt: source → target
    with pytest.raises(DataError, match=r"^data/tokenized/summarization: tokenized as source → target for an "
                                        r"encoder-decoder, but models/llama is decoder-only: set params.yaml "
                                        r"tokenize.offline.summarization.prompt \(and the model's tokenizer in "
                                        r"tokenize.offline.tokenizer\)$") as err:
        train(Run("summarization", "lora-small", "lora", {"attn_bn": 4}, model="models/llama"),
              {**TRAIN, "select": "loss"})
    assert "\n" not in str(err.value)


def test_a_decoder_only_model_on_another_tokenizers_data_or_a_bert_config_is_one_line(project):
    from train import train
    from tokenize_splits import tokenize
    from unipeft_bench.runs import Run

    tokenize("sentiment", {"profile": "offline", "tokenize": {"offline": {  # MiniLM's 30,522 tokens
        "tokenizer": "minilm", "sentiment": {"source": 24, "limit": {"train": 8}}}}})
    run = Run("sentiment", "lora-small", "lora", {"attn_bn": 4}, model="models/llama")
    with pytest.raises(DataError, match=r"^data/tokenized/sentiment/tokenizer has 30522 tokens, more than the "
                                        r"model .*models/llama has embeddings \(320\): tokenize the task with"):
        train(run, {**TRAIN, "select": "accuracy"})
    save_model(project / "models" / "other", bos=True, vocab=300)  # another vocabulary that fits the model
    tokenize_for_llama("sentiment")
    with pytest.raises(DataError, match=r"^data/tokenized/sentiment/tokenizer is not the tokenizer of .*models/other"):
        train(Run("sentiment", "lora-small", "lora", {"attn_bn": 4}, model="models/other"),
              {**TRAIN, "select": "accuracy"})
    with pytest.raises(DataError, match=r"model_config.hidden_dropout_prob: not a setting of LlamaConfig \(its "
                                        r"dropout settings: attention_dropout\)$"):
        train(run, {**TRAIN, "select": "accuracy", "model_config": {"hidden_dropout_prob": 0.0}})


# ---- params.yaml ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    ({"prompt": "Summarize: {document}"}, "summarization.prompt: unknown placeholder {document}; a prompt has "
                                          "{source} only"),
    ({"prompt": "Summarize the text."}, "summarization.prompt: no {source} placeholder"),
    ({"prompt": "Summarize {source"}, "summarization.prompt: not a valid template"),
    ({"prompt": "{source!r}"}, "summarization.prompt: write the placeholder as {source}"),
    ({"prompt": "{}"}, "summarization.prompt: unknown placeholder {}"),
    ({"prompt": 3}, "summarization.prompt: expected a template string"),
    ({"prompt": PROMPT, "chat_template": "yes"}, "summarization.chat_template: expected true or false, got 'yes'"),
    ({"chat_template": True}, "summarization.chat_template: set, but tokenize.offline.summarization.prompt is not"),
])
def test_bad_prompt_settings_are_one_line_naming_the_key(options, message):
    with pytest.raises(DataError, match="^params.yaml tokenize.offline." + message.replace("{", r"\{")
                       .replace("(", r"\(").replace("?", r"\?")) as err:
        prompts.options({"source": 8, **options}, "seq2seq", "tokenize.offline.summarization")
    assert "\n" not in str(err.value)
    assert prompts.options({"prompt": "Literal {{braces}}: {source}"}, "seq2seq", "w")["prompt"].count("{") == 3


def test_the_validate_stage_refuses_bad_prompts_and_a_model_of_the_other_kind(tmp_path, monkeypatch):
    import copy

    from test_grids import composed
    from unipeft_bench.validation import validate

    monkeypatch.chdir(tmp_path)
    save_model(tmp_path / "models" / "llama")
    params = composed()
    summarization = params["tokenize"]["offline"]["summarization"]
    del summarization["prompt"]  # a seq2seq setting: the model a directory not built here
    params["models"]["offline"]["summarization"] = "models/seq2seq"

    def refusal(change) -> str:
        changed = copy.deepcopy(params)
        change(changed)
        with pytest.raises(DataError) as err:
            validate(changed)
        return str(err.value)

    assert refusal(lambda p: p["tokenize"]["offline"]["summarization"].update(prompt="{text}")) == (
        "params.yaml tokenize.offline.summarization.prompt: unknown placeholder {text}; a prompt has {source} only")
    assert refusal(lambda p: p["tokenize"]["offline"]["sentiment"].update(prompt="{source}")).startswith(
        "params.yaml tokenize.offline.sentiment.prompt: prompt templates are for generation tasks")
    assert refusal(lambda p: p["models"]["offline"].update(summarization="models/llama")) == (
        "params.yaml tokenize.offline.summarization.prompt: missing, but models.offline.summarization (models/llama) "
        "is a decoder-only model, whose generation tasks are prompt → completion; add a template with {source}")
    assert refusal(lambda p: p.update(task="summarization", model="models/llama")).startswith(
        "params.yaml tokenize.offline.summarization.prompt: missing, but model (models/llama) is a decoder-only")
    summarization["prompt"] = PROMPT
    params.update(task="summarization", model="models/llama")
    params["models"]["offline"]["summarization"] = "models/llama"
    validate(params)  # a decoder-only model in the grid and in the experiment
    (tmp_path / "models/seq2seq").mkdir()
    (tmp_path / "models/seq2seq/config.json").write_text('{"is_encoder_decoder": true}')
    params["models"]["offline"]["summarization"] = "models/seq2seq"
    with pytest.raises(DataError, match=r"^params.yaml tokenize.offline.summarization.prompt: set, but "
                                        r"models.offline.summarization \(models/seq2seq\) is an encoder-decoder"):
        validate(params)
