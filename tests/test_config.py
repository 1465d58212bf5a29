"""Config layering: preset → JSON file → --set, with type coercion and clear errors."""

import json
from dataclasses import dataclass

import pytest

from vqgpt.pipeline.settings import build_configs, coerce, parse_sets, read_config_file


@dataclass(frozen=True)
class Model:
    size: int = 8
    mult: tuple[int, ...] = (1, 2)
    norm: bool = True
    path: str | None = None

    def __post_init__(self):
        if self.size % 2:
            raise ValueError(f"size must be even, got {self.size}")


@dataclass(frozen=True)
class Train:
    lr: float = 1e-3
    steps: int = 10
    size: int = 3  # same name as Model.size: bare "size" is ambiguous


SECTIONS = {"model": Model, "train": Train}


def test_layers_apply_in_order(tmp_path):
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"model": {"size": 16}, "train": {"lr": 0.5}}))
    layers = [{"model": {"size": 4, "mult": [1, 1, 2]}}, read_config_file(cfg_file),
              parse_sets(["train.lr=0.25", "steps=7", "norm=false", "path=none"])]
    cfg = build_configs(SECTIONS, layers)
    assert cfg["model"] == Model(size=16, mult=(1, 1, 2), norm=False, path=None)
    assert cfg["train"] == Train(lr=0.25, steps=7)


def test_tuple_and_optional_from_strings():
    cfg = build_configs(SECTIONS, [parse_sets(["mult=1,2,4", "path=/x"])])
    assert cfg["model"].mult == (1, 2, 4) and cfg["model"].path == "/x"


@pytest.mark.parametrize(
    "sets, message",
    [
        (["model.sise=4"], "unknown config key 'model.sise' (did you mean size"),
        (["nope=1"], "unknown config key 'nope'"),
        (["size=4"], "ambiguous"),
        (["model.size=abc"], "expected an integer"),
        (["model.size=3"], "size must be even"),
        (["other.size=3"], "unknown config section"),
        (["norm=maybe"], "expected true/false"),
    ],
)
def test_bad_keys_and_values(sets, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build_configs(SECTIONS, [parse_sets(sets)])


def test_parse_sets_needs_equals():
    with pytest.raises(ValueError, match="key=value"):
        parse_sets(["steps"])


def test_read_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_config_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_config_file(bad)


def test_coerce_bool_is_not_int():
    with pytest.raises(ValueError):
        coerce(True, int, "k")
    assert coerce(3.0, int, "k") == 3


def test_infinite_and_nan_settings_are_refused():
    for bad in ("inf", "-inf", "nan", "1e999"):
        with pytest.raises(ValueError, match="expected a finite number"):
            build_configs(SECTIONS, [parse_sets([f"train.lr={bad}"])])
