"""A hub dataset read as a stream, for ``tokenize --streaming`` (``datasets.load_dataset(..., streaming=True)``).

Nothing is downloaded whole: the dataset's data files are the units of work (``IterableDataset.shard``
to one file), each read front to back once, its images handed over undecoded and decoded here like
every other source's (EXIF orientation, colour mode, resize). The number of images is not known
before the end, so a dataset without a validation split of its own is split per image:
image ``k`` of data file ``f`` is held out when ``crc32("seed:f:k") / 2³² < val_fraction``
(deterministic, about ``val_fraction`` of the images). A dataset's own
``validation``/``valid``/``val``/``test`` split is used as it is. Classes come from the first
``ClassLabel`` column, else an integer ``label``/``labels``/``class``/``target`` column (classes
"0" … the largest value seen).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator


from .hf import hub_offline, hub_reachable, load_hub, pick_splits

__all__ = ["HubStream", "open_hub_stream", "hub_download_bytes", "wants_stream"]

logger = logging.getLogger(__name__)

_LABEL_NAMES = ("label", "labels", "class", "target")


@dataclass
class HubStream:
    """The parts (the dataset's own splits used) of a streamed hub dataset and how to read them."""

    spec: str
    image_size: int
    channels: int
    seed: int
    val_fraction: float | None  # None: the dataset has its own validation split
    parts: dict[str, Any]  # part name → IterableDataset (image column undecoded)
    part_split: dict[str, str]  # part name → "train" / "validation" (None: split per image)
    image_col: str
    label_col: str | None
    class_names: list[str] | None  # None: integer labels, classes known at the end
    num_examples: dict[str, int | None] = field(default_factory=dict)  # part → as the hub states it
    files: dict[str, Any] = field(default_factory=dict)  # part → its data files (or their number)

    def units(self) -> list[tuple[str, int]]:
        """The units of work, in order: (part, data file index)."""
        return [(part, f) for part, ds in self.parts.items() for f in range(ds.num_shards)]

    def splits_of(self, part: str) -> tuple[str, ...]:
        """The splits the images of ``part`` go to."""
        own = self.part_split.get(part)
        return (own,) if own else ("train", "validation")

    def split_of(self, part: str, f: int, k: int) -> str:
        own = self.part_split.get(part)
        if own:
            return own
        held = zlib.crc32(f"{self.seed}:{f}:{k}".encode()) < (self.val_fraction or 0.0) * 2**32
        return "validation" if held else "train"

    def examples(self, part: str, f: int) -> Iterator[tuple[int, str, Any, int]]:
        """``(k, name, payload, label)`` of every image of data file ``f`` of ``part``, in order;
        payload is the image's bytes (or a path), None when the row holds none."""
        ds = self.parts[part]
        one = ds.shard(num_shards=ds.num_shards, index=f) if ds.num_shards > 1 else ds
        k = 0
        # .iter, not iter(): inside a DataLoader worker iter() would split the file among the workers again
        for rows in one.iter(batch_size=256):
            labels = rows[self.label_col] if self.label_col else [None] * len(rows[self.image_col])
            for raw, label in zip(rows[self.image_col], labels):
                payload = (raw.get("bytes") or raw.get("path")) if isinstance(raw, dict) else None
                yield k, f"{part}/{f}/{k}", payload, -1 if label is None else int(label)
                k += 1

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data read, for the resume check: the dataset and its data files (on the
        hub their URLs name the revision)."""
        digest = hashlib.sha256(json.dumps(self.files, sort_keys=True).encode()).hexdigest()[:16]
        return {"dataset": self.spec, "files": digest, "val_fraction": self.val_fraction}


def _data_files(ds: Any) -> list[str] | None:
    """The data files behind a streamed dataset, when ``datasets`` exposes them."""
    kwargs = getattr(getattr(ds, "_ex_iterable", None), "kwargs", None) or {}
    for key in ("files", "filepaths", "data_files"):
        value = kwargs.get(key)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return [str(v) for v in value]
    return None


def open_hub_stream(spec: str, image_size: int, channels: int, seed: int, val_fraction: float) -> HubStream:
    """``hf:owner/name`` opened for streaming; ValueError for a dataset without an image column or
    without a train split (as ``hf_source``)."""
    import datasets

    name = spec[3:].strip()
    if not name:
        raise ValueError("hf: needs a dataset name, e.g. hf:owner/name")
    data = load_hub(name, streaming=True)
    if isinstance(data, datasets.IterableDataset):
        data = datasets.IterableDatasetDict(train=data)
    if not isinstance(data, datasets.IterableDatasetDict):
        raise ValueError(f"{spec} did not open as a streamed dataset")
    train_name, val_name = pick_splits(list(data.keys()), spec)
    base = data[train_name]
    if base.features is None:  # some formats only know their columns once a row is read
        base = base._resolve_features()
    image_col = next((c for c, f in base.features.items() if isinstance(f, datasets.Image)), None)
    if image_col is None:
        raise ValueError(f"{spec} has no image column (a datasets.Image feature); columns: "
                         f"{', '.join(base.features)}")
    label_col = next((c for c, f in base.features.items() if isinstance(f, datasets.ClassLabel)), None)
    class_names = list(base.features[label_col].names) if label_col else None
    if label_col is None:
        label_col = next((c for c in _LABEL_NAMES if isinstance(base.features.get(c), datasets.Value)
                          and base.features[c].dtype.startswith(("int", "uint"))), None)
        class_names = None if label_col else []
    wanted = [train_name] + ([val_name] if val_name else [])
    parts: dict[str, Any] = {}
    files = {part: _data_files(data[part]) or data[part].num_shards for part in wanted}
    for part in wanted:
        ds = data[part] if part != train_name else base
        columns = [image_col] + ([label_col] if label_col else [])
        missing = set(columns) - set((ds.features or base.features).keys())
        if missing:
            raise ValueError(f"split {part!r} of {spec} lacks column(s) {sorted(missing)}")
        parts[part] = ds.select_columns(columns).cast_column(image_col, datasets.Image(decode=False))
    part_split = {train_name: "train", val_name: "validation"} if val_name else {}
    info = getattr(base, "info", None)
    splits_info = getattr(info, "splits", None) or {}
    num_examples = {part: getattr(splits_info.get(part), "num_examples", None) or None for part in parts}
    return HubStream(spec, image_size, channels, seed, None if val_name else val_fraction, parts, part_split,
                     image_col, label_col, class_names, num_examples, files)


def wants_stream(data: Any, streaming: bool | None) -> bool:
    """Is ``data`` read as a stream? ``streaming`` True/False decides for ``hf:`` datasets (anything else
    with True is a ValueError: folders, saved datasets and tar shards are always read as stored);
    None streams a hub dataset when the hub says its download is larger than half the free space
    where ``datasets`` caches it."""
    spec = str(data).strip()
    if not spec.startswith("hf:"):
        if streaming:
            raise ValueError(f"`streaming` applies to hub datasets (hf:owner/name); {spec} is read as it is "
                             "stored, one image at a time, already")
        return False
    if streaming is not None:
        return bool(streaming)
    import datasets.config

    size = hub_download_bytes(spec[3:].strip())
    cache = Path(datasets.config.HF_DATASETS_CACHE)
    while not cache.exists() and cache != cache.parent:
        cache = cache.parent
    free = shutil.disk_usage(cache).free
    if size is not None and size > free / 2:
        logger.info("streaming %s: its download (%.1f GB) is more than half the free space in %s (%.1f GB) "
                    "(change: --no-streaming)", spec, size / 1e9, cache, free / 1e9)
        return True
    return False


def hub_download_bytes(name: str) -> int | None:
    """How many bytes downloading ``name`` whole would take, as the hub's metadata says (None when
    it does not say, or the hub cannot be asked)."""
    import datasets

    if hub_offline() or not hub_reachable():
        return None
    try:
        info = datasets.load_dataset_builder(name).info
    except Exception:  # no network, no metadata, a gated dataset: the caller decides without it
        return None
    size = getattr(info, "download_size", None) or getattr(info, "dataset_size", None)
    return int(size) if size else None

