"""The README and docs/ against the repository: links, length, the library example, and the commands they name.

Every relative link (and `#anchor`, as GitHub slugs headings) resolves; the README stays a front door (at most
220 lines); its library example runs, on a tiny random BART in place of BART-large (no download), with the count it
prints checked on BART-large built without weights; every `dvc exp run` names params keys, grids, presets and
stages that exist; every `python -m`, `python benchmarks/...`, `bash ....sh`, every repository file and every test
function named in backticks exists. Each check is a table over what the pages contain, so a page that gains a command gains a row.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml

import unipeft

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 220

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
GRID_FILES = {path.stem: path for path in (ROOT / "conf" / "grid").glob("*.yaml")}
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# `dvc exp run` options that take a value (the rest are flags); -S values are params overrides
VALUE_OPTIONS = {"-S", "--set-param", "-C", "--copy-paths", "-n", "--name", "-m", "--message", "-j", "--jobs"}
# what a `-S key=value` may say, for the keys whose values name something
VALUES = {
    "method": lambda: set(unipeft.preset_names()),
    "grid": lambda: set(GRID_FILES),
    "profile": lambda: set(PARAMS["models"]),
    "task": lambda: {task for tasks in PARAMS["models"].values() for task in tasks},
}
# files named in backticks under these folders (tracked in git) must exist; outputs (data/, runs/, ...) need not
TRACKED = ("src/", "stages/", "benchmarks/", "tests/", "conf/", "scripts/", "results/", ".ci/", ".dvc/")
PLACEHOLDER = re.compile(r"<[^<>`]*>|\.\.\.|…|\*|\{")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---- reading Markdown ----

def split_code(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The prose (code lines blanked, so offsets and line numbers stay) and the code blocks as (language, code):
    fenced blocks and indented ones (four spaces after a blank line or another code line)."""
    prose, blocks, fence, previous_blank, in_indented = [], [], None, True, False
    for line in text.split("\n"):
        if fence is not None:
            if line.strip().startswith("```"):
                fence = None
            else:
                blocks[-1][1].append(line)
            prose.append("")
            continue
        if line.strip().startswith("```"):
            fence = line.strip()[3:].strip()
            blocks.append((fence, []))
            prose.append("")
            previous_blank = in_indented = False
            continue
        if line.startswith("    ") and (previous_blank or in_indented) and line.strip():
            if not in_indented:
                blocks.append(("", []))
            blocks[-1][1].append(line[4:])
            prose.append("")
            in_indented, previous_blank = True, False
            continue
        in_indented = in_indented and not line.strip()  # a blank line may sit inside an indented block
        previous_blank = not line.strip()
        prose.append(line)
    return "\n".join(prose), [(language, "\n".join(lines)) for language, lines in blocks]


def inline_code(prose: str) -> list[str]:
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


def github_slug(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    prose, _ = split_code(page.read_text())
    seen: dict[str, int] = {}
    found = set()
    for match in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose, flags=re.M):
        slug = github_slug(match.group(1))
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def links(page: Path) -> list[tuple[str, str]]:
    """(line, target) of each relative link or image, outside code."""
    prose, _ = split_code(page.read_text())
    prose = re.sub(r"`[^`]*`", lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose)  # code spans are not links
    found = []
    for match in re.finditer(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        found.append((f"{rel(page)}:{prose.count(chr(10), 0, match.start()) + 1}", target))
    return found


# ---- the commands the pages name ----

def command_lines(page: Path) -> list[str]:
    """Each shell line of a code block (continuations joined, `$ ` prompts dropped) and each inline code span."""
    prose, blocks = split_code(page.read_text())
    lines = []
    for language, code in blocks:
        if language not in ("", "sh", "bash", "shell", "console"):
            continue
        for line in code.replace("\\\n", " ").split("\n"):
            lines.append(re.sub(r"^\s*\$\s+", "", line).strip())
    return [line for line in lines + inline_code(prose) if line]


def substitutions(line: str) -> tuple[str, list[str]]:
    """The line without its `$( ... )` command substitutions, and the commands inside them."""
    inner = re.findall(r"\$\(([^()]*)\)", line)
    return re.sub(r"\$\([^()]*\)", " ", line), inner


def tokens(command: str) -> list[str]:
    command = re.sub(r"<([^<>]*)>", lambda m: "<" + m.group(1).replace(" ", "_") + ">", command)
    return shlex.split(command, comments=True)


def every_command(pattern: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for line in command_lines(page):
            outer, inner = substitutions(line)
            for command in (outer, *inner):
                for match in re.finditer(pattern, command):
                    found.append((rel(page), command[match.start():].strip()))
    return sorted(set(found))


EXP_RUNS = every_command(r"\bdvc exp run\b")
PYTHON = sorted({(page, re.match(r"\S*python\s+(-m\s+[\w.]+|\S+\.py)", command).group(1))
                 for page, command in every_command(r"(?<![\w/.-])(?:\.venv/bin/)?python\s+(?:-m\s+[\w.]+|\S+\.py)")})
SCRIPTS = sorted({(page, command.split()[1]) for page, command in every_command(r"\bbash\s+\S+\.sh\b")})
OVERRIDES = sorted({(rel(page), span) for page in PAGES for span in inline_code(split_code(page.read_text())[0])
                    if span.startswith("-S ") and "dvc exp run" not in span})
TEST_NAMES = sorted({(rel(page), span) for page in PAGES for span in inline_code(split_code(page.read_text())[0])
                     if re.fullmatch(r"test_\w+(\.\.\.)?", span)})
FILES = sorted({(rel(page), span) for page in PAGES for span in inline_code(split_code(page.read_text())[0])
                if span.startswith(TRACKED) and " " not in span and not PLACEHOLDER.search(span)})


def exp_run_arguments(command: str) -> tuple[list[str], list[str]]:
    """The `-S` values and the stage targets of one `dvc exp run` command."""
    words = tokens(command)[3:]
    overrides, targets = [], []
    while words:
        word = words.pop(0)
        if word in VALUE_OPTIONS and words:
            value = words.pop(0)
            if word in ("-S", "--set-param"):
                overrides.append(value)
        elif not word.startswith("-"):
            targets.append(word)
    return overrides, targets


def config_for(overrides: list[str]) -> dict:
    """params.yaml as `dvc exp run` composes it for these overrides: `grid=<name>` swaps in conf/grid/<name>.yaml."""
    config = dict(PARAMS)
    for override in overrides:
        key, _, value = override.partition("=")
        if key == "grid" and value in GRID_FILES:
            config["grid"] = yaml.safe_load(GRID_FILES[value].read_text())
    return config


def key_exists(config, parts: list[str]) -> bool:
    """A dotted key in a nested mapping; a `<placeholder>` part matches any key there."""
    if not parts:
        return True
    if not isinstance(config, dict):
        return False
    head, rest = parts[0], parts[1:]
    if head.startswith("<") and head.endswith(">"):
        return any(key_exists(value, rest) for value in config.values())
    return head in config and key_exists(config[head], rest)


def override_errors(override: str, config: dict) -> list[str]:
    key, equals, value = override.partition("=")
    key = key.lstrip("~+")
    if key == "grid" and equals:  # a config group: the value names a file, not a key
        return [] if value in GRID_FILES or PLACEHOLDER.search(value) else [f"grid={value}: no conf/grid/{value}.yaml"]
    errors = [] if key_exists(config, key.split(".")) else [f"{key}: no such key in params.yaml"]
    if key in VALUES and equals and not PLACEHOLDER.search(value):
        known = VALUES[key]()
        errors += [f"{key}={name}: not one of {sorted(known)}" for name in value.split(",") if name not in known]
    return errors


def check_page_set():
    assert PAGES[1:], "docs/ has no pages"
    assert EXP_RUNS and PYTHON and FILES and TEST_NAMES, "the extraction found nothing: the pages or the parsing changed"


# ---- the tests ----

def test_the_pages_exist_and_the_tables_below_are_not_empty():
    check_page_set()


@pytest.mark.parametrize("where, target", [link for page in PAGES for link in links(page)],
                         ids=lambda value: str(value))
def test_every_relative_link_resolves(where, target):
    page = ROOT / where.split(":")[0]
    path, _, anchor = target.partition("#")
    destination = (page.parent / path).resolve() if path else page
    assert destination.exists(), f"{where}: {target}: no file {destination}"
    assert ROOT in destination.parents or destination == ROOT, f"{where}: {target} leaves the repository"
    if anchor:
        assert destination.suffix == ".md", f"{where}: {target}: an anchor into a file that is not Markdown"
        assert anchor in anchors(destination), (
            f"{where}: {target}: no heading with the slug #{anchor} in {rel(destination)} "
            f"(there: {sorted(anchors(destination))})")


def test_the_readme_is_a_front_door():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the manual belongs in docs/"


def test_the_readme_keeps_the_test_command_that_ci_runs():
    assert "bash setup.sh && .venv/bin/python -m pytest" in [line.strip() for line in README.read_text().split("\n")]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash setup.sh" in ci and ".venv/bin/python -m pytest" in ci


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / target.partition("#")[0]).resolve() for _, target in links(README)}
    assert not [rel(page) for page in PAGES[1:] if page.resolve() not in linked]


@pytest.mark.parametrize("page, command", EXP_RUNS, ids=lambda value: str(value)[:90])
def test_every_dvc_exp_run_names_what_exists(page, command):
    overrides, targets = exp_run_arguments(command)
    config = config_for(overrides)
    errors = [error for override in overrides for error in override_errors(override, config)]
    for target in targets:
        stage, at, item = target.partition("@")
        if stage not in STAGES:
            errors.append(f"{target}: no stage {stage!r} in dvc.yaml")
        elif at and not {"foreach", "matrix"} & set(STAGES[stage]):
            errors.append(f"{target}: stage {stage!r} has no items")
    assert not errors, f"{page}: `{command}`: " + "; ".join(errors)


@pytest.mark.parametrize("page, span", OVERRIDES, ids=lambda value: str(value)[:90])
def test_every_loose_override_names_a_key_of_params_or_of_a_grid(page, span):
    """`-S ...` quoted on its own (no `dvc exp run` around it): its key exists in params.yaml, or in some grid."""
    overrides, _ = exp_run_arguments("dvc exp run " + span)
    assert overrides, span
    for override in overrides:
        configs = [PARAMS] + [config_for([f"grid={grid}"]) for grid in GRID_FILES]
        assert any(not override_errors(override, config) for config in configs), \
            f"{page}: `{span}`: " + "; ".join(override_errors(override, PARAMS))


@pytest.mark.parametrize("page, target", PYTHON, ids=lambda value: str(value))
def test_every_python_command_names_a_module_or_script_that_exists(page, target):
    if target.startswith("-m"):
        module = target.split()[1]
        parts = module.split(".")
        if parts[0] in ("unipeft", "unipeft_bench"):
            base = ROOT / "src" / Path(*parts)
            assert base.with_suffix(".py").is_file() or (base / "__main__.py").is_file(), f"{page}: python -m {module}"
        else:
            assert importlib.util.find_spec(module) is not None, f"{page}: python -m {module}: not installed"
    else:
        assert (ROOT / target).is_file(), f"{page}: python {target}: no such script"


@pytest.mark.parametrize("page, script", SCRIPTS, ids=lambda value: str(value))
def test_every_bash_script_exists(page, script):
    assert (ROOT / script).is_file(), f"{page}: bash {script}: no such script"


@pytest.mark.parametrize("page, path", FILES, ids=lambda value: str(value))
def test_every_repository_file_named_in_backticks_exists(page, path):
    assert (ROOT / path.rstrip("/")).exists(), f"{page}: `{path}`: no such file or folder"


@pytest.mark.parametrize("page, name", TEST_NAMES, ids=lambda value: str(value))
def test_every_test_named_exists(page, name):
    """A guarantee's proof named by its test function (`test_...`, or its first words and `...`)."""
    prefix = name.removesuffix("...")
    pattern = re.compile(rf"^\s*def {re.escape(prefix)}{'' if name.endswith('...') else '[(]'}", flags=re.M)
    assert any(pattern.search(path.read_text()) for path in (ROOT / "tests").glob("test_*.py")), \
        f"{page}: `{name}`: no such test function in tests/"


# ---- the library example ----

def python_examples() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        blocks = [code for language, code in split_code(page.read_text())[1] if language == "python"]
        found += [(f"{rel(page)}#{index}", code) for index, code in enumerate(blocks)]
    return found


EXAMPLES = python_examples()


def test_the_readme_has_a_library_example():
    assert EXAMPLES and EXAMPLES[0][0] == "README.md#0", "README.md has no ```python block"


def tiny_tokenizer():
    """BART's special tokens at BART's ids; every word is <unk> (id 3), inside the tiny BART's 64-token vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_input_names=["input_ids", "attention_mask"])


@pytest.mark.filterwarnings("ignore:Using the model-agnostic default `max_length`")  # the tiny BART has no own
@pytest.mark.parametrize("where, code", EXAMPLES, ids=[where for where, _ in EXAMPLES])
def test_the_library_example_runs(where, code, monkeypatch, tmp_path, capsys):
    """The example as written, with `from_pretrained` answering a tiny random BART (the same weights on every call,
    as a pretrained model would) and a word-level tokenizer: no download, a few seconds on CPU."""
    import torch
    import transformers
    from conftest import build

    names = set(re.findall(r"from_pretrained\(\"([^\"]+)\"\)", code))
    assert names, f"{where}: the example loads no model by name"

    def model(cls, name, *args, **kwargs):
        assert name in names
        return build("bart")

    def tokenizer(cls, name, *args, **kwargs):
        assert name in names
        return tiny_tokenizer()

    monkeypatch.setattr(transformers.AutoModelForSeq2SeqLM, "from_pretrained", classmethod(model))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(tokenizer))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__example__"}
    exec(compile(code, where, "exec"), namespace)

    # what its comments say: the outputs of the loaded copy equal the attached model's; an adapter folder was written
    batch = {"input_ids": torch.tensor([[0, 5, 6, 7, 2]])}
    with torch.no_grad():
        torch.testing.assert_close(namespace["fresh"](**batch).logits, namespace["model"](**batch).logits)
    for folder in re.findall(r"\.save\(\"([^\"]+)\"\)", code):
        assert {"adapter_model.safetensors", "unipeft_config.json"} <= {p.name for p in (tmp_path / folder).iterdir()}


@pytest.mark.parametrize("where, code", EXAMPLES, ids=[where for where, _ in EXAMPLES])
def test_the_count_the_example_prints_is_the_real_models(where, code):
    """`print(peft.counts().paper)  # N`: N is the count on the named model itself, built without weights."""
    from unipeft.models import build_without_weights

    printed = re.search(r"print\(\w+\.counts\(\)\.(\w+)\)\s*#\s*([\d,]+)", code)
    if printed is None:
        pytest.skip(f"{where} prints no count")
    method = re.search(r"unipeft\.attach\(\w+, \"(\w+)\"", code).group(1)
    name = re.search(r"from_pretrained\(\"(?:[\w-]+/)?([\w.-]+)\"\)", code).group(1)
    counts = unipeft.attach(build_without_weights(name), method).counts()
    assert getattr(counts, printed.group(1)) == int(printed.group(2).replace(",", "")), \
        f"{where}: {name}, {method}: {printed.group(1)} is {getattr(counts, printed.group(1))}"
