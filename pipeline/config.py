"""Building frozen config dataclasses from presets, JSON files and ``--set key=value``.

Every concern has one frozen dataclass (tokenizer architecture, tokenizer training, prior
architecture, prior training, sampling). The CLI never parses a setting by hand: it layers

    preset dict  →  ``--config file.json``  →  ``--set key=value`` (repeatable)

over the dataclass defaults, and the dataclass' own ``__post_init__`` validates the result.
A JSON file and ``--set`` both address fields as ``section.field`` (``model.codebook_size``)
or, when the name is unique among the sections, as the bare field (``codebook_size``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any

__all__ = ["build_configs", "parse_sets", "read_config_file", "config_to_dict", "coerce"]


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as a JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a ``--config`` JSON file: ``{"model": {...}, "train": {...}}`` or flat keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"config file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a JSON object")
    return data


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """``["a.b=1", "c=x"]`` → ``{"a.b": "1", "c": "x"}``; values stay strings until coerced."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Turn a JSON value or a ``--set`` string into ``annotation`` (int, float, bool, str,
    tuple[int, ...], X | None); a value that does not fit is a one-line ValueError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        last: Exception | None = None
        for arg in args:
            try:
                return coerce(value, arg, key)
            except ValueError as err:
                last = err
        raise last if last else ValueError(f"{key}: cannot use {value!r}")
    if origin is tuple:
        (inner, *rest) = typing.get_args(annotation) or (str,)
        if isinstance(value, str):
            text = value.strip().strip("()[]")
            parts = [p for p in (s.strip() for s in text.split(",")) if p]
        elif isinstance(value, (list, tuple)):
            parts = list(value)
        else:
            raise ValueError(f"{key}: expected a list, got {value!r}")
        return tuple(coerce(p, inner, key) for p in parts)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).replace("_", ""))
        except ValueError:
            raise ValueError(f"{key}: expected an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, (str, int, float)):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return str(value)
    typing_literal = typing.get_origin(annotation) is typing.Literal
    if typing_literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ValueError(f"{key}: expected one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    return value


def _flatten(data: dict[str, Any], sections: set[str]) -> dict[str, Any]:
    """``{"model": {"a": 1}, "b": 2}`` → ``{"model.a": 1, "b": 2}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in sections and isinstance(value, dict):
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    return flat


def build_configs(
    sections: dict[str, type],
    layers: list[dict[str, Any]],
) -> dict[str, Any]:
    """Build one frozen dataclass per section from layered overrides.

    ``sections`` maps a section name to its dataclass, e.g. ``{"model": VQGANConfig,
    "train": TokenizerTrainConfig}``. ``layers`` are applied in order (preset, JSON file,
    ``--set``); each is nested (``{"model": {...}}``) or flat (``{"model.x": 1, "y": 2}``).
    Unknown keys, ambiguous bare keys and values of the wrong type raise ValueError.
    """
    types_by_section = {name: _field_types(cls) for name, cls in sections.items()}
    values: dict[str, dict[str, Any]] = {name: {} for name in sections}
    for layer in layers:
        for key, raw in _flatten(layer, set(sections)).items():
            section, _, field = key.rpartition(".")
            if section:
                if section not in sections:
                    raise ValueError(
                        f"unknown config section {section!r} in {key!r}; sections: {', '.join(sections)}"
                    )
                if field not in types_by_section[section]:
                    raise ValueError(_unknown_key_message(key, types_by_section, section))
            else:
                owners = [s for s, fields in types_by_section.items() if field in fields]
                if not owners:
                    raise ValueError(_unknown_key_message(key, types_by_section, None))
                if len(owners) > 1:
                    raise ValueError(
                        f"config key {field!r} is ambiguous; write one of "
                        + ", ".join(f"{s}.{field}" for s in owners)
                    )
                section = owners[0]
            values[section][field] = coerce(raw, types_by_section[section][field], key)
    built = {}
    for name, cls in sections.items():
        try:
            built[name] = cls(**values[name])
        except TypeError as err:  # a field that cannot be set at construction time
            raise ValueError(f"invalid {name} config: {err}") from None
    return built


def _unknown_key_message(key: str, types_by_section: dict[str, dict[str, Any]], section: str | None) -> str:
    candidates = [
        f"{s}.{f}" for s, fields in types_by_section.items() if section in (None, s) for f in fields
    ]
    bare = key.rpartition(".")[2]
    close = difflib.get_close_matches(bare, [c.rpartition(".")[2] for c in candidates], n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown config key {key!r}{hint}"
