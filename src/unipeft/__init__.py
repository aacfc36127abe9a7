"""unipeft: parameter-efficient fine-tuning as modifications Δh of a frozen model's hidden states.

An implementation of He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning" (ICLR 2022).
The design space and the presets import no torch, so reading and checking methods takes milliseconds; what
touches a model (attach, load) is imported on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .design import ConfigError, Method, Modification  # noqa: E402
from .presets import names as preset_names, preset  # noqa: E402

_ON_FIRST_USE = {"Attachment": "attachment", "attach": "attachment", "attachment_of": "attachment",
                 "load": "checkpoint", "read_config": "checkpoint", "save": "checkpoint",
                 "load_peft": "peft_format", "save_peft": "peft_format", "merge_and_unload": "peft_format",
                 "AdapterTrainer": "trainer", "adapter_trainer": "trainer"}


def __getattr__(name: str):
    if name in _ON_FIRST_USE:
        return getattr(importlib.import_module(f".{_ON_FIRST_USE[name]}", __name__), name)
    raise AttributeError(f"module 'unipeft' has no attribute {name!r}")


__all__ = ["AdapterTrainer", "Attachment", "ConfigError", "Method", "Modification", "adapter_trainer", "attach",
           "attachment_of", "load", "load_peft", "merge_and_unload", "preset", "preset_names", "read_config", "save",
           "save_peft"]
