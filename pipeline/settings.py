"""The pipeline's settings (``SampleConfig``, ``TokenizeConfig``) and how the CLI builds every
stage's frozen config dataclasses from presets, JSON files and ``--set key=value``.

No torch here: ``vqgpt --help`` builds its flags from these dataclasses' fields.

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
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from vqgpt.prior.config import PRECISIONS, SAMPLERS, sampling_value_error

__all__ = ["SampleConfig", "TokenizeConfig", "build_configs", "parse_sets", "read_config_file", "coerce"]


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
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(number):  # inf and nan are never a setting: they only fail later, far away
            raise ValueError(f"{key}: expected a finite number, got {value!r}")
        return number
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
                _refuse_renamed(key, field, [sections[section]], section)
                if field not in types_by_section[section]:
                    raise ValueError(_unknown_key_message(key, types_by_section, section))
            else:
                _refuse_renamed(key, field, list(sections.values()), None)
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


def _refuse_renamed(key: str, field: str, classes: list[type], section: str | None) -> None:
    """An old setting name (a dataclass' ``renamed`` map: old → new) is one line naming the new one."""
    for cls in classes:
        new = getattr(cls, "renamed", {}).get(field)
        if new is not None and not any(f.name == field for f in dataclasses.fields(cls)):
            raise ValueError(f"config key {key!r} was renamed to {f'{section}.{new}' if section else new!r}")


def _unknown_key_message(key: str, types_by_section: dict[str, dict[str, Any]], section: str | None) -> str:
    candidates = [
        f"{s}.{f}" for s, fields in types_by_section.items() if section in (None, s) for f in fields
    ]
    bare = key.rpartition(".")[2]
    close = difflib.get_close_matches(bare, [c.rpartition(".")[2] for c in candidates], n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown config key {key!r}{hint}"


# --------------------------------------------------------------------------- settings of the pipeline's verbs


@dataclass(frozen=True)
class SampleConfig:
    """Settings of one sampling call; the CLI's ``sample``/``complete`` flags are these fields."""

    num: int = field(default=16, metadata={"help": "images to draw (per class when classes are given)"})
    class_labels: tuple[int, ...] = ()  # class indices; empty = unconditional
    guidance: float | None = field(default=None, metadata={
        "help": "classifier-free guidance scale, 0–100 (1 = none; default: what train-prior chose on held-out data, "
                "recorded in the prior folder)"})
    temperature: float | None = field(default=None, metadata={
        "help": "softmax temperature, 0.01–100 (default: the prior's recorded choice, else 1)"})
    top_k: int | None = field(default=None, metadata={"help": "keep the K most likely codes"})
    top_p: float | None = field(default=None, metadata={"help": "nucleus sampling: keep codes up to mass P"})
    seed: int = field(default=0, metadata={"help": "random seed: the k-th image of a class is the same whatever "
                                                    "--num, --batch-size, --sampler (but sjd) or the other classes"})
    batch_size: int = field(default=256, metadata={"help": "images sampled per forward batch"})
    sampler: str = field(default="auto", metadata={"help": "ar (a code per forward pass), jacobi (several per pass, "
                                                         "same images as ar), sjd (speculative Jacobi: same "
                                                         "distribution, other images), auto (jacobi or ar, whichever "
                                                         "is faster here)"})
    precision: str = field(default="auto", metadata={"help": "number format of the sampling passes: fp32, bf16 "
                                                           "(fast on GPUs and on CPUs with AMX; codes may differ in "
                                                           "rounding ties), auto (bf16 on a GPU, fp32 on a CPU)"})

    def __post_init__(self) -> None:
        if self.num < 1:
            raise ValueError(f"`num` must be at least 1, got {self.num}")
        # None = the prior's recorded default, checked when the prior is loaded
        problem = sampling_value_error(1.0 if self.temperature is None else self.temperature,
                                       1.0 if self.guidance is None else self.guidance, self.top_k, self.top_p,
                                       fields=True)
        if problem:
            raise ValueError(problem)
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1, got {self.batch_size}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"`sampler` must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"`precision` must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def labels_per_image(self) -> list[int] | None:
        """One label per image: ``num`` images of each class, class by class."""
        if not self.class_labels:
            return None
        return [c for c in self.class_labels for _ in range(self.num)]


@dataclass(frozen=True)
class TokenizeConfig:
    """Settings of one tokenize run (image size and channels come from the tokenizer)."""

    renamed: ClassVar[dict[str, str]] = {"seed": "data_seed"}  # the split's seed has one name in every verb

    batch_size: int = field(default=256, metadata={"help": "rows per encode call"})
    num_workers: int | None = field(default=None, metadata={
        "help": "DataLoader worker processes reading images (default: none for under 1,024 images; else on a GPU "
                "one per CPU core but one, at most 4, and on the CPU one per torch thread, at most 4). On the CPU two "
                "or more workers also encode, one core each; 0 reads in a thread of the main process"})
    shard_size: int = field(default=2048, metadata={"help": "source images per shard (unit of resume and of multi-process work)"})
    streaming: bool | None = field(default=None, metadata={
        "help": "read an hf: dataset as a stream, never downloaded whole (default: when the hub says it is larger "
                "than half the free disk space of the datasets cache)"})
    flip: bool = field(default=False, metadata={"help": "also store a horizontally flipped copy of each image"})
    crops: int | None = field(default=None, metadata={
        "help": "also store this many random crops of each training image (default: derived from the data size — "
                "enough for about 10,000 training rows, at most 7; 0 for none)"})
    crop_resize: float = field(default=1.0625, metadata={
        "help": "crops are cut from the image resized to crop_resize × image_size: 1.0625 shifts by up to 1 px "
                "either way at 32 px and zooms 6 %% (larger values move the prior's samples away from the real "
                "images)"})
    augment_validation: bool = field(default=False, metadata={"help": "augment the validation split too (default: train only)"})
    data_seed: int = field(default=0, metadata={"help": "seed of the train/validation split and of the crop positions"})
    val_fraction: float = field(default=0.1, metadata={"help": "validation share for sources without their own split"})
    crops_per_photo: int = field(default=256, metadata={"help": "'photos' source only: crops per photograph"})

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"invalid tokenize config: {msg}")

        if self.batch_size < 1:
            fail(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.num_workers is not None and self.num_workers < 0:
            fail(f"num_workers must be ≥ 0, got {self.num_workers}")
        if self.shard_size < 1:
            fail(f"shard_size must be ≥ 1, got {self.shard_size}")
        if self.crops is not None and self.crops < 0:
            fail(f"crops must be ≥ 0, got {self.crops}")
        if not 1.0 <= self.crop_resize <= 2.0:
            fail(f"crop_resize must be in [1, 2], got {self.crop_resize}")
        if not 0.0 <= self.val_fraction < 1.0:
            fail(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.crops_per_photo < 1:
            fail(f"crops_per_photo must be ≥ 1, got {self.crops_per_photo}")

    def variants(self, split: str) -> list[str]:
        """Row suffixes stored per source image of ``split``: "" (the image itself), then
        "#flip", then "#crop0" … "#crop{n-1}"."""
        out = [""]
        if split == "train" or self.augment_validation:
            out += ["#flip"] * self.flip + [f"#crop{k}" for k in range(self.crops or 0)]
        return out

    def augmentations(self) -> dict[str, Any]:
        """The ``augmentations`` entry of the token dataset's metadata."""
        splits = ["train", "validation"] if self.augment_validation else ["train"]
        out: dict[str, Any] = {"flip": self.flip, "crops": self.crops or 0}
        if self.crops:
            out["crop_resize"] = self.crop_resize
        out["splits"] = splits if (self.flip or self.crops) else []
        return out
