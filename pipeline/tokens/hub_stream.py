"""Tokenize a streamed hub dataset (``HubStream``): the shards of the run and the reader that feeds
``encode_shards``.

Each data file of the dataset is a unit of work, read front to back once, like a tar shard: unit
``u`` makes one output shard per split its images go to, is encoded by process ``u % world_size``,
and DataLoader workers split a process's units again. A unit's shards are written only when the
whole file has been read, so a run killed (or a connection lost) mid-file resumes at that file.
A row whose image does not decode is skipped and counted; a file that cannot be read to its end
stops the run with the reason (finished files are kept for the resume), since the images it still
held cannot be counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..data import HubStream, read_pixels_many
from ..settings import TokenizeConfig
from .encode import UnitRows, unit_batches
from .shards import Shard, collate, given, open_shards, row_sizes, rows_of

__all__ = ["plan_stream_shards", "hub_batches", "classes_seen", "StreamReadError"]

Batches = Iterator[tuple[Shard, bool, dict[str, Any]]]


class StreamReadError(ValueError):
    """A data file of a streamed dataset broke off (one line for the command line, like bad input)."""


def plan_stream_shards(stream: HubStream) -> list[Shard]:
    """One shard per split of each unit (data file), numbered by the unit (``start``/``stop`` are
    not known before the file is read: both 0)."""
    return [Shard(split, u, u, 0, 0) for u, (part, _f) in enumerate(stream.units()) for split in stream.splits_of(part)]


class HubRows(UnitRows):
    """The batches of ``shards`` (of ``plan_stream_shards``): a unit is a data file."""

    def __init__(self, stream: HubStream, config: TokenizeConfig, shards: list[Shard], images_per_batch: int,
                 finish: Any = None) -> None:
        super().__init__(shards, images_per_batch, finish)
        self.stream = stream
        self.config = config
        self.units = stream.units()

    def _unit(self, u: int, unit_shards: list[Shard]) -> Batches:
        shards = {s.split: s for s in unit_shards}
        part, f = self.units[u]
        stream = self.stream
        read: dict[str, list[tuple[str, int, Any]]] = {split: [] for split in shards}  # (name, label, payload)
        k = -1
        try:
            for k, name, payload, label in stream.examples(part, f):
                split = stream.split_of(part, f, k)
                if split not in shards:  # that split's shard of this file is done already (a resumed run)
                    continue
                read[split].append((name, label, payload))
                if len(read[split]) == self.images_per_batch:
                    yield shards[split], False, collate(self._rows(split, read[split]))
                    read[split] = []
        except Exception as err:  # handed to the main process as an item: a worker's exception loses its message
            reason = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            yield shards[next(iter(shards))], False, {"error": (
                f"{stream.spec}: data file {f + 1} of split {part!r} could not be read after {k + 1} image(s) "
                f"({reason}); the files finished so far are kept: run the same command again to resume")}
            return
        for split, shard in shards.items():
            yield shard, True, collate(self._rows(split, read[split]))

    def _rows(self, split: str, read: list[tuple[str, int, Any]]) -> list[dict[str, Any]]:
        """The rows of a batch of streamed images, decoded together (``read_pixels_many``); a row
        without image data is counted as unreadable."""
        stream = self.stream
        sizes = row_sizes(stream.image_size, self.config, split)
        payloads = [payload for _, _, payload in read if payload is not None]
        pixels = iter(read_pixels_many(payloads, stream.channels, sizes))
        return [rows_of(split, name, label, name, stream.image_size, stream.channels, self.config,
                        given(next(pixels) if payload is not None else ValueError("the row holds no image data")))
                for name, label, payload in read]


def hub_batches(stream: HubStream, config: TokenizeConfig, shards: list[Shard], images_per_batch: int,
                num_workers: int, pin_memory: bool, finish: Any = None) -> Batches:
    """``(shard, last, batch)`` for ``shards``, each data file streamed once (by one worker)."""
    for shard, last, batch in unit_batches(HubRows(stream, config, shards, images_per_batch, finish), num_workers,
                                           pin_memory):
        if "error" in batch:
            raise StreamReadError(batch["error"])
        yield shard, last, batch


def classes_seen(partial: Path, shards: list[Shard]) -> list[str]:
    """Classes "0" … the largest label in the written shards (a plain integer label column, whose
    classes a stream only knows at its end)."""
    top = -1
    for split in ("train", "validation"):
        for ds in open_shards(partial, shards, split):
            if len(ds):
                top = max(top, int(np.max(ds.with_format("numpy")["label"])))
    return [str(c) for c in range(top + 1)]
