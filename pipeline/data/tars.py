"""WebDataset tar shards as a data source: ``--data "shards/train-{00000..00099}.tar"``.

A shard is an uncompressed tar whose members are grouped into samples by key, as ``webdataset``
groups them (``dir/name.ext`` → key ``dir/name``, consecutive members with one key are one sample;
``__*__`` members are metadata). A sample's image is its ``jpg``/``jpeg``/``png``/``webp``/``bmp``/
``gif``/``tif``/``tiff`` member (any case; the first one when there are several); its class, when the shards have
classes, is its ``cls`` (else ``class`` or ``label``) member: text holding an integer class index
(classes "0" … "max"), or a class name (classes sorted by name, as image folders' sub-folders).
Either every sample has a class member or none has.

Reading: the shards' tar headers are listed once (``tarfile``, no image is read) to learn the
samples, their classes and where each image's bytes lie; that index is the split's order and
lets any verb read one image by its offset. ``tokenize`` reads each shard once, front to back,
through one open file (``read_images``): the image members' bytes at the offsets the index
recorded, so the headers are parsed once, when listed (parsing them again with ``webdataset``
while reading took ~65 µs per sample here, more than decoding a 40×40 PNG); each process and each
of its DataLoader workers reads its own shards. A shard whose size or modification time changed
since it was listed is not read (its images are counted as unreadable, with that reason).

Split: samples are sorted by key (then shard) — the order an image folder's sorted file names
give — and split by ``split_indices``; a split's images are then listed in the order the shards
hold them (shard by shard). Shards holding the images of a folder (keys = the files' relative
paths without extension, classes as ``cls`` names) therefore split exactly like the folder.
"""

from __future__ import annotations

import os
import re
import tarfile
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from .images import check_decodes, check_many, decode_image
from .source import ImageSource, require_nonempty, split_indices

__all__ = ["IMAGE_MEMBERS", "CLASS_MEMBERS", "is_shard_spec", "expand_shards", "index_shards", "TarShardSource",
           "read_images", "shard_stamp"]

IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")  # GIF, TIFF: first frame
CLASS_MEMBERS = ("cls", "class", "label")
_SKIP_META = r"__[^/]*__($|/)"  # webdataset's metadata members


def is_shard_spec(spec: str) -> bool:
    """``--data`` naming tar shards: a path or brace pattern ending in ``.tar``."""
    return spec.lower().endswith(".tar")


def expand_shards(spec: str) -> list[Path]:
    """The shard files of a brace pattern (``train-{00000..00099}.tar``, as webdataset expands it);
    every file it names must exist."""
    from webdataset.shardlists import expand_urls

    names = [Path(os.path.expanduser(u)) for u in expand_urls(spec)]
    missing = [p for p in names if not p.is_file()]
    if len(missing) == len(names):
        raise ValueError(f"no shard file matches {spec} (e.g. {missing[0]} does not exist)")
    if missing:
        raise ValueError(f"{len(missing)} of the {len(names)} shards of {spec} do not exist (e.g. {missing[0]})")
    return names


@dataclass(frozen=True)
class Sample:
    """One sample of a shard: its key, image member (None when it has none), where the image's bytes
    lie, and its class text (None: no class member)."""

    key: str
    member: str | None
    offset: int
    size: int
    label: str | None


def _index_tar(path: Path) -> list[Sample]:
    """The samples of one shard from its headers (the class members' few bytes are read)."""
    from webdataset.tariterators import base_plus_ext, group_by_keys

    try:
        tar = tarfile.open(path, "r:")  # uncompressed and seekable: image bytes are skipped, not read
    except tarfile.ReadError as err:
        raise ValueError(f"{path} is not a WebDataset shard: not an uncompressed tar file ({err})") from None

    def members() -> Iterator[dict[str, Any]]:
        while (info := tar.next()) is not None:
            name = info.name
            tar.members = []  # tarfile keeps every header otherwise
            if not info.isreg() or ("/" not in name and name.startswith("__") and name.endswith("__")):
                continue
            if re.match(_SKIP_META, name):
                continue
            ext = (base_plus_ext(name)[1] or "").lower()
            data: Any = (name, info.offset_data, info.size)
            if ext in CLASS_MEMBERS:
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
            yield {"fname": name, "data": data, "__url__": str(path)}

    samples: list[Sample] = []
    try:
        with tar:
            for group in group_by_keys(members()):
                image = next((e for e in group if e in IMAGE_MEMBERS), None)
                member, offset, size = group[image] if image else (None, 0, 0)
                label = next((group[e] for e in CLASS_MEMBERS if e in group), None)
                text = label.decode("utf-8", "replace").strip() if label is not None else None
                samples.append(Sample(group["__key__"], member, offset, size, text))
    except (tarfile.TarError, ValueError) as err:  # a damaged header, two members of one name in a sample
        raise ValueError(f"{path} is not a WebDataset shard: {str(err).splitlines()[0]}") from None
    if not any(s.member for s in samples):
        raise ValueError(f"{path} is not a WebDataset shard of images: no {'/'.join(IMAGE_MEMBERS)} member")
    return samples


def index_shards(paths: list[Path]) -> list[list[Sample]]:
    """Every shard's samples, in shard order. Python's ``tarfile`` takes ~60 µs per sample to list
    (1.2 s for 20,000), so on Linux several shards are listed by as many forked processes as this
    process has cores to itself (the cores over the processes of an ``accelerate launch`` on this
    machine, each of which lists every shard)."""
    per_process = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    workers = min(len(paths), per_process)
    if workers < 2 or sum(p.stat().st_size for p in paths) < 8 << 20 or not hasattr(os, "fork"):
        return [_index_tar(p) for p in paths]  # small: a process costs more than it saves
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork: the children run only tarfile; spawning would import this package (and torch) again
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_index_tar, paths))


def _classes(texts: list[str | None], spec: str) -> tuple[list[str], dict[str, int]]:
    """Class names and text → index, from the class members of every sample with an image."""
    given = [t for t in texts if t is not None]
    if not given:
        return [], {}
    if len(given) != len(texts):
        raise ValueError(f"{len(texts) - len(given)} of the {len(texts)} samples of {spec} have no class member "
                         f"({'/'.join(CLASS_MEMBERS)}) while the others have one")
    if all(re.fullmatch(r"\d+", t) for t in given):  # class indices
        top = max(int(t) for t in given)
        return [str(c) for c in range(top + 1)], {t: int(t) for t in set(given)}
    names = sorted(set(given))
    return names, {n: i for i, n in enumerate(names)}


class TarShardSource(ImageSource):
    """One split of WebDataset tar shards (see the module docstring)."""

    def __init__(self, spec: str, paths: list[Path], index: list[list[Sample]], image_size: int, channels: int,
                 split: str, seed: int, val_fraction: float, check: bool) -> None:
        with_image = [(t, s) for t, samples in enumerate(index) for s in samples if s.member]
        class_names, class_of = _classes([s.label for _, s in with_image], spec)
        root = Path(os.path.commonpath([p.parent for p in paths]))
        super().__init__(spec, image_size, channels, split, class_names, root)
        self.paths = paths
        self.stamps = [shard_stamp(p) for p in paths]  # what the shards were when listed (read_images checks)
        self.names = [p.relative_to(root).as_posix() for p in paths]
        self.left_out = [(f"{self.names[t]}:{s.key}", "a sample without an image member")
                         for t, samples in enumerate(index) for s in samples if not s.member]
        by_key = sorted(range(len(with_image)), key=lambda k: (with_image[k][1].key, with_image[k][0]))
        chosen = sorted(by_key[p] for p in split_indices(len(with_image), split, seed, val_fraction))
        self.split_fraction = val_fraction
        require_nonempty(chosen, split, spec, len(with_image), val_fraction)
        items = [with_image[k] for k in chosen]  # (shard, sample), in the order the shards hold them
        skipped: list[tuple[str, str]] = []
        if check:
            reasons = check_many(items, lambda item: _check(self.paths[item[0]], item[1]))
            skipped = [(self._name(t, s), r) for (t, s), r in zip(items, reasons) if r is not None]
            items = [item for item, r in zip(items, reasons) if r is None]
        self.items = items
        self.labels = [class_of[s.label] if class_names else -1 for _, s in items]  # type: ignore[index]
        self._shard_of = [t for t, _ in items]  # ascending
        self._set_skipped(skipped, len(items) + len(skipped))

    def _name(self, shard: int, sample: Sample) -> str:
        return f"{self.names[shard]}:{sample.member}"

    def __len__(self) -> int:
        return len(self.items)

    def label_of(self, index: int) -> int:
        return self.labels[index]

    def source_of(self, index: int) -> str:
        return self._name(*self.items[index])

    def identity_of(self, index: int) -> str:
        return f"{self.source_of(index)}:{self.items[index][1].size}"

    def file_at(self, index: int) -> bytes:
        shard, sample = self.items[index]
        return _read(self.paths[shard], sample)

    def load_pil(self, index: int, min_size: int) -> Image.Image:
        return decode_image(self.file_at(index), self.channels, min_size)

    def items_of_shard(self, shard: int) -> range:
        """This split's indices of the images shard ``shard`` holds (consecutive: items are in shard order)."""
        return range(bisect_left(self._shard_of, shard), bisect_left(self._shard_of, shard + 1))


def _read(path: Path, sample: Sample) -> bytes:
    with open(path, "rb") as f:
        f.seek(sample.offset)
        data = f.read(sample.size)
    if len(data) != sample.size:
        raise ValueError(f"{sample.member} is cut short ({len(data)} of {sample.size} bytes)")
    return data


def _check(path: Path, sample: Sample) -> str | None:
    try:
        return check_decodes(_read(path, sample))
    except (OSError, ValueError) as err:
        return f"{type(err).__name__}: {err}".splitlines()[0][:200]


def shard_stamp(path: Path) -> tuple[int, int]:
    """(size, modification time in ns) of a shard file."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def read_images(path: Path, samples: list[Sample], stamp: tuple[int, int]) -> Iterator[tuple[Sample, bytes]]:
    """``(sample, image bytes)`` for ``samples`` (listed from ``path`` when its ``shard_stamp`` was
    ``stamp``), read in the order of their offsets through one open file: one forward pass.
    ValueError when the shard changed since it was listed, or ends before an image does."""
    with open(path, "rb") as f:
        now = os.fstat(f.fileno())
        if (now.st_size, now.st_mtime_ns) != stamp:
            raise ValueError(f"{path.name} changed after it was listed (size or modification time)")
        for sample in sorted(samples, key=lambda s: s.offset):
            f.seek(sample.offset)
            data = f.read(sample.size)
            if len(data) != sample.size:
                raise ValueError(f"{sample.member} is cut short ({len(data)} of {sample.size} bytes)")
            yield sample, data
