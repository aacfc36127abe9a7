"""What each params.yaml value may be, as tables of key → (test, what the refusal says it must be).

The validate stage walks params.yaml with these tables (src/unipeft_bench/validation.py), so a value that a stage
would refuse, misread or crash on is refused before DVC removes any output, in one line naming the key and the
value. Tables rather than a pydantic model: the values are checked after the pipeline's own resolution (a run's
settings after `by_method`, a grid run's budget after its profile and task kind), which a static model of the
file cannot express, and each rule's message is already the one line a user reads.
"""

from __future__ import annotations

from .errors import DataError

# An adapter's width or prefix length far above any model's hidden size is a typo (`attn_bn=1e12`), refused
# before the model build tries to allocate it; the paper's largest is 1,024 (Table 12).
MAX_SIZE = 65_536


def integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value) -> bool:
    return integer(value) and value > 0


def int_at_least_0(value) -> bool:
    return integer(value) and value >= 0


def number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def boolean(value) -> bool:
    return isinstance(value, bool)


def fraction_below_1(value) -> bool:  # [0, 1)
    return number(value) and 0 <= value < 1


def open_fraction(value) -> bool:  # (0, 1)
    return number(value) and 0 < value < 1


def probability(value) -> bool:  # [0, 1]
    return number(value) and 0 <= value <= 1


def size(value) -> bool:
    return positive_int(value) and value <= MAX_SIZE


def scale(value) -> bool:
    return value == "learned" or (number(value) and value > 0)


POSITIVE_INT = (positive_int, "a positive integer")
INT_AT_LEAST_0 = (int_at_least_0, "an integer ≥ 0")
BOOLEAN = (boolean, "true or false")
INTEGER = (integer, "an integer")

BUDGET = {
    "attn_bn": (size, f"a positive integer of at most {MAX_SIZE:,} (prefix length l or rank r)"),
    "ffn_bn": (size, f"a positive integer of at most {MAX_SIZE:,} (bottleneck r)"),
    "scale": (scale, "a positive number or 'learned'"),
}

# train.<profile>.<task>, after a run's overrides (training.SETTING_RULES holds the keys the train stage itself
# checks; these are the ones it would otherwise pass on to the Trainer or the model config unread)
TRAIN = {
    "label_smoothing": (fraction_below_1, "a number in [0, 1)"),
    "adam_beta2": (open_fraction, "a number in (0, 1)"),
    "adam_epsilon": (lambda value: number(value) and value > 0, "a positive number"),
    "bf16": BOOLEAN,
    "fp16": BOOLEAN,
    "group_by_length": BOOLEAN,
    "train_head": BOOLEAN,
    "early_stopping_patience": POSITIVE_INT,
    "max_tokens_per_batch": POSITIVE_INT,
    "batch_size_multiple": POSITIVE_INT,
    "dataloader_workers": INT_AT_LEAST_0,
}

GENERATION = {  # evaluate.<profile>.<task>.generation and train.<profile>.<task>.validation_generation
    "num_beams": POSITIVE_INT,
    "max_length": POSITIVE_INT,
    "max_new_tokens": POSITIVE_INT,
    "min_length": INT_AT_LEAST_0,
    "min_new_tokens": INT_AT_LEAST_0,
    "no_repeat_ngram_size": INT_AT_LEAST_0,
    "length_penalty": (number, "a number"),
    "repetition_penalty": (lambda value: number(value) and value > 0, "a positive number"),
    "early_stopping": BOOLEAN,
}

EVALUATE = {  # evaluate.<profile>.<task>
    "batch_size": POSITIVE_INT,
    "bf16": BOOLEAN,
    "seeds_in_parallel": BOOLEAN,
    "generation": (lambda value: isinstance(value, dict), "a mapping of generation options"),
}

TOKENIZE = {  # tokenize.<profile>.<task>
    "source": POSITIVE_INT,
    "target": POSITIVE_INT,
    "eval_target": POSITIVE_INT,
    "seed": INTEGER,
    "limit": (lambda value: isinstance(value, dict), "a mapping of split → number of examples"),
    "prompt": (lambda value: isinstance(value, str), "a template with {source}"),
    "chat_template": BOOLEAN,
    "tokenizer_kwargs": (lambda value: isinstance(value, dict), "a mapping of tokenizer options"),
}


def check(values, rules: dict, where: str, closed: bool = True) -> dict:
    """`values` refused at its first bad key: not a mapping, an unknown key (when `closed`), or a value its rule
    refuses. Every message is one line naming the params.yaml key and the value."""
    if not isinstance(values, dict):
        raise DataError(f"params.yaml {where}: expected a mapping, got {values!r}")
    if closed:
        unknown = sorted(set(values) - set(rules))
        if unknown:
            raise DataError(f"params.yaml {where}.{unknown[0]}: not a known key; expected one of "
                            f"{', '.join(sorted(rules))}")
    for key, (valid, expected) in rules.items():
        if key in values and values[key] is not None and not valid(values[key]):
            raise DataError(f"params.yaml {where}.{key}: expected {expected}, got {values[key]!r}")
    return values


def check_model_config(values, where: str) -> None:
    """train.<profile>.<task>.model_config: keys of the model's config; its dropouts are probabilities."""
    check(values, {}, where, closed=False)
    for key, value in values.items():
        if "dropout" in key or key.endswith("_prob"):
            check({key: value}, {key: (probability, "a probability in [0, 1]")}, where)


def check_evaluate(settings, where: str, generates: bool) -> dict:
    """evaluate.<profile>.<task>, as the validate stage and the evaluate stage (run by hand too) both check it."""
    check(settings, EVALUATE, where)
    if "batch_size" not in settings:
        raise DataError(f"params.yaml: missing key '{where}.batch_size'")
    if generates:
        if "generation" not in settings:
            raise DataError(f"params.yaml: missing key '{where}.generation'")
        check(settings["generation"], GENERATION, f"{where}.generation")
    elif "generation" in settings:
        raise DataError(f"params.yaml {where}.generation: a classification task generates nothing")
    return settings


def check_tokenize(options, where: str) -> dict:
    """tokenize.<profile>.<task>, as the validate stage and the tokenize stage (run by hand too) both check it;
    a limit of 0 would leave a split empty (null: all of it)."""
    check(options, TOKENIZE, where)
    for split, count in (options.get("limit") or {}).items():
        check({split: count}, {split: POSITIVE_INT}, f"{where}.limit")
    return options


# data.<task> keys that the prepare stage reads in the offline profile
DATA_KEYS = {"summarization": ("validation_fraction", "test_fraction"),
             "translation": ("validation_books", "test_books"),
             "nli": ("validation_fraction",),
             "sentiment": ("validation_fraction", "test_fraction")}


def check_data(options, task: str) -> dict:
    """data.<task> offline: the held-out fractions (each in (0, 1), together below 1) or the books the prepare stage
    holds out, as the validate stage and the prepare stage (run by hand too) both check it."""
    where = f"data.{task}"
    check(options, {}, where, closed=False)
    for key in DATA_KEYS[task]:
        if key not in options:
            raise DataError(f"params.yaml: missing key '{where}.{key}'")
        value = options[key]
        if key.endswith("_books"):
            if not value or not isinstance(value, list) or not all(isinstance(b, str) and b for b in value):
                raise DataError(f"params.yaml {where}.{key}: expected a non-empty list of book names, got {value!r}")
        else:
            check({key: value}, {key: (open_fraction, "a fraction in (0, 1)")}, where)
    fractions = [options[key] for key in DATA_KEYS[task] if key.endswith("_fraction")]
    if sum(fractions) >= 1:
        raise DataError(f"params.yaml {where}: the held-out fractions add up to {sum(fractions):g}, leaving no "
                        "training split")
    return options
