"""A failed stage puts its previous outputs back, and says so in its one line.

DVC removes a stage's outputs before it runs the stage's command, so a stage that then stops (a damaged raw file,
a divergence, a full disk, Ctrl-C) would leave the workspace without its last good result, or with what it wrote
before it stopped (a diverged run's training curves). That result is still
in DVC's cache under the hashes dvc.lock recorded for the stage: the cached outputs by definition, and the
uncached ones (metrics, curves, tables: `cache: false`) because `dvc repro` and `dvc exp run` also save
those into the cache for the run-cache (dvc/stage/cache.py, `StageCache.save`). The failing stage links them
back before it exits. It does this only under DVC, which names the stage in DVC_STAGE; a stage script run by
hand writes its outputs by atomic replacement and has removed nothing.

Not restorable: an output that is not in this cache (recorded by `dvc commit` without a run, or the cache
cleared by `dvc gc`); the message names it, and `dvc checkout` / `git checkout` are then the way back.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import DataError


def _objects_dir(root: Path) -> Path:
    """Where the workspace's DVC cache keeps its md5-addressed files (.dvc/cache/files/md5, or cache.dir's)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return Path(repo.cache.local.path)


def _place(source: Path, target: Path) -> None:
    """A hardlink to the cache file where the file system allows (as .dvc/config's cache type), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _file_md5(path: Path) -> str:
    import hashlib

    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _as_recorded(path: Path, md5: str, objects: Path) -> bool:
    """Whether `path` holds what dvc.lock recorded (DVC's md5: of the file, or per file of a directory)."""
    if not md5.endswith(".dir"):
        return path.is_file() and _file_md5(path) == md5
    obj = objects / md5[:2] / md5[2:]
    if not path.is_dir() or not obj.is_file():
        return False
    recorded = {e["relpath"]: e["md5"] for e in json.loads(obj.read_text())}
    present = {str(f.relative_to(path)): f for f in path.rglob("*") if f.is_file()}
    return present.keys() == recorded.keys() and all(_file_md5(f) == recorded[r] for r, f in present.items())


def _restore_one(path: Path, md5: str, objects: Path) -> bool:
    """The recorded output in place of whatever is at `path` (what the failed run wrote, or nothing)."""
    obj = objects / md5[:2] / md5[2:]
    if not obj.is_file():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.restore-", dir=path.parent))
    aside = staging.with_name(staging.name + "-failed-run")
    try:
        if md5.endswith(".dir"):
            entries = json.loads(obj.read_text())
            sources = [(objects / e["md5"][:2] / e["md5"][2:], staging / e["relpath"]) for e in entries]
            if not all(source.is_file() for source, _ in sources):
                return False
            for source, target in sources:
                target.parent.mkdir(parents=True, exist_ok=True)
                _place(source, target)
            if path.exists():
                path.rename(aside)
            staging.rename(path)
        else:
            _place(obj, staging / path.name)
            (staging / path.name).replace(path)
        return True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(aside, ignore_errors=True)


def restore(stage: str | None = None, root: Path | None = None) -> tuple[list[str], list[str]]:
    """(restored, missing): the outputs of `stage` (default: the stage DVC is running) that the workspace lacks or
    holds other than dvc.lock records them (what the failed run wrote after DVC removed them: a diverged run's
    curves), put back from the cache; those the cache does not hold."""
    stage = stage or os.environ.get("DVC_STAGE")
    root = root or Path.cwd()  # DVC runs a stage's command in the stage's directory: the workspace root here
    lock_file = root / "dvc.lock"
    if not stage or not lock_file.is_file():
        return [], []
    import yaml

    entry = (yaml.load(lock_file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
             .get("stages") or {}).get(stage)
    outs = [(out["path"], out.get("md5")) for out in (entry or {}).get("outs", [])]
    if not outs:
        return [], []
    objects = _objects_dir(root)
    gone = [(path, md5) for path, md5 in outs if not (md5 and _as_recorded(root / path, md5, objects))]
    restored, missing = [], []
    for path, md5 in gone:
        (restored if md5 and _restore_one(root / path, md5, objects) else missing).append(path)
    return restored, missing


def _describe(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):  # the train stage names the run and its checkpoint (stages/train.py)
        return str(error) or "interrupted; a run with a complete checkpoint resumes from it on the next `dvc repro`"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    return str(error)


def stage_failed(error: BaseException) -> int:
    """The exit status of a stage stopped by `error` (a DataError, an OSError such as a full disk, Ctrl-C), after
    one line on stderr saying what happened and which previous outputs are back in place. Other exceptions are
    bugs: their outputs are put back too, and the exception goes on with its traceback."""
    try:
        restored, missing = restore()
    except Exception as err:  # the original error matters more than a failed restore
        restored, missing = [], [f"none (restoring failed: {err})"]
    note = ""
    if restored:
        note += f"; the previous {', '.join(restored)} put back from DVC's cache"
    if missing:
        note += f"; not in DVC's cache, so not put back: {', '.join(missing)} (`dvc checkout` or `git checkout`)"
    if not isinstance(error, (DataError, OSError, KeyboardInterrupt)):
        if note:
            print(f"error: a bug, not bad input{note}", file=sys.stderr)
        raise error
    print(f"error: {_describe(error)}{note}", file=sys.stderr)
    return 130 if isinstance(error, KeyboardInterrupt) else 1
