"""The named methods of the paper, read from presets.yaml (data, side by side with Table 1)."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml

from .design import ConfigError, Method


@functools.cache
def _table() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(resources.files(__package__).joinpath("presets.yaml").read_text())


def names() -> list[str]:
    return list(_table())


def preset(name: str) -> Method:
    table = _table()
    if name not in table:
        raise ConfigError(f"method: unknown preset {name!r}; known presets: {', '.join(table)}")
    return Method.from_dict({"name": name, **table[name]})


def resolve(method: str | dict | Method) -> Method:
    """A preset name, a mapping in the presets.yaml schema, or a Method."""
    if isinstance(method, Method):
        return method
    if isinstance(method, str):
        return preset(method)
    return Method.from_dict(method)
