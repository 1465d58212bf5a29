"""Shards of a tokenize run: the unit of resume and of multi-process work.

Source images are numbered per split and cut into shards of ``shard_size`` (``plan_shards``); tar
shards are read as they are stored, so there one input shard gives one shard per split
(``plan_tar_shards``). ``Rows`` reads every stored row of one image (the image, its flip, its
crops) and never raises, so DataLoader workers survive files that break under them; ``write_shard`` writes one shard's rows as an
Arrow file, then a JSON marker that means "done"; ``prefetch`` overlaps image reading with
encoding when there are no DataLoader workers.
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vqgpt.atomic import write_json
from vqgpt.prior.data import SPLITS

from ..data import ImageSource, TarShardSource, read_pixels_many
from ..settings import TokenizeConfig

__all__ = ["Rows", "image_rows", "rows_of", "collate", "Shard", "plan_shards", "plan_tar_shards", "plan_batches", "write_shard",
           "shard_done",
           "prefetch", "open_shards", "shard_failures", "shard_images", "given", "row_sizes"]


class Rows(Dataset):
    """Item ``(split, i)`` → every stored row of source image ``i``: the image, its flip,
    its crops (``image_rows``). Never raises: an image that fails to load comes back with a
    reason, so DataLoader workers survive files that change under them."""

    def __init__(self, sources: dict[str, ImageSource], config: TokenizeConfig) -> None:
        self.sources = sources
        self.config = config

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources.values())

    def __getitem__(self, key: tuple[str, int]) -> dict[str, Any]:
        split, i = key
        src = self.sources[split]
        return image_rows(src, split, i, self.config, lambda sizes: src.pixels_at_sizes(i, sizes))

    def __getitems__(self, keys: list[tuple[str, int]]) -> list[dict[str, Any]]:
        """A batch's items at once (the DataLoader's batched fetch): the same items, but files are read
        by ``read_pixels_many``, which resizes small plain PNGs of one shape together."""
        files: dict[int, Any] = {}  # position in keys → the file's path or bytes, or why there is none
        for k, (split, i) in enumerate(keys):
            try:
                files[k] = self.sources[split].file_at(i)
            except Exception as err:  # noqa: BLE001  (counted with its reason by rows_of)
                files[k] = err
        read: dict[int, Any] = {k: f for k, f in files.items() if isinstance(f, Exception)}
        for split, src in self.sources.items():
            mine = [k for k, f in files.items() if keys[k][0] == split and isinstance(f, (str, bytes, bytearray))]
            if mine:
                sizes = row_sizes(src.image_size, self.config, split)
                read.update(zip(mine, read_pixels_many([files[k] for k in mine], src.channels, sizes)))
        return [image_rows(self.sources[split], split, i, self.config, given(read[k])) if k in read
                else self[(split, i)]  # a source that holds no files (``file_at`` is None)
                for k, (split, i) in enumerate(keys)]


def given(result: list[torch.Tensor] | Exception) -> Callable[[Sequence[int]], list[torch.Tensor]]:
    """A ``pixels`` for ``rows_of`` that hands over pixels read already, or raises why they could not be."""
    def pixels(sizes: Sequence[int]) -> list[torch.Tensor]:
        if isinstance(result, Exception):
            raise result
        return result
    return pixels


def row_sizes(size: int, config: TokenizeConfig, split: str) -> tuple[int, ...]:
    """The sizes ``rows_of`` reads an image of ``split`` at: ``size``, and the larger size its crops
    are cut from when it has crops."""
    if not any(v.startswith("#crop") for v in config.variants(split)):
        return (size,)
    return size, max(size, round(size * config.crop_resize))


def image_rows(src: ImageSource, split: str, i: int, config: TokenizeConfig,
               pixels: Callable[[Sequence[int]], list[torch.Tensor]]) -> dict[str, Any]:
    """Every stored row of image ``i`` of ``split``: ``pixels(sizes)`` gives it at each size from one
    decode (uint8 or float, as ``ImageSource.pixels_at_sizes``); rows are (V, C, S, S) of the same type,
    converted for the model a batch at a time. Crops are seeded by (seed, split, i), never by a running RNG."""
    return rows_of(split, src.source_of(i), src.label_of(i), i, src.image_size, src.channels, config, pixels)


def rows_of(split: str, name: str, label: int, crop_key: int | str, size: int, channels: int,
            config: TokenizeConfig, pixels: Callable[[Sequence[int]], list[torch.Tensor]]) -> dict[str, Any]:
    """``image_rows`` for an image known by ``name`` (crops seeded by ``crop_key``)."""
    variants = config.variants(split)
    try:
        n_crops = sum(v.startswith("#crop") for v in variants)
        sizes = row_sizes(size, config, split)
        big_size = sizes[-1]
        image, *bigger = pixels(sizes)  # (C, S, S), [(C, S', S')]: one decode
        rows = [image]
        if "#flip" in variants:
            rows.append(image.flip(-1))
        if n_crops:
            big = bigger[0]
            g = torch.Generator().manual_seed(zlib.crc32(f"{config.data_seed}:{split}:{crop_key}:crops".encode()))
            offsets = torch.randint(0, big_size - size + 1, (n_crops, 2), generator=g).tolist()
            rows += [big[:, top:top + size, left:left + size] for top, left in offsets]
        images = rows[0][None] if len(rows) == 1 else torch.stack(rows)  # (V, C, S, S)
        reason = ""
    except Exception as err:  # a file that vanished or broke after indexing
        images = torch.zeros(len(variants), channels, size, size, dtype=torch.uint8)
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:200]
    return {"images": images, "label": label,
            "sources": [name + v for v in variants], "origin": name, "reason": reason}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [not it["reason"] for it in items]
    images = [it["images"] for it, good in zip(items, ok) if good]
    return {
        "images": torch.cat(images) if images else None,  # (R, C, S, S)
        "labels": [it["label"] for it, good in zip(items, ok) if good for _ in it["sources"]],
        "sources": [s for it, good in zip(items, ok) if good for s in it["sources"]],
        "failed": [(it["origin"], it["reason"]) for it, good in zip(items, ok) if not good],
        "num_images": len(items),
    }


@dataclass(frozen=True)
class Shard:
    split: str
    index: int  # shard number within its split
    number: int  # global shard number (train first), decides the process
    start: int  # first source image
    stop: int  # one past the last source image

    @property
    def stem(self) -> str:
        return f"{self.split}-{self.index:05d}"


def plan_shards(sizes: dict[str, int], shard_size: int) -> list[Shard]:
    shards: list[Shard] = []
    for split in SPLITS:
        for k in range(math.ceil(sizes[split] / shard_size)):
            shards.append(Shard(split, k, len(shards), k * shard_size,
                                 min(sizes[split], (k + 1) * shard_size)))
    return shards


def plan_tar_shards(sources: dict[str, TarShardSource]) -> list[Shard]:
    """One shard per split of each input tar that holds images of that split, numbered by the tar
    (both splits of tar ``t`` go to process ``t % world_size``, which reads that tar alone)."""
    first = next(iter(sources.values()))
    shards = []
    for split in SPLITS:
        for t in range(len(first.paths)):
            items = sources[split].items_of_shard(t)
            if len(items):
                shards.append(Shard(split, t, t, items.start, items.stop))
    return shards


def plan_batches(shards: list[Shard], images_per_batch: int) -> list[tuple[Shard, list[tuple[str, int]], bool]]:
    """Batches of (split, index) keys that never cross a shard boundary, each with whether it is
    its shard's last."""
    out = []
    for shard in shards:
        for start in range(shard.start, shard.stop, images_per_batch):
            stop = min(shard.stop, start + images_per_batch)
            out.append((shard, [(shard.split, i) for i in range(start, stop)], stop == shard.stop))
    return out


# --------------------------------------------------------------------------- writing


def write_shard(partial: Path, shard: Shard, codes: list[np.ndarray], labels: list[int],
                 sources: list[str], failed: list[tuple[str, str]], features: Any, images: int) -> None:
    """Write one shard as an Arrow file (then its JSON marker, which means "done")."""
    from datasets.arrow_writer import ArrowWriter

    dtype = np.dtype(features["codes"].dtype)
    shape = features["codes"].shape
    array = np.concatenate(codes).astype(dtype) if codes else np.zeros((0, *shape), dtype)
    tmp = partial / f"{shard.stem}.arrow.tmp-{os.getpid()}"
    writer = ArrowWriter(features=features, path=str(tmp))
    try:
        writer.write_batch({"codes": array, "label": np.asarray(labels, dtype=np.int32),
                            "source": list(sources)})
        writer.finalize()
    finally:
        writer.close()
    os.replace(tmp, partial / f"{shard.stem}.arrow")
    marker = {"rows": len(sources), "images": images, "failed": failed}  # images: read, with the failed ones
    write_json(partial / f"{shard.stem}.json", marker)


def shard_done(partial: Path, shard: Shard) -> bool:
    return (partial / f"{shard.stem}.json").is_file() and (partial / f"{shard.stem}.arrow").is_file()


def prefetch(iterable: Any, depth: int = 2) -> Iterator[Any]:
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead, so reading
    images (PIL decodes without the GIL) overlaps encoding when there are no DataLoader
    workers. Exceptions are re-raised here."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def run() -> None:
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        items.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(("end", done))
        except BaseException as err:  # handed to the consumer
            items.put(("error", err))

    thread = threading.Thread(target=run, name="tokenize-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():
            try:
                items.get_nowait()
            except queue.Empty:
                thread.join(0.1)


def open_shards(partial: Path, shards: list[Shard], split: str) -> list[Any]:
    from datasets import Dataset

    return [Dataset.from_file(str(partial / f"{s.stem}.arrow")) for s in shards if s.split == split]


def shard_images(partial: Path, shards: list[Shard]) -> int:
    """Source images the finished ``shards`` read, the failed ones included."""
    return sum(json.loads((partial / f"{s.stem}.json").read_text())["images"] for s in shards)


def shard_failures(partial: Path, shards: list[Shard]) -> list[tuple[str, str]]:
    failed: list[tuple[str, str]] = []
    for s in shards:
        failed += [tuple(f) for f in json.loads((partial / f"{s.stem}.json").read_text())["failed"]]
    return failed
