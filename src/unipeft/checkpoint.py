"""Adapter-only checkpoints: adapter_model.safetensors + adapter_config.json, validated on load."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .accounting import base_fingerprint
from .attachment import Attachment, attach
from .design import ConfigError, Method

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"


def _folded(method: Method) -> Method:
    """The method as stored: prefix MLPs replaced by the vectors they produced."""
    mods = tuple(dataclasses.replace(m, reparam="direct") if m.position == "head" else m for m in method.modifications)
    return dataclasses.replace(method, modifications=mods)


def save(attachment: Attachment, directory: str | os.PathLike) -> Path:
    """Write both files into `directory` atomically: a reader never sees one without the other."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = attachment.model
    config = {
        "library": "unipeft", "version": __version__,
        "method": _folded(attachment.method).to_dict(), "trained_method": attachment.method.to_dict(),
        "base_model": {"model_type": model.config.model_type, "class": type(model).__name__,
                       "name_or_path": getattr(model.config, "name_or_path", ""),
                       "fingerprint": attachment.fingerprint, "parameters": attachment.base_params},
    }
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".staging-"))
    save_file(attachment.state_dict(fold=True), str(staging / WEIGHTS), metadata={"format": "pt"})
    (staging / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    for name in (WEIGHTS, CONFIG):
        os.replace(staging / name, directory / name)
    staging.rmdir()
    return directory


def read_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise ConfigError(f"{path}: not found; an adapter directory holds {CONFIG} and {WEIGHTS}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if (not isinstance(config, dict) or config.get("library") != "unipeft"
            or not isinstance(config.get("method"), dict) or not isinstance(config.get("base_model"), dict)):
        raise ConfigError(f"{path}: not a unipeft adapter config (needs library, method, base_model)")
    missing = [key for key in ("model_type", "fingerprint") if key not in config["base_model"]]
    if missing:
        raise ConfigError(f"{path}: base_model has no {missing[0]!r}")
    return config


def load(model: nn.Module, directory: str | os.PathLike) -> Attachment:
    """Attach the saved method to a fresh `model` and load its weights; refuses a base model of another shape."""
    directory = Path(directory)
    config = read_config(directory)
    expected, actual = config["base_model"], {"model_type": model.config.model_type,
                                              "fingerprint": base_fingerprint(model)}
    for key in ("model_type", "fingerprint"):
        if expected[key] != actual[key]:
            raise ConfigError(f"{directory / CONFIG}: base_model.{key} is {expected[key]!r} "
                              f"({expected.get('name_or_path') or 'unnamed'}), but the model given has "
                              f"{actual[key]!r}; load the adapter into the base model it was trained on")
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise ConfigError(f"{weights}: not found")
    try:  # safetensors never unpickles: a pickle under this name is refused as a bad header, its payload unrun
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ConfigError(f"{weights}: not a readable safetensors file ({reason})") from None
    attachment = attach(model, Method.from_dict(config["method"]))
    wanted = attachment.state_dict(fold=False)
    problems = ([f"missing {k}" for k in wanted if k not in state] + [f"unexpected {k}" for k in state if k not in wanted]
                + [f"{k} has shape {tuple(state[k].shape)}, expected {tuple(wanted[k].shape)}"
                   for k in wanted if k in state and state[k].shape != wanted[k].shape])
    if problems:
        attachment.detach()
        raise ConfigError(f"{weights}: does not match the method in {CONFIG}: {problems[0]}"
                          + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    model.load_state_dict(state, strict=False)
    return attachment
