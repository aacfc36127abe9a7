"""Reading params, and writing outputs all at once or not at all."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from .errors import DataError
from .last_outputs import stage_failed


def params(path: str | os.PathLike = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None


def need(mapping: dict, dotted: str, where: str = "params.yaml"):
    value = mapping
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DataError(f"{where}: missing key {dotted!r}")
        value = value[part]
    return value


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike):
    """Yield a staging directory that replaces `final` only if the block finishes without error."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.staging-"
    # A process killed while staging leaves its folder behind; one output is written by one stage at a time, so
    # any staging folder of this target is such a leftover.
    for stale in final.parent.glob(f"{glob.escape(prefix)}*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=prefix))
    staging.chmod(0o755)  # mkdtemp makes it private; the output should have ordinary permissions
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not final.exists():
        os.replace(staging, final)
    elif _exchange(staging, final):  # one step: no moment without `final`, even under kill -9
        shutil.rmtree(staging)  # the previous output, now under the staging name
    else:  # no renameat2 here: a short moment without `final`
        shutil.rmtree(final)
        os.replace(staging, final)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths' names atomically (Linux renameat2 RENAME_EXCHANGE); False where the system or the file
    system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_cwd, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE
    return renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0


@contextlib.contextmanager
def reading(path: str | os.PathLike, rebuilt_by: str = "`dvc repro`"):
    """Any failure to read `path` inside the block (missing, cut short, not JSON, not UTF-8, a damaged Arrow or
    safetensors file: whatever the loading library raises) as one line naming the file; pipeline outputs are in
    DVC's cache, so the line says how to get the file back. DataErrors pass through as they are."""
    try:
        yield
    except DataError:
        raise
    except Exception as err:
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        raise DataError(f"{path}: missing, cut short or malformed ({type(err).__name__}: {detail}); "
                        f"`dvc checkout {path}` restores a pipeline output, {rebuilt_by} rebuilds it") from None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_json_atomic(path: str | os.PathLike, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object a line; a line that is not one (truncated, blank, not UTF-8) is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found; run the prepare stage")
    records = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                record = json.loads(raw.rstrip(b"\r\n").decode("utf-8"))
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{number}: not UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})") \
                    from None
            except json.JSONDecodeError as err:
                what = "blank line" if not raw.strip() else f"{err.msg}, column {err.colno}"
                raise DataError(f"{path}:{number}: not a JSON record ({what})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: not a JSON object (a {type(record).__name__})")
            records.append(record)
    return records


def run_task_stage(script: str, stage, argv: list[str]) -> int:
    """The command line of a per-task stage: `python <script> <task>`; a DataError becomes one line on stderr."""
    if len(argv) != 1:
        print(f"usage: python {script} <task>", file=sys.stderr)
        return 2
    try:
        report = stage(argv[0], params())
    except (Exception, KeyboardInterrupt) as err:
        return stage_failed(err)
    for split, numbers in report.items():
        print(f"{argv[0]} {split}: {numbers}")
    return 0
