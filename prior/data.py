"""Token datasets: the code grids the prior learns from. This module owns the format — its
features, metadata, version check, writer and readers; `vqgpt tokenize` builds datasets with it.

Format: a `datasets.DatasetDict` saved with `save_to_disk(DIR)`, splits `train` and
`validation`, columns `codes` (Array2D (h, w) of the narrowest integer type holding K-1), `label`
(int32, -1 = no class) and `source` (string); the metadata dict (`token_meta`) is a JSON string in
each split's `info.description` and the file `DIR/vqgpt_tokens.json`.

`load_token_dataset(dir)` checks all of that and returns torch datasets of prior sequences
`[condition token, code_0 … code_{h·w-1}]` (LongTensor[1 + h·w]); `read_token_meta(dir)` reads
only the metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vqgpt.atomic import write_folder

from .model import PriorSpec

__all__ = ["code_range", "TokenData", "TokenSequences", "load_token_dataset", "write_token_dataset", "save_token_dataset",
           "token_meta", "token_features", "read_token_meta", "is_token_dataset", "code_counts", "TOKENS_FILE",
           "SPLITS", "codes_dtype"]

TOKENS_FILE = "vqgpt_tokens.json"
TOKENS_FORMAT = "vqgpt-tokens"
TOKENS_VERSION = 1
SPLITS = ("train", "validation")
_REQUIRED_META = ("tokenizer_fingerprint", "grid", "codebook_size", "class_names")


def codes_dtype(codebook_size: int) -> str:
    """The narrowest of uint8/uint16/int32 that holds codes 0 … K-1."""
    if codebook_size <= 256:
        return "uint8"
    if codebook_size <= 65536:
        return "uint16"
    return "int32"


def token_features(grid: Sequence[int], codebook_size: int) -> Any:
    """The `datasets.Features` of a token dataset with this grid (h, w) and codebook size."""
    from datasets import Array2D, Features, Value

    return Features({"codes": Array2D(shape=tuple(int(g) for g in grid), dtype=codes_dtype(codebook_size)),
                     "label": Value("int32"), "source": Value("string")})


def token_meta(*, tokenizer_fingerprint: str, grid: Sequence[int], codebook_size: int,
               class_names: Sequence[str] = (), image_size: int = 0, channels: int = 0,
               augmentations: dict | None = None, data: str = "", split_seed: int = 0,
               val_fraction: float | None = 0.1) -> dict:
    """The metadata of a token dataset. `split_seed`/`val_fraction` record how the source was split
    into train and validation (None when the source has its own split), so whoever recomputes
    "held-out" images of `data` gets exactly the images the prior never saw."""
    return {
        "format": TOKENS_FORMAT, "version": TOKENS_VERSION, "tokenizer_fingerprint": tokenizer_fingerprint,
        "grid": [int(g) for g in grid], "codebook_size": int(codebook_size), "class_names": list(class_names),
        "image_size": int(image_size), "channels": int(channels), "augmentations": augmentations or {},
        "data": str(data), "split": {"seed": int(split_seed), "val_fraction": val_fraction},
    }


def is_token_dataset(path: str | Path) -> bool:
    """Does `path` hold a finished token dataset (metadata file and datasets' index)?"""
    path = Path(path)
    return (path / TOKENS_FILE).is_file() and (path / "dataset_dict.json").is_file()


def _check_meta(meta: Any, where: Path) -> dict:
    if not isinstance(meta, dict) or meta.get("format") != TOKENS_FORMAT:
        raise ValueError(f"{where} is not a vqgpt token dataset (no {TOKENS_FILE} metadata); make one with `vqgpt tokenize`")
    if meta.get("version") != TOKENS_VERSION:
        raise ValueError(f"{where}: token dataset version {meta.get('version')!r}; this vqgpt reads version {TOKENS_VERSION}")
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"{where}: token dataset metadata lacks {', '.join(missing)}")
    return meta


def read_token_meta(path: str | Path) -> dict:
    """The metadata of a token dataset folder (`vqgpt_tokens.json`), checked; clear errors otherwise."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"token dataset folder {root} does not exist")
    file = root / TOKENS_FILE
    if not file.is_file():
        if (root / ".partial").is_dir():
            raise ValueError(f"{root} is an unfinished token dataset; rerun the same tokenize command to finish it")
        raise ValueError(f"{root} is not a token dataset (no {TOKENS_FILE}); make one with `vqgpt tokenize`")
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON ({err})") from None
    return _check_meta(meta, root)


def save_token_dataset(splits: dict[str, Any], meta: dict, path: str | Path) -> Path:
    """Save `{"train": datasets.Dataset, "validation": ...}` with `meta` as a token dataset at `path`.

    Written into a hidden sibling folder first and then swapped in, so `path` holds either the
    old dataset or the complete new one, never a half-written one."""
    from datasets import DatasetDict

    path = Path(path)
    _check_meta(meta, path)
    description = json.dumps(meta, sort_keys=True)
    for ds in splits.values():
        ds.info.description = description
    with write_folder(path) as tmp:
        DatasetDict(splits).save_to_disk(str(tmp))
        (tmp / TOKENS_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def code_range(split: Any) -> tuple[int, int]:
    """(smallest, largest) code in the `codes` column of a `datasets.Dataset` ((0, -1) when empty)."""
    low, high = None, None
    for batch in split.select_columns(["codes"]).with_format("numpy").iter(batch_size=8192):
        codes = np.asarray(batch["codes"])
        if codes.size:
            low = int(codes.min()) if low is None else min(low, int(codes.min()))
            high = int(codes.max()) if high is None else max(high, int(codes.max()))
    return (0, -1) if low is None else (low, high)


def code_counts(splits: Sequence[Any], codebook_size: int) -> np.ndarray:
    """How often each code occurs in the `codes` column of these `datasets.Dataset`s → int64[K]."""
    counts = np.zeros(codebook_size, dtype=np.int64)
    for ds in splits:
        for batch in ds.select_columns(["codes"]).with_format("numpy").iter(batch_size=8192):
            counts += np.bincount(np.asarray(batch["codes"]).reshape(-1), minlength=codebook_size)[:codebook_size]
    return counts


class TokenSequences(Dataset):
    """One split as prior sequences: item i → LongTensor[1 + h·w] = [condition token, codes…].

    Rows are read from the Arrow table lazily; `__getitems__` fetches a whole batch at once."""

    def __init__(self, table: Any, spec: PriorSpec) -> None:
        self.table = table.with_format("numpy", columns=["codes", "label"])
        self.spec = spec

    def __len__(self) -> int:
        return len(self.table)

    def _to_sequences(self, codes: np.ndarray, labels: np.ndarray) -> torch.Tensor:
        codes = torch.from_numpy(np.asarray(codes).astype(np.int64)).reshape(len(labels), -1)  # (B, h*w)
        cond = self.spec.condition_tokens(torch.from_numpy(np.asarray(labels).astype(np.int64)), len(labels))  # (B,)
        return torch.cat([cond[:, None], codes], dim=1)  # (B, 1 + h*w)

    def __getitem__(self, index: int) -> torch.Tensor:
        row = self.table[int(index)]
        return self._to_sequences(row["codes"][None], np.asarray([row["label"]]))[0]

    def __getitems__(self, indices: Sequence[int]) -> list[torch.Tensor]:
        rows = self.table[list(map(int, indices))]
        return list(self._to_sequences(np.stack(list(rows["codes"])) if rows["codes"].dtype == object else rows["codes"],
                                       rows["label"]))


@dataclass
class TokenData:
    """A loaded token dataset: sequences per split, the metadata dict and the prior spec it implies."""

    train: TokenSequences
    validation: TokenSequences
    meta: dict
    spec: PriorSpec
    path: str


def _read_meta(root: Path, dsd: Any) -> dict:
    """The metadata file, or (for a copy that lost it) the JSON in a split's description."""
    if (root / TOKENS_FILE).is_file():
        return read_token_meta(root)
    for split in dsd.values():
        try:
            return _check_meta(json.loads(split.info.description or ""), root)
        except json.JSONDecodeError:
            continue
    return _check_meta(None, root)


def load_token_dataset(path: str | Path) -> TokenData:
    """Open and check a token dataset folder; clear FileNotFoundError/ValueError when it is not one."""
    from datasets import DatasetDict, load_from_disk

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"token dataset {root} does not exist; make one with `vqgpt tokenize`")
    if not root.is_dir():
        raise ValueError(f"token dataset {root} is a file, not a folder written by `vqgpt tokenize`")
    if not (root / "dataset_dict.json").is_file():
        read_token_meta(root)  # an unfinished dataset gets its own message
        raise ValueError(f"{root} is not a token dataset (no dataset_dict.json); make one with `vqgpt tokenize`")
    try:
        dsd = load_from_disk(str(root))
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds; the user needs one line
        raise ValueError(f"{root} could not be read as a datasets folder: {type(err).__name__}: {err}") from None
    if not isinstance(dsd, DatasetDict):
        raise ValueError(f"{root} holds a single dataset, not the train/validation DatasetDict of a token dataset")
    meta = _read_meta(root, dsd)
    missing = [s for s in SPLITS if s not in dsd]
    if missing:
        raise ValueError(f"token dataset {root} lacks the split(s) {', '.join(missing)} (it has {', '.join(dsd) or 'none'})")
    try:
        spec = PriorSpec(int(meta["codebook_size"]), tuple(meta["grid"]), tuple(meta["class_names"]),
                         str(meta["tokenizer_fingerprint"]))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{root}: bad token dataset metadata: {err}") from None
    for name in SPLITS:
        split = dsd[name]
        cols = set(split.column_names)
        if not {"codes", "label"} <= cols:
            raise ValueError(f"{root}/{name} lacks the columns {sorted({'codes', 'label'} - cols)}")
        shape = getattr(split.features["codes"], "shape", None)
        if shape is None or tuple(shape) != spec.grid:
            raise ValueError(f"{root}/{name}: codes have shape {shape}, metadata says grid {list(spec.grid)}")
        if len(split) == 0:
            raise ValueError(f"{root}/{name} is empty")
        labels = np.asarray(split.with_format("numpy")["label"])
        if labels.min() < -1 or labels.max() >= spec.num_classes:
            raise ValueError(f"{root}/{name}: labels span {labels.min()}..{labels.max()} but there are {spec.num_classes} classes")
        low, high = code_range(split)  # a code ≥ K would be read as a class token, or index past the vocabulary
        if low < 0 or high >= spec.codebook_size:
            raise ValueError(f"{root}/{name}: codes span {low}..{high} but the codebook has {spec.codebook_size} codes "
                             f"(0..{spec.codebook_size - 1}); the dataset or its {TOKENS_FILE} was altered")
    return TokenData(TokenSequences(dsd["train"], spec), TokenSequences(dsd["validation"], spec), meta, spec, str(root))


def write_token_dataset(
    path: str | Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, list[str]]],
    codebook_size: int,
    class_names: Sequence[str] = (),
    tokenizer_fingerprint: str = "",
    image_size: int = 0,
    channels: int = 0,
    augmentations: dict | None = None,
    data: str = "",
) -> Path:
    """Write a token dataset from arrays (atomically). `splits` maps split name → (codes int array
    [N, h, w], labels int array [N], optional sources list[str])."""
    from datasets import Dataset as HFDataset

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose a new folder or delete it")
    first = next(iter(splits.values()))[0]
    h, w = int(first.shape[1]), int(first.shape[2])
    meta = token_meta(tokenizer_fingerprint=tokenizer_fingerprint, grid=(h, w), codebook_size=codebook_size,
                      class_names=class_names, image_size=image_size, channels=channels,
                      augmentations=augmentations, data=data)
    features = token_features((h, w), codebook_size)
    dtype = codes_dtype(codebook_size)
    built = {}
    for name, parts in splits.items():
        codes, labels = np.asarray(parts[0]), np.asarray(parts[1])
        if codes.ndim != 3 or codes.shape[1:] != (h, w):
            raise ValueError(f"split {name}: codes must be [N, {h}, {w}], got {list(codes.shape)}")
        if codes.min() < 0 or codes.max() >= codebook_size:
            raise ValueError(f"split {name}: codes must be in 0..{codebook_size - 1}")
        sources = list(parts[2]) if len(parts) > 2 else [f"index:{i}" for i in range(len(codes))]
        table = {"codes": codes.astype(dtype), "label": labels.astype(np.int32), "source": sources}
        built[name] = HFDataset.from_dict(table, features=features)
    return save_token_dataset(built, meta, path)
