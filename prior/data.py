"""Token datasets: the code grids the prior learns from.

Format (contract, written by `pipeline` tokenize, and by `write_token_dataset` here): a
`datasets.DatasetDict` saved with `save_to_disk(DIR)`, splits `train` and `validation`, columns
`codes` (Array2D (h, w)), `label` (int32, -1 = no class) and `source` (string); the metadata dict
is a JSON string in each split's `info.description` and the file `DIR/vqgpt_tokens.json`.

`load_token_dataset(dir)` checks all of that and returns torch datasets of prior sequences
`[condition token, code_0 … code_{h·w-1}]` (LongTensor[1 + h·w]).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .model import PriorSpec

__all__ = ["TokenData", "TokenSequences", "load_token_dataset", "write_token_dataset", "TOKENS_FILE", "codes_dtype"]

logger = logging.getLogger(__name__)

TOKENS_FILE = "vqgpt_tokens.json"
TOKENS_FORMAT = "vqgpt-tokens"
TOKENS_VERSION = 1
SPLITS = ("train", "validation")


def codes_dtype(codebook_size: int) -> str:
    """The narrowest of uint8/uint16/int32 that holds codes 0 … K-1."""
    if codebook_size <= 256:
        return "uint8"
    if codebook_size <= 65536:
        return "uint16"
    return "int32"


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
    meta = None
    file = root / TOKENS_FILE
    if file.is_file():
        try:
            meta = json.loads(file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{file} is not valid JSON: {err}") from None
    else:
        for split in dsd.values():
            try:
                meta = json.loads(split.info.description or "")
                break
            except json.JSONDecodeError:
                continue
    if not isinstance(meta, dict) or meta.get("format") != TOKENS_FORMAT:
        raise ValueError(f"{root} is not a vqgpt token dataset (no {TOKENS_FILE} metadata); make one with `vqgpt tokenize`")
    if meta.get("version") != TOKENS_VERSION:
        raise ValueError(f"{root}: token dataset version {meta.get('version')!r}; this vqgpt reads version {TOKENS_VERSION}")
    missing = [k for k in ("tokenizer_fingerprint", "grid", "codebook_size", "class_names") if k not in meta]
    if missing:
        raise ValueError(f"{root}: token dataset metadata lacks {', '.join(missing)}")
    return meta


def load_token_dataset(path: str | Path) -> TokenData:
    """Open and check a token dataset folder; clear FileNotFoundError/ValueError when it is not one."""
    from datasets import DatasetDict, load_from_disk

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"token dataset {root} does not exist; make one with `vqgpt tokenize`")
    if not root.is_dir():
        raise ValueError(f"token dataset {root} is a file, not a folder written by `vqgpt tokenize`")
    if not (root / "dataset_dict.json").is_file():
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
    """Write a token dataset in the contract's format (atomically). `splits` maps split name →
    (codes int array [N, h, w], labels int array [N], optional sources list[str])."""
    from datasets import Array2D, Dataset as HFDataset, DatasetDict, DatasetInfo, Features, Value

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose a new folder or delete it")
    first = next(iter(splits.values()))[0]
    h, w = int(first.shape[1]), int(first.shape[2])
    meta = {
        "format": TOKENS_FORMAT, "version": TOKENS_VERSION, "tokenizer_fingerprint": tokenizer_fingerprint,
        "grid": [h, w], "codebook_size": int(codebook_size), "class_names": list(class_names),
        "image_size": int(image_size), "channels": int(channels), "augmentations": augmentations or {}, "data": data,
    }
    dtype = codes_dtype(codebook_size)
    features = Features({"codes": Array2D(shape=(h, w), dtype=dtype), "label": Value("int32"), "source": Value("string")})
    built = {}
    for name, parts in splits.items():
        codes, labels = np.asarray(parts[0]), np.asarray(parts[1])
        if codes.ndim != 3 or codes.shape[1:] != (h, w):
            raise ValueError(f"split {name}: codes must be [N, {h}, {w}], got {list(codes.shape)}")
        if codes.min() < 0 or codes.max() >= codebook_size:
            raise ValueError(f"split {name}: codes must be in 0..{codebook_size - 1}")
        sources = list(parts[2]) if len(parts) > 2 else [f"index:{i}" for i in range(len(codes))]
        table = {"codes": codes.astype(dtype), "label": labels.astype(np.int32), "source": sources}
        info = DatasetInfo(description=json.dumps(meta), features=features)
        built[name] = HFDataset.from_dict(table, features=features, info=info)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        DatasetDict(built).save_to_disk(str(tmp))
        (tmp / TOKENS_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path
