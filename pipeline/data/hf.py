"""Data sources backed by ``datasets``: a ``save_to_disk`` folder or a hub dataset (``hf:owner/name``).

The first ``datasets.Image`` column holds the images; the first ``ClassLabel`` column (else an
integer ``label``/``labels``/``class``/``target`` column) the classes. A source's own
``train`` and ``validation`` (or ``valid``/``val``/``test``) splits are used when present;
otherwise it is split like a folder (``source.split_indices``). Without a network the hub fails
within seconds with a ValueError instead of hanging.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from PIL import Image

from .images import check_decodes, check_many, decode_image
from .source import ImageSource, require_nonempty, split_indices

__all__ = ["HFSource", "is_saved_dataset", "hf_source", "load_hub", "pick_splits", "hub_offline", "hub_reachable"]

_VAL_SPLIT_NAMES = ("validation", "valid", "val", "test")
_HUB_TIMEOUT_S = 4.0


class HFSource(ImageSource):
    """Rows of a ``datasets.Dataset`` with an ``Image`` column."""

    def __init__(self, spec: str, root: Path | None, parts: list[tuple[str, Any, list[int]]],
                 image_col: str, label_col: str | None, class_names: list[str],
                 image_size: int, channels: int, split: str, check: bool) -> None:
        import datasets

        super().__init__(spec, image_size, channels, split, class_names, root)
        # Images are decoded here (not by `datasets`) so errors and JPEG draft decoding
        # behave like folders; raw = {"bytes": ..., "path": ...}.
        self._parts: list[Any] = []
        rows: list[tuple[int, int]] = []  # (part, row)
        labels: list[int] = []
        sources: list[str] = []
        skipped: list[tuple[str, str]] = []
        for p, (name, ds, indices) in enumerate(parts):
            raw = ds.select_columns([image_col]).cast_column(image_col, datasets.Image(decode=False))
            self._parts.append(raw)
            part_labels = (ds.select_columns([label_col]).with_format("numpy")[:][label_col]
                           if label_col else None)
            good = [True] * len(indices)
            if check:
                good = []
                for start in range(0, len(indices), 1024):
                    chunk = indices[start:start + 1024]
                    blobs = [_raw_payload(r) for r in raw.select(chunk)[image_col]]
                    reasons = check_many(blobs, lambda b: "no image data" if b is None else check_decodes(b))
                    for i, r in zip(chunk, reasons):
                        good.append(r is None)
                        if r is not None:
                            skipped.append((f"{name}[{i}]", r))
            for i, ok in zip(indices, good):
                if ok:
                    rows.append((p, i))
                    labels.append(int(part_labels[i]) if part_labels is not None else -1)
                    sources.append(f"{name}[{i}]")
        self.rows = rows
        self.labels = labels
        self.sources = sources
        self._image_col = image_col
        self._set_skipped(skipped, len(rows) + len(skipped))

    def __len__(self) -> int:
        return len(self.rows)

    def label_of(self, index: int) -> int:
        return self.labels[index]

    def source_of(self, index: int) -> str:
        return self.sources[index]

    def file_at(self, index: int) -> bytes | str:
        part, row = self.rows[index]
        payload = _raw_payload(self._parts[part][row][self._image_col])
        if payload is None:
            raise ValueError(f"{self.sources[index]} holds no image data")
        return payload

    def load_pil(self, index: int, min_size: int) -> Image.Image:
        return decode_image(self.file_at(index), self.channels, min_size)


def _raw_payload(raw: dict | None) -> bytes | str | None:
    if not raw:
        return None
    return raw.get("bytes") or raw.get("path")


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _hf_columns(ds: Any, spec: str) -> tuple[str, str | None, list[str]]:
    """(image column, label column or None, class names) of a ``datasets.Dataset``."""
    import datasets

    image_col = next((c for c, f in ds.features.items() if isinstance(f, datasets.Image)), None)
    if image_col is None:
        raise ValueError(f"{spec} has no image column (a datasets.Image feature); columns: "
                         f"{', '.join(ds.column_names)}")
    label_col = next((c for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)), None)
    if label_col is not None:
        return image_col, label_col, list(ds.features[label_col].names)
    for name in ("label", "labels", "class", "target"):
        f = ds.features.get(name)
        if isinstance(f, datasets.Value) and f.dtype.startswith(("int", "uint")):
            values = ds.select_columns([name]).with_format("numpy")[:][name]
            top = int(values.max()) if len(values) else -1
            return image_col, name, [str(v) for v in range(top + 1)]
    return image_col, None, []


def pick_splits(names: list[str], spec: str) -> tuple[str, str | None]:
    """(the split to train on, the dataset's own validation split or None) among ``names``."""
    if not names:
        raise ValueError(f"{spec} holds no splits")
    train_name = "train" if "train" in names else (names[0] if len(names) == 1 else None)
    if train_name is None:
        raise ValueError(f"{spec} has splits {names} and none is named 'train'")
    return train_name, next((n for n in _VAL_SPLIT_NAMES if n in names and n != train_name), None)


def hf_source(data: Any, spec: str, root: Path | None, image_size: int, channels: int,
               split: str, seed: int, val_fraction: float, check: bool) -> ImageSource:
    import datasets

    if isinstance(data, datasets.DatasetDict):
        train_name, val_name = pick_splits(list(data.keys()), spec)
    elif isinstance(data, datasets.Dataset):
        data, train_name, val_name = datasets.DatasetDict(train=data), "train", None
    else:
        raise ValueError(f"{spec} is not a map-style datasets Dataset/DatasetDict")
    base = data[train_name]
    image_col, label_col, class_names = _hf_columns(base, spec)
    if val_name is not None:  # the dataset's own split
        wanted = {"train": [train_name], "validation": [val_name], "all": [train_name, val_name]}[split]
        parts = [(n, data[n], list(range(len(data[n])))) for n in wanted]
        for n in wanted:
            missing = {c for c in (image_col, label_col) if c} - set(data[n].column_names)
            if missing:
                raise ValueError(f"split {n!r} of {spec} lacks column(s) {sorted(missing)}")
        total = sum(len(data[n]) for n in wanted)
    else:
        indices = split_indices(len(base), split, seed, val_fraction)
        parts, total = [(train_name, base, indices)], len(base)
    require_nonempty([i for *_, ix in parts for i in ix], split, spec, total, val_fraction)
    source = HFSource(spec, root, parts, image_col, label_col, class_names, image_size, channels, split, check)
    source.split_fraction = None if val_name is not None else val_fraction
    return source


def hub_offline() -> bool:
    """Has the user told ``datasets``/the hub to stay offline (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE)?"""
    import datasets.config

    return bool(getattr(datasets.config, "HF_HUB_OFFLINE", False)) or any(
        os.environ.get(var, "").lower() in ("1", "true", "yes") for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable(timeout: float = _HUB_TIMEOUT_S) -> bool:
    """Can a TCP connection to the hub endpoint be opened within ``timeout`` seconds?
    Runs in a daemon thread so a stalled DNS lookup cannot block either."""
    import datasets.config

    url = urlparse(getattr(datasets.config, "HF_ENDPOINT", None) or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def load_hub(name: str, streaming: bool = False) -> Any:
    """``datasets.load_dataset(name)`` (whole, or as a stream), or a ValueError in one line."""
    import datasets
    import datasets.config

    offline = hub_offline()
    if not offline and not hub_reachable():
        raise ValueError(f"could not reach the Hugging Face hub for {name} (no network?); "
                         f"download it where there is one and pass its save_to_disk folder")
    try:
        return datasets.load_dataset(name, streaming=streaming)
    except Exception as err:  # datasets/hub raise many types (HTTP, not found, gated, ...)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if offline:
            raise ValueError(f"could not reach the Hugging Face hub for {name} (HF_HUB_OFFLINE is "
                             f"set) and the local cache cannot provide it: {reason}") from None
        raise ValueError(f"could not load {name} from the Hugging Face hub: {reason}") from None
