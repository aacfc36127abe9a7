"""Generation tasks as prompt → completion, for decoder-only models: the params.yaml keys that say how
(tokenize.<profile>.<task>.prompt, .chat_template), checked without torch (the validate stage imports this), and
the tokenization into one sequence per example whose labels cover the completion only.

An example becomes   [prompt tokens] [target tokens] [EOS]   with labels   [-100 ...] [target tokens] [EOS]:
the loss is on the completion, and generation starts right after the prompt. The source length limit
(tokenize.<profile>.<task>.source) cuts the source text inside the prompt, never the template around it nor the
completion; the target limit cuts the target, EOS included, as the seq2seq labels are cut.
"""

from __future__ import annotations

import string

import numpy as np

from .errors import DataError

PLACEHOLDERS = ("source",)  # what a prompt template may name
PROMPT_FILE = "prompt.json"  # beside tokenized prompt → completion data: its template; seq2seq data has none
IGNORE = -100  # the label of a position without a loss (PyTorch's and transformers' ignore_index)


def options(task_options: dict, task_kind: str, where: str) -> dict | None:
    """The prompt settings of tokenize.<profile>.<task>, checked: {"prompt": template, "chat_template": bool}, or
    None where the task is tokenized for an encoder-decoder (no `prompt` key). One line naming the key on a bad
    value."""
    prompt, chat = task_options.get("prompt"), task_options.get("chat_template", False)
    if prompt is None:
        if "chat_template" in task_options:
            raise DataError(f"params.yaml {where}.chat_template: set, but {where}.prompt is not; the chat template "
                            "wraps the prompt")
        return None
    if task_kind != "seq2seq":
        raise DataError(f"params.yaml {where}.prompt: prompt templates are for generation tasks; a decoder-only "
                        "classifier reads the text as it is")
    if not isinstance(prompt, str):
        raise DataError(f"params.yaml {where}.prompt: expected a template string with {{source}}, got {prompt!r}")
    check_template(prompt, f"{where}.prompt")
    if not isinstance(chat, bool):
        raise DataError(f"params.yaml {where}.chat_template: expected true or false, got {chat!r}")
    return {"prompt": prompt, "chat_template": chat}


def check_template(template: str, where: str) -> None:
    """str.format fields: `{source}` at least once, no other name, no conversion or format spec; `{{`/`}}` are
    literal braces."""
    try:
        fields = [(name, conversion, spec) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as err:
        raise DataError(f"params.yaml {where}: not a valid template ({err}); write a literal brace as {{{{ or }}}}"
                        ) from None
    for name, conversion, spec in fields:
        if name not in PLACEHOLDERS:
            raise DataError(f"params.yaml {where}: unknown placeholder {{{name}}}; a prompt has "
                            f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)} only")
        if conversion or spec:
            raise DataError(f"params.yaml {where}: write the placeholder as {{{name}}}, without a conversion or "
                            "format spec")
    if not fields:
        raise DataError(f"params.yaml {where}: no {{source}} placeholder; the prompt must say where the source "
                        "text goes")


def _leading_special_tokens(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before a text (Llama's BOS); any it puts after one (an EOS) are left
    out of the prompt, which the completion continues."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start]
    return []


def _cut_sources(tokenizer, sources: list[str], limit: int) -> tuple[list[str], list[int]]:
    """Each source cut after its first `limit` tokens (as tokenized alone), at the character where that token
    ends, and each source's token count before the cut. Cutting the text rather than the ids keeps the prompt
    tokenized as one string, as it will be when generating."""
    encoded = tokenizer(sources, add_special_tokens=False, return_offsets_mapping=True)
    cut, counts = [], []
    for text, ids, offsets in zip(sources, encoded["input_ids"], encoded["offset_mapping"]):
        counts.append(len(ids))
        cut.append(text[:offsets[limit - 1][1]] if len(ids) > limit else text)
    return cut, counts


def prompt_texts(tokenizer, template: str, chat_template: bool, sources: list[str]) -> list[str]:
    texts = [template.format(source=source) for source in sources]
    if not chat_template:
        return texts
    return [tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                          tokenize=False) for text in texts]


def encode(tokenizer, records: list[dict], settings: dict, source_length: int, target_length: int,
           where: str) -> tuple[dict[str, list], dict]:
    """Prompt → completion rows (input_ids, attention_mask, labels, and id/source/target as the seq2seq rows) and
    the token statistics of the split."""
    if not tokenizer.is_fast:
        raise DataError(f"{where}: the tokenizer has no fast (Rust) version, which cutting the source inside the "
                        "prompt needs (offsets)")
    if tokenizer.eos_token_id is None:
        raise DataError(f"{where}: the tokenizer has no EOS token, which ends every completion")
    if settings["chat_template"] and not tokenizer.chat_template:
        raise DataError(f"params.yaml {where}.chat_template: true, but the tokenizer has no chat template")
    if target_length < 2:
        raise DataError(f"params.yaml {where}.target: a completion needs at least 2 tokens (text and EOS), "
                        f"got {target_length}")
    sources, source_counts = _cut_sources(tokenizer, [r["source"] for r in records], source_length)
    texts = prompt_texts(tokenizer, settings["prompt"], settings["chat_template"], sources)
    # a chat template writes the BOS itself
    leading = [] if settings["chat_template"] else _leading_special_tokens(tokenizer)
    prompts = [leading + ids for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    targets = tokenizer([r["target"] for r in records], add_special_tokens=False)["input_ids"]
    completions = [ids[:target_length - 1] + [tokenizer.eos_token_id] for ids in targets]
    rows = {"input_ids": [p + c for p, c in zip(prompts, completions)],
            "labels": [[IGNORE] * len(p) + c for p, c in zip(prompts, completions)]}
    rows["attention_mask"] = [[1] * len(ids) for ids in rows["input_ids"]]
    rows.update(id=[r["id"] for r in records], source=[r["source"] for r in records],
                target=[r["target"] for r in records])
    stats = {"source": _percentiles(source_counts, source_length),
             "labels": _percentiles([len(ids) + 1 for ids in targets], target_length),
             "input_ids": _percentiles([len(ids) for ids in rows["input_ids"]], None)}
    return rows, stats


def _percentiles(lengths: list[int], limit: int | None) -> dict:
    """As tokenization.token_stats: p50, p95, and how often the limit cut (here: lengths before any cut)."""
    values = np.array(lengths)
    out = {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95))}
    if limit is not None:
        out["truncated"] = round(float((values > limit).mean()), 4)
    return out


def prompt_length(labels) -> int:
    """Where the completion starts in a row: its first labelled position (every completion has at least its
    EOS)."""
    for position, label in enumerate(labels):
        if label != IGNORE:
            return position
    raise DataError("a prompt → completion row without a completion (every label is -100)")
