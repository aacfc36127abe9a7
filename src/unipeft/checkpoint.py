"""Adapter-only checkpoints: adapter_model.safetensors + unipeft_config.json, validated on load.

File names. The config is `unipeft_config.json`, not `adapter_config.json`: peft's loaders and transformers'
`from_pretrained` (once peft is installed) decide that a folder holds a peft adapter by the presence of
`adapter_config.json` alone, and then fail on a schema that is not theirs (a TypeError about `peft_type`, or a
KeyError for `base_model_name_or_path`). Under its own name the config is invisible to them. The weights keep the
name `adapter_model.safetensors`: nothing finds an adapter by that file, and the folders written before the rename
(the pipeline's runs/, with `adapter_config.json`) stay readable: their config is read under the old name when it
says `"library": "unipeft"`. A peft LoRA adapter (`adapter_config.json` with `peft_type`) is recognised by `load`
and read through `peft_format`; LoRA-only methods are written in peft's format by `peft_format.save_peft`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .accounting import base_fingerprint
from .attachment import Attachment, attach
from .design import ConfigError, Method

WEIGHTS, CONFIG = "adapter_model.safetensors", "unipeft_config.json"
LEGACY_CONFIG = "adapter_config.json"  # unipeft 0.1 wrote its config under peft's name; read, never written


def _folded(method: Method) -> Method:
    """The method as stored: prefix MLPs replaced by the vectors they produced."""
    mods = tuple(dataclasses.replace(m, reparam="direct") if m.position == "head" else m for m in method.modifications)
    return dataclasses.replace(method, modifications=mods)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None


def _legacy_kind(directory: Path) -> str | None:
    """What the `adapter_config.json` in `directory` is: 'unipeft' (written by unipeft 0.1), 'peft', or None."""
    path = directory / LEGACY_CONFIG
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "unipeft"  # unreadable: read_config reports it, naming the file
    if isinstance(config, dict) and "peft_type" in config:
        return "peft"
    return "unipeft"


def save(attachment: Attachment, directory: str | os.PathLike, *, fold: bool = True) -> Path:
    """Write both files into `directory` atomically: a reader never sees one without the other.

    `fold=False` keeps prefix MLPs as they train (what a resumable training checkpoint needs); the default stores
    the vectors they produce, which is all inference needs."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory}: is a file; an adapter is saved into a folder (two files)")
    directory.mkdir(parents=True, exist_ok=True)
    if _legacy_kind(directory) == "peft":  # our weights would replace the ones its config describes
        raise ConfigError(f"{directory / LEGACY_CONFIG}: this folder holds a peft adapter; save the unipeft adapter "
                          "to another folder")
    model = attachment.model
    method = _folded(attachment.method) if fold else attachment.method
    config = {
        "library": "unipeft", "version": __version__,
        "method": method.to_dict(), "trained_method": attachment.method.to_dict(),
        "base_model": {"model_type": model.config.model_type, "class": type(model).__name__,
                       "name_or_path": getattr(model.config, "name_or_path", ""),
                       "fingerprint": attachment.fingerprint, "parameters": attachment.base_params},
    }
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".staging-"))
    save_file(attachment.state_dict(fold=fold), str(staging / WEIGHTS), metadata={"format": "pt"})
    (staging / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    for name in (WEIGHTS, CONFIG):
        os.replace(staging / name, directory / name)
    staging.rmdir()
    if _legacy_kind(directory) == "unipeft":  # an older save here: left, it would break peft's loaders
        (directory / LEGACY_CONFIG).unlink()
    return directory


def config_path(directory: str | os.PathLike) -> Path:
    """The unipeft config of an adapter folder: unipeft_config.json, or adapter_config.json written by 0.1."""
    directory = Path(directory)
    if not (directory / CONFIG).is_file() and _legacy_kind(directory) == "unipeft":
        return directory / LEGACY_CONFIG
    return directory / CONFIG


def read_config(directory: str | os.PathLike) -> dict:
    path = config_path(directory)
    if not path.is_file():
        hint = (f"; its {LEGACY_CONFIG} is a peft adapter: load it with unipeft.load or unipeft.load_peft"
                if _legacy_kind(Path(directory)) == "peft" else f"; an adapter directory holds {CONFIG} and {WEIGHTS}")
        raise ConfigError(f"{path}: not found{hint}")
    config = _read_json(path)
    if (not isinstance(config, dict) or config.get("library") != "unipeft"
            or not isinstance(config.get("method"), dict) or not isinstance(config.get("base_model"), dict)):
        raise ConfigError(f"{path}: not a unipeft adapter config (needs library, method, base_model)")
    missing = [key for key in ("model_type", "fingerprint") if key not in config["base_model"]]
    if missing:
        raise ConfigError(f"{path}: base_model has no {missing[0]!r}")
    return config


def _checked_config(model: nn.Module, directory: Path) -> dict:
    config = read_config(directory)
    expected, actual = config["base_model"], {"model_type": model.config.model_type,
                                              "fingerprint": base_fingerprint(model)}
    for key in ("model_type", "fingerprint"):
        if expected[key] != actual[key]:
            raise ConfigError(f"{config_path(directory)}: base_model.{key} is {expected[key]!r} "
                              f"({expected.get('name_or_path') or 'unnamed'}), but the model given has "
                              f"{actual[key]!r}; load the adapter into the base model it was trained on")
    return config


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise ConfigError(f"{weights}: not found")
    try:  # safetensors never unpickles: a pickle under this name is refused as a bad header, its payload unrun
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ConfigError(f"{weights}: not a readable safetensors file ({reason})") from None


def _mismatch(state: dict, wanted: dict) -> list[str]:
    return ([f"missing {k}" for k in wanted if k not in state] + [f"unexpected {k}" for k in state if k not in wanted]
            + [f"{k} has shape {tuple(state[k].shape)}, expected {tuple(wanted[k].shape)}"
               for k in wanted if k in state and state[k].shape != wanted[k].shape])


def _refusal(weights: Path, problems: list[str]) -> ConfigError:
    return ConfigError(f"{weights}: does not match the method in its config: {problems[0]}"
                       + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


def load(model: nn.Module, directory: str | os.PathLike) -> Attachment:
    """Attach the saved method to a fresh `model` and load its weights; refuses a base model of another shape.
    A peft LoRA adapter (adapter_config.json with peft_type LORA) is read as the equivalent unipeft method."""
    directory = Path(directory)
    if not config_path(directory).is_file() and _legacy_kind(directory) == "peft":
        from .peft_format import load_peft
        return load_peft(model, directory)
    config = _checked_config(model, directory)
    state = _read_weights(directory)
    attachment = attach(model, Method.from_dict(config["method"]))
    problems = _mismatch(state, attachment.state_dict(fold=False))
    if problems:
        attachment.detach()
        raise _refusal(directory / WEIGHTS, problems)
    model.load_state_dict(state, strict=False)
    return attachment


@torch.no_grad()
def restore(attachment: Attachment, directory: str | os.PathLike) -> None:
    """Load an adapter saved from the same method (as `save(fold=False)` writes it for a training checkpoint) into
    an existing attachment, in place: every trained tensor is copied bit for bit; nothing is re-attached."""
    directory = Path(directory)
    config = _checked_config(attachment.model, directory)
    if Method.from_dict(config["method"]).to_dict() != attachment.method.to_dict():
        raise ConfigError(f"{config_path(directory)}: method {config['method'].get('name')!r} is not the method "
                          f"attached ({attachment.method.name!r}, same settings); resume with the method it was "
                          "trained with")
    state = _read_weights(directory)
    wanted = attachment.state_dict(fold=False)
    problems = _mismatch(state, wanted)
    if problems:
        raise _refusal(directory / WEIGHTS, problems)
    parameters = dict(attachment.model.named_parameters())
    for name, tensor in state.items():
        parameters[name].copy_(tensor)
