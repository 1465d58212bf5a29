"""Images ⇄ one archive: the tokenizer is the transform, the prior the entropy model.

``compress_images`` encodes images with the tokenizer and range-codes each grid under the prior
(``vqgpt.prior.entropy_coding.GridCoder``: the prior's plain distributions, computed the way the
decoder will); ``decode_archive`` checks the archive against the models, decodes the images asked
for and checks each grid's CRC32. ``compress_source`` / ``decompress_to_folder`` are what the
``compress`` / ``decompress`` verbs do with files.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vqgpt import prior as pr
from vqgpt import tokenizer as tk
from vqgpt.atomic import write_file, write_folder

from ..data import load_images, to_pil
from .archive import Archive, ImageRecord, codes_crc, pack, unpack

logger = logging.getLogger(__name__)

__all__ = ["CodecModels", "CompressStats", "Decoded", "Restored", "compress_grids", "compress_images", "decode_archive", "compress_source",
           "decompress_to_folder", "output_names"]

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class CodecModels:
    """The tokenizer and prior an archive is written and read with, and their fingerprints."""

    tokenizer: tk.VQGAN
    prior: torch.nn.Module
    spec: pr.PriorSpec
    tokenizer_fingerprint: str
    prior_fingerprint: str
    device: str = "cpu"


@dataclass(frozen=True)
class CompressStats:
    """What an archive costs, next to what the prior's model says it should."""

    images: int
    archive_bytes: int  # the whole file
    header_bytes: int  # magic, models, grid, names, per-image table (amortised over the images)
    stream_bytes: int  # the range-coded codes
    model_bits: float  # −Σ log2 p of the codes under the prior
    codes_per_image: int
    codebook_size: int
    pixels_per_image: int
    changed_codes: int = 0  # codes coded that are not the tokenizer's nearest (a rate weight > 0 chose them)
    codes: torch.Tensor | None = field(default=None, repr=False)  # LongTensor[N, h·w]: the codes coded

    @property
    def raw_bits(self) -> float:
        """The codes as plain indices: log2 K bits each."""
        return self.images * self.codes_per_image * math.log2(self.codebook_size)

    def versus_raw(self, digits: int = 1) -> str:
        """How the coded codes compare with raw log2 K indices, in words (more than raw when the prior
        finds the images less predictable than uniform codes: images unlike its training data)."""
        saving = self.summary()["saving_vs_raw_indices"]
        if saving >= 0:
            return f"{saving:.{digits}%} below raw {self.codebook_size}-way indices"
        return (f"{-saving:.{digits}%} above raw {self.codebook_size}-way indices: the prior predicts these images' "
                "codes worse than uniform, so they are unlike the images it was trained on")

    def summary(self) -> dict:
        n = max(self.images, 1)
        return {
            "images": self.images, "bytes": self.archive_bytes, "bytes_per_image": self.archive_bytes / n,
            "bits_per_code": self.stream_bytes * 8 / max(self.images * self.codes_per_image, 1),
            "model_bits_per_code": self.model_bits / max(self.images * self.codes_per_image, 1),
            "bits_per_pixel": self.archive_bytes * 8 / max(self.images * self.pixels_per_image, 1),
            "saving_vs_raw_indices": 1 - self.stream_bytes * 8 / self.raw_bits if self.raw_bits else 0.0,
            "header_bytes": self.header_bytes,
            "changed_codes": self.changed_codes / max(self.images * self.codes_per_image, 1),
        }


def _batches(n: int, size: int):
    return (range(i, min(i + size, n)) for i in range(0, n, size))


CHUNK_IMAGES = 1024  # images encoded and range-coded at a time (and decoded and written at a time): what
#                      compress and decompress hold is one chunk's codes, vectors and pixels, not the data set's


class _ArchiveWriter:
    """Range-codes grids chunk by chunk under the prior and keeps, per image, only what the archive
    stores (class, CRC32 of its codes, stream) — and the codes coded when ``keep_codes``."""

    def __init__(self, models: CodecModels, batch_size: int, rate_weight: float, keep_codes: bool = True):
        self.models, self.batch_size, self.rate_weight = models, batch_size, rate_weight
        self.coder = pr.entropy_coding.GridCoder(models.prior, models.spec, batch_size)
        self.records: list[ImageRecord] = []
        self.model_bits, self.changed = 0.0, 0
        self.codes: list[torch.Tensor] | None = [] if keep_codes else None

    def add(self, grids: torch.Tensor, labels: Sequence[int], vectors: torch.Tensor | None = None, progress=None) -> None:
        """Code grids LongTensor[n, h, w] with their class indices (-1 = none); ``vectors``: the encoder's
        FloatTensor[n, h·w, D] when the rate weight is > 0."""
        distortion = None
        if vectors is not None and self.rate_weight > 0:
            quantizer, device = self.models.tokenizer.quantizer, self.models.device

            def distortion(rows: range) -> np.ndarray:
                return quantizer.distances(vectors[rows.start: rows.stop].to(device)).double().cpu().numpy()

        encoded = self.coder.encode(grids, torch.as_tensor(list(labels), dtype=torch.long), progress=progress,
                                    distortion=distortion, rate_weight=self.rate_weight)
        self.records += [ImageRecord(int(label), codes_crc(codes), stream)
                         for label, codes, stream in zip(labels, encoded.codes.numpy(), encoded.streams, strict=True)]
        self.model_bits += float(encoded.model_bits.sum())
        self.changed += int((encoded.codes != grids.reshape(len(grids), -1).cpu()).sum())
        if self.codes is not None:
            self.codes.append(encoded.codes)

    def finish(self, names: Sequence[str] = ()) -> tuple[bytes, CompressStats]:
        """The archive of every grid added (``names``: one per image, or none) → (bytes, stats)."""
        models = self.models
        archive = Archive(models.tokenizer_fingerprint, models.prior_fingerprint, tuple(models.spec.grid),
                          models.spec.codebook_size, models.spec.num_classes, self.batch_size,
                          pr.entropy_coding.numerics(models.device), self.records, list(names))
        data = pack(archive)
        streams = sum(len(r.stream) for r in self.records)
        size = models.tokenizer.config.image_size
        codes = None
        if self.codes is not None:
            codes = torch.cat(self.codes) if self.codes else torch.zeros(0, models.spec.num_codes, dtype=torch.long)
        stats = CompressStats(len(self.records), len(data), len(data) - streams, streams, self.model_bits,
                              models.spec.num_codes, models.spec.codebook_size, size * size, self.changed, codes)
        return data, stats


@torch.inference_mode()
def compress_grids(models: CodecModels, grids: torch.Tensor, labels: Sequence[int], names: Sequence[str] = (),
                   batch_size: int = pr.entropy_coding.DEFAULT_BATCH, progress=None, vectors: torch.Tensor | None = None,
                   rate_weight: float = 0.0) -> tuple[bytes, CompressStats]:
    """Code grids LongTensor[N, h, w] with class indices (-1 = none) → (archive bytes, stats).

    With the encoder's vectors FloatTensor[N, h·w, D] (``VQGAN.encode_vectors``) and ``rate_weight``
    λ > 0, each code is chosen as it is coded: the one minimising its squared distance to the vector
    + λ · its bits under the prior (``GridCoder.encode``) — fewer bytes, a little further from the
    tokenizer's own reconstruction. λ = 0 codes the grids as given."""
    writer = _ArchiveWriter(models, batch_size, rate_weight)
    writer.add(grids, labels, vectors, progress)
    return writer.finish(names)


def _check_rate_weight(rate_weight: float) -> float:
    rate_weight = float(rate_weight)
    if not (math.isfinite(rate_weight) and rate_weight >= 0):
        raise ValueError(f"the rate weight must be a number ≥ 0 (0: the tokenizer's own codes), got {rate_weight}")
    return rate_weight


def _encode(models: CodecModels, images: torch.Tensor, rate_weight: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch of images → (grids LongTensor[B, h, w] on the CPU, their encoder vectors when λ > 0)."""
    images = images.to(models.device)
    if rate_weight > 0:
        grids, vectors = models.tokenizer.encode_with_vectors(images)
        return grids.cpu(), vectors.cpu()
    return models.tokenizer.encode(images).cpu(), None


def _encode_all(models: CodecModels, images: torch.Tensor, rate_weight: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``_encode`` in batches of 64: (grids, vectors or None)."""
    parts = [_encode(models, images[rows.start: rows.stop], rate_weight) for rows in _batches(len(images), 64)]
    if not parts:
        return torch.zeros(0, *models.spec.grid, dtype=torch.long), None
    return torch.cat([g for g, _ in parts]), torch.cat([v for _, v in parts]) if rate_weight > 0 else None


@torch.inference_mode()
def compress_images(models: CodecModels, images: torch.Tensor, labels: Sequence[int] | None = None,
                    names: Sequence[str] = (), batch_size: int = pr.entropy_coding.DEFAULT_BATCH,
                    rate_weight: float = 0.0) -> tuple[bytes, CompressStats]:
    """Images FloatTensor[N, C, S, S] in [-1, 1] (the tokenizer's size) → (archive bytes, stats);
    ``rate_weight``: see ``compress_grids``."""
    rate_weight = _check_rate_weight(rate_weight)
    labels = [-1] * len(images) if labels is None else [int(x) for x in labels]
    if len(labels) != len(images):
        raise ValueError(f"{len(labels)} class labels for {len(images)} images")
    writer = _ArchiveWriter(models, batch_size, rate_weight)
    for chunk in _batches(len(images), CHUNK_IMAGES):
        grids, vectors = _encode_all(models, images[chunk.start: chunk.stop], rate_weight)
        writer.add(grids, labels[chunk.start: chunk.stop], vectors)
    return writer.finish(names)


def _first_error(where: str, errors: dict[int, str], name_of, total: int) -> str:
    i = min(errors)
    return (f"{where}: image {i} ({name_of(i)}) {errors[i]}; "
            f"{len(errors)} of {total} image(s) could not be restored")


@dataclass
class Decoded:
    """Images decoded from an archive: for each index asked for, its grid, class, name — or why not."""

    indices: list[int]
    grids: torch.Tensor  # LongTensor[n, h, w]; zeros where the image failed
    labels: list[int]
    names: list[str]
    errors: dict[int, str]  # archive index → why its image could not be restored
    archive: Archive

    def first_error(self, where: str) -> str:
        return _first_error(where, self.errors, lambda i: self.names[self.indices.index(i)], len(self.indices))


@dataclass
class Restored:
    """What ``decompress_to_folder`` wrote: how many images the archive holds and which could not be restored."""

    images: int
    errors: dict[int, str]  # archive index → why
    names: dict[int, str]  # archive index → name, for the images that failed

    @property
    def restored(self) -> int:
        return self.images - len(self.errors)

    def first_error(self, where: str) -> str:
        return _first_error(where, self.errors, self.names.__getitem__, self.images)


def _check_models(archive: Archive, models: CodecModels, where: str) -> None:
    spec = models.spec
    for what, stored, ours, flag in (("tokenizer", archive.tokenizer, models.tokenizer_fingerprint, "tokenizer"),
                                     ("prior", archive.prior, models.prior_fingerprint, "prior")):
        if stored != ours:
            raise ValueError(f"{where} was compressed with {what} {stored}, but this {what} is {ours}; "
                             f"give the `{flag}` it was written with")
    if (tuple(archive.grid), archive.codebook_size, archive.num_classes) != (tuple(spec.grid), spec.codebook_size, spec.num_classes):
        raise ValueError(f"{where}: grid {archive.grid}, {archive.codebook_size} codes, {archive.num_classes} classes "
                         f"do not match the prior's {spec.grid}, {spec.codebook_size}, {spec.num_classes}")
    here = pr.entropy_coding.numerics(models.device)
    if archive.numerics != here:
        logger.warning("%s was compressed on %s and is decoded on %s: exact decoding is promised only on the same "
                       "software and device type (each image's CRC32 is checked)", where, archive.numerics, here)


def _open(data: bytes, models: CodecModels, where: str) -> Archive:
    """Archive bytes → the archive, checked against the models (a mismatch is a ValueError)."""
    archive = unpack(data, where)
    _check_models(archive, models, where)
    extra = len(data) - archive.header_bytes - sum(len(r.stream) for r in archive.images)
    if extra > 0:
        logger.warning("%s has %d bytes after its last image; they are not part of the archive and were ignored",
                       where, extra)
    return archive


def _indices(archive: Archive, indices: Sequence[int] | None, where: str) -> list[int]:
    count = len(archive.images)
    indices = list(range(count)) if indices is None else [int(i) for i in indices]
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        raise ValueError(f"{where} holds images 0 … {count - 1}; image {bad[0]} was asked for")
    if len(set(indices)) != len(indices):
        raise ValueError("`indices` names an image twice")
    return indices


def _name_of(archive: Archive, i: int) -> str:
    if archive.names:
        return archive.names[i]
    return f"index:{i:0{len(str(max(len(archive.images) - 1, 0)))}d}"


@torch.inference_mode()
def _decode(archive: Archive, models: CodecModels, indices: list[int], bar=None) -> Decoded:
    """The grids of ``indices`` of a checked archive, each checked against its CRC32."""
    errors: dict[int, str] = {}
    for i in indices:
        label = archive.images[i].label
        if not archive.images[i].complete:
            errors[i] = "is truncated: the file ends inside its data"
        elif label >= models.spec.num_classes:
            errors[i] = f"is damaged: class {label} is not a class of the prior"
    todo = [i for i in indices if i not in errors]
    if bar is not None:
        bar.update(len(indices) - len(todo))
    coder = pr.entropy_coding.GridCoder(models.prior, models.spec, archive.batch_size)
    flat, problems = coder.decode([archive.images[i].stream for i in todo],
                                  [archive.images[i].label for i in todo], progress=bar)
    grids = torch.zeros(len(indices), models.spec.num_codes, dtype=torch.long)
    position = {i: k for k, i in enumerate(indices)}
    for row, (i, problem) in enumerate(zip(todo, problems, strict=True)):
        if problem is not None:
            errors[i] = f"is damaged: {problem}"
        elif codes_crc(flat[row].numpy()) != archive.images[i].crc:
            errors[i] = "is damaged: its decoded codes fail their CRC32 check"
        else:
            grids[position[i]] = flat[row]
    return Decoded(indices, grids.reshape(len(indices), *models.spec.grid), [archive.images[i].label for i in indices],
                   [_name_of(archive, i) for i in indices], dict(sorted(errors.items())), archive)


def decode_archive(data: bytes, models: CodecModels, indices: Sequence[int] | None = None,
                   where: str = "the archive", progress: bool = False) -> Decoded:
    """Archive bytes → the grids of ``indices`` (default: all), each checked against its CRC32
    (``progress``: a bar over the images decoded)."""
    archive = _open(data, models, where)
    indices = _indices(archive, indices, where)
    with tqdm(total=len(indices), desc="decode", unit="img", disable=not progress) as bar:
        return _decode(archive, models, indices, bar)


# --------------------------------------------------------------------------------------- files


def output_names(names: Sequence[str]) -> list[str]:
    """Relative PNG paths for decoded images: the source's path with ``.png`` (``index:N`` → ``N.png``);
    a name that would leave the output folder or repeat another becomes ``image_N.png``."""
    out, seen = [], set()
    for k, name in enumerate(names):
        path = PurePosixPath(name[len("index:"):] if name.startswith("index:") else name).with_suffix(".png")
        if path.is_absolute() or ".." in path.parts or not path.name or path.name.startswith(".") or str(path) in seen:
            path = PurePosixPath(f"image_{k}.png")
        seen.add(str(path))
        out.append(str(path))
    return out


def compress_source(models: CodecModels, data: str, out: str | Path, unconditional: bool = False,
                    overwrite: bool = False, batch_size: int = pr.entropy_coding.DEFAULT_BATCH,
                    rate_weight: float = 0.0) -> CompressStats:
    """Every image of a data source (any ``--data``) → one archive file at ``out``, written atomically.
    A class-labelled source's classes must be the prior's (by name); `unconditional` codes every image
    with the "no class" token instead; ``rate_weight``: see ``compress_grids``."""
    rate_weight = _check_rate_weight(rate_weight)
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder; `out` names the archive file to write")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass `overwrite` to replace it or choose another file")
    config, spec = models.tokenizer.config, models.spec
    source = load_images(data, config.image_size, config.channels, split="all")
    if unconditional or not source.class_names or spec.num_classes == 0:
        if source.class_names and spec.num_classes == 0 and not unconditional:
            logger.info("the prior is unconditional: the source's classes are not used")
        mapping = None
    else:
        unknown = [c for c in source.class_names if c not in spec.class_names]
        if unknown:
            raise ValueError(f"class {unknown[0]!r} of {data} is not a class of the prior "
                             f"({', '.join(spec.class_names[:10])}{' …' if spec.num_classes > 10 else ''}); "
                             "pass `unconditional` to code without classes")
        mapping = [spec.class_names.index(c) for c in source.class_names]
    labels = [-1 if mapping is None or source.label_of(i) < 0 else mapping[source.label_of(i)] for i in range(len(source))]
    names = [source.source_of(i) for i in range(len(source))]
    # one chunk of images at a time: encoded, range-coded, and only their streams kept
    writer = _ArchiveWriter(models, batch_size, rate_weight, keep_codes=False)
    loader = DataLoader(source, batch_size=min(64, CHUNK_IMAGES), shuffle=False)
    pending: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    with tqdm(total=len(source), desc="compress", unit="img") as bar:
        for k, batch in enumerate(loader):
            pending.append(_encode(models, batch["image"], rate_weight))
            end = min((k + 1) * loader.batch_size, len(source))  # images encoded so far
            if end - len(writer.records) >= CHUNK_IMAGES or end == len(source):
                grids = torch.cat([g for g, _ in pending])
                vectors = torch.cat([v for _, v in pending]) if rate_weight > 0 else None
                writer.add(grids, labels[len(writer.records): end], vectors, progress=bar)
                pending.clear()
    archive, stats = writer.finish(names)
    write_file(out, lambda tmp: tmp.write_bytes(archive))
    if source.skipped or source.left_out:
        logger.warning(source.skip_report())
    return stats


def decompress_to_folder(models: CodecModels, archive_path: str | Path, out: str | Path,
                         overwrite: bool = False, batch_size: int = 64) -> Restored:
    """An archive → one PNG per image (at its source's relative path) and ``manifest.json`` in ``out``,
    written as a whole, a chunk of images decoded at a time. Damaged images are left out and listed
    in the manifest; the caller reports them."""
    archive_path, out = Path(archive_path), Path(out)
    if not archive_path.is_file():
        raise FileNotFoundError(f"archive {archive_path} does not exist")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder; `out` names the folder to write the images into")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass `overwrite` to replace it or choose another folder")
    where = str(archive_path)
    archive = _open(archive_path.read_bytes(), models, where)
    count = len(archive.images)
    names = [_name_of(archive, i) for i in range(count)]
    files = output_names(names)
    errors: dict[int, str] = {}
    with write_folder(out) as tmp, tqdm(total=count, desc="decompress", unit="img") as bar:
        for chunk in _batches(count, CHUNK_IMAGES):
            decoded = _decode(archive, models, list(chunk), bar)
            errors.update(decoded.errors)
            good = [k for k, i in enumerate(decoded.indices) if i not in decoded.errors]
            for rows in _batches(len(good), batch_size):
                chosen = [good[k] for k in rows]
                images = to_pil(models.tokenizer.decode(decoded.grids[chosen].to(models.device)).float().cpu())
                for k, image in zip(chosen, images, strict=True):
                    path = tmp / files[chunk.start + k]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    image.save(path)
        entries = []
        for i, record in enumerate(archive.images):
            label = record.label
            entries.append({"index": i, "name": names[i], "file": None if i in errors else files[i],
                            "class": models.spec.class_names[label] if 0 <= label < models.spec.num_classes else None,
                            "bytes": len(record.stream), **({"error": errors[i]} if i in errors else {})})
        manifest = {"archive": str(archive_path), "tokenizer": archive.tokenizer, "prior": archive.prior,
                    "numerics": archive.numerics, "header_bytes": archive.header_bytes,
                    "restored": count - len(errors), "failed": len(errors), "images": entries}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Restored(count, errors, {i: names[i] for i in errors})
