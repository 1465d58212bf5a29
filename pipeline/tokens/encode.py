"""The encoding loop of a tokenize run: batches of image rows in, one Arrow file per shard out.

Two readers feed it ``(shard, last, batch)``: ``indexed_batches`` (any source, images read by
index through a DataLoader over ``Rows``) and ``streamed_batches`` (tar shards, each read once,
front to back, by ``read_images``; a process reads only its own shards and its DataLoader workers
split them again). Readers hand over 8-bit pixels where the source has them; the main process converts a
whole batch for the model at once (``to_model``), on the device.

Who encodes depends on the device. On a GPU this process encodes while DataLoader workers decode.
On the CPU, with two or more workers, every worker also encodes its own batches on one core
(``WorkerEncoder``) and hands back codes: a tokenizer's convolutions on small images use cores
better side by side than split by intra-op threads (on 2 cores at 32 px, two one-thread encoders
make 3,700 images/s against one two-thread encoder's 3,050), and an image decoded on the core that
encodes it never stalls the other core's threads. Without workers a thread reads ahead (its Python
competes with the encoder for the GIL, so workers are faster).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from vqgpt.tokenizer import VQGAN

from ..data import ImageSource, TarShardSource, read_images, read_pixels_many, to_model
from ..data.tars import Sample
from ..settings import TokenizeConfig
from .shards import Rows, Shard, collate, given, image_rows, plan_batches, prefetch, row_sizes, write_shard

logger = logging.getLogger(__name__)

__all__ = ["encode_shards", "indexed_batches", "streamed_batches", "unit_batches", "UnitRows", "WorkerEncoder"]

Batches = Iterator[tuple[Shard, bool, dict[str, Any]]]
Finish = Callable[[dict[str, Any]], dict[str, Any]]


class WorkerEncoder:
    """Run in a DataLoader worker (one intra-op thread, as DataLoader sets it): a collated batch's
    ``images`` → its ``codes`` (int32 ndarray[R, h, w]); the pixels are dropped, so only codes cross
    between processes, as a numpy array: pickled with the batch, where a tensor would travel as a
    shared-memory file descriptor, one socket connection per batch (2 ms of the main process's CPU
    each, measured). The model reaches the workers with the loader (shared pages under fork)."""

    def __init__(self, model: VQGAN) -> None:
        self.model = model

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if batch["images"] is not None:
            with torch.inference_mode():
                batch["codes"] = self.model.encode(to_model(batch["images"])).to(torch.int32).numpy()  # (R, h, w)
            batch["images"] = None
        return batch


class _CollateThen:
    """``collate``, then ``finish`` (a class, not a lambda: spawned workers receive it pickled)."""

    def __init__(self, finish: Finish) -> None:
        self.finish = finish

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return self.finish(collate(items))


def indexed_batches(sources: dict[str, ImageSource], config: TokenizeConfig, shards: list[Shard],
                    images_per_batch: int, num_workers: int, pin_memory: bool, finish: Finish | None = None) -> Batches:
    """``(shard, last, batch)`` for ``shards``, their images read by index; ``finish`` (a
    ``WorkerEncoder``) is applied to each batch inside the workers."""
    plan = plan_batches(shards, images_per_batch)
    loader = DataLoader(Rows(sources, config), batch_sampler=[keys for _, keys, _ in plan], num_workers=num_workers,
                        collate_fn=collate if finish is None else _CollateThen(finish), pin_memory=pin_memory, persistent_workers=False)
    batches = iter(loader) if num_workers > 0 else prefetch(loader)
    try:
        for (shard, _keys, last), batch in zip(plan, batches):
            yield shard, last, batch
    finally:
        if hasattr(batches, "close"):
            batches.close()  # stops the prefetch thread


class UnitRows(IterableDataset):
    """The batches of ``shards`` grouped by unit of reading (``Shard.index``: an input tar, a data
    file), each unit read once, front to back, by ``_unit``; DataLoader worker ``w`` of ``W`` reads
    the units ``w``, ``w + W``, … of the list. ``finish`` runs on every batch but an error item."""

    _unit: Callable[[int, list[Shard]], Batches]  # (unit, its shards) → its batches: each reader's own

    def __init__(self, shards: list[Shard], images_per_batch: int, finish: Finish | None = None) -> None:
        self.shards = shards
        self.images_per_batch = images_per_batch
        self.finish = finish

    def __iter__(self) -> Batches:
        units = sorted({s.index for s in self.shards})
        worker = get_worker_info()
        if worker is not None:
            units = units[worker.id::worker.num_workers]
        for u in units:
            for shard, last, batch in self._unit(u, [s for s in self.shards if s.index == u]):
                yield shard, last, (self.finish(batch) if self.finish is not None and "error" not in batch else batch)


def unit_batches(rows: UnitRows, num_workers: int, pin_memory: bool) -> Batches:
    """``(shard, last, batch)`` of ``rows``, by at most one worker per unit."""
    workers = min(num_workers, len({s.index for s in rows.shards}))
    loader = DataLoader(rows, batch_size=None, num_workers=workers, collate_fn=_as_is, pin_memory=pin_memory,
                        persistent_workers=False)
    batches = iter(loader) if workers > 0 else prefetch(loader)
    try:
        yield from batches
    finally:
        if hasattr(batches, "close"):
            batches.close()


class TarRows(UnitRows):
    """The batches of ``shards`` (of ``plan_tar_shards``): a unit is an input tar."""

    def __init__(self, sources: dict[str, TarShardSource], config: TokenizeConfig, shards: list[Shard],
                 images_per_batch: int, finish: Finish | None = None) -> None:
        super().__init__(shards, images_per_batch, finish)
        self.sources = sources
        self.config = config

    def _unit(self, t: int, shards: list[Shard]) -> Batches:
        by_sample: dict[Sample, tuple[Shard, int]] = {}  # sample → (shard, index in its split)
        for shard in shards:
            src = self.sources[shard.split]
            by_sample.update({src.items[i][1]: (shard, i) for i in range(shard.start, shard.stop)})
        any_source = self.sources[shards[0].split]
        read: dict[Shard, list[tuple[int, bytes]]] = {s: [] for s in shards}  # a batch's (index, bytes) so far
        lost: dict[Shard, list[dict[str, Any]]] = {s: [] for s in shards}
        try:
            for sample, data in read_images(any_source.paths[t], list(by_sample), any_source.stamps[t]):
                shard, i = by_sample.pop(sample)
                read[shard].append((i, data))
                if len(read[shard]) == self.images_per_batch:
                    yield shard, False, collate(self._rows(shard, read[shard]))
                    read[shard] = []
        except (OSError, ValueError) as err:  # a shard changed or cut short since it was listed: counted, not lost
            reason = f"the shard could not be read from here on: {type(err).__name__}: {err}".splitlines()[0][:200]
            for shard, i in by_sample.values():
                src = self.sources[shard.split]
                lost[shard].append(image_rows(src, shard.split, i, self.config, _unreadable(reason)))
        for shard in shards:
            yield shard, True, collate(self._rows(shard, read[shard]) + lost[shard])

    def _rows(self, shard: Shard, read: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
        """The rows of images read from a tar (index in the split, member bytes), decoded together
        (``read_pixels_many``, as ``Rows`` reads a batch)."""
        src = self.sources[shard.split]
        pixels = read_pixels_many([data for _, data in read], src.channels,
                                  row_sizes(src.image_size, self.config, shard.split))
        return [image_rows(src, shard.split, i, self.config, given(got)) for (i, _), got in zip(read, pixels)]


def _unreadable(reason: str) -> Callable[[Sequence[int]], list[torch.Tensor]]:
    def pixels(sizes: Sequence[int]) -> list[torch.Tensor]:
        raise OSError(reason)

    return pixels


def _as_is(item: Any) -> Any:
    return item


def streamed_batches(sources: dict[str, TarShardSource], config: TokenizeConfig, shards: list[Shard],
                     images_per_batch: int, num_workers: int, pin_memory: bool, finish: Finish | None = None) -> Batches:
    """``(shard, last, batch)`` for ``shards``, each input tar streamed once (by at most one worker
    per tar); ``finish`` as for ``indexed_batches``."""
    return unit_batches(TarRows(sources, config, shards, images_per_batch, finish), num_workers, pin_memory)


def encode_shards(model: VQGAN, batches: Iterable[tuple[Shard, bool, dict[str, Any]]], total: int | None, partial: Path,
                  features: Any, device: torch.device, progress: bool,
                  on_shard: Callable[[str, int], None] | None) -> None:
    """Encode every batch and write each shard as soon as its last batch is encoded."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    bar = tqdm(total=total, unit="img", desc="tokenize", disable=not progress, dynamic_ncols=True)
    open_shards: dict[Shard, dict[str, list[Any]]] = {}
    try:
        for shard, last, batch in batches:
            buf = open_shards.setdefault(shard, {"codes": [], "labels": [], "sources": [], "failed": [], "images": 0})
            codes = batch.get("codes")  # encoded in a worker already (WorkerEncoder)
            if codes is None and batch["images"] is not None:
                with torch.inference_mode(), autocast:
                    images = to_model(batch["images"].to(device, non_blocking=True))  # (R, C, S, S) in [-1, 1]
                    codes = model.encode(images)  # (R, h, w)
            if codes is not None:
                buf["codes"].append(codes if isinstance(codes, np.ndarray) else codes.to("cpu", torch.int64).numpy())
                buf["labels"] += batch["labels"]
                buf["sources"] += batch["sources"]
            buf["failed"] += batch["failed"]
            buf["images"] += batch["num_images"]
            bar.update(batch["num_images"])
            if last:
                _flush(partial, shard, open_shards.pop(shard), features, on_shard)
    finally:
        if hasattr(batches, "close"):
            batches.close()
        bar.close()


def _flush(partial: Path, shard: Shard, buf: dict[str, list[Any]], features: Any,
           on_shard: Callable[[str, int], None] | None) -> None:
    write_shard(partial, shard, buf["codes"], buf["labels"], buf["sources"], buf["failed"], features, buf["images"])
    for failed in buf["failed"]:
        logger.warning("could not read %s (%s); left out", *failed)
    if on_shard is not None:
        on_shard(shard.split, shard.index)
