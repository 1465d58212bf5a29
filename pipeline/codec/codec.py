"""Images ⇄ one archive: the tokenizer is the transform, the prior the entropy model.

``compress_images`` encodes images with the tokenizer and range-codes each grid under the prior
(``vqgpt.prior.entropy_coding.GridCoder``: the prior's plain distributions, computed the way the
decoder will), a chunk of images at a time; ``decode_archive`` checks the archive against the models,
decodes the images asked for and checks each grid's CRC32. What the ``compress`` / ``decompress``
verbs do with files is ``files.py``.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from vqgpt import prior as pr
from vqgpt import tokenizer as tk

from .archive import Archive, ImageRecord, codes_crc, pack, unpack

logger = logging.getLogger(__name__)

__all__ = ["CodecModels", "CompressStats", "Decoded", "Restored", "compress_grids", "compress_images", "decode_archive",
           "decode_pixels", "pixel_batches", "pixel_decoder"]


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
    skipped: int = 0  # files of the source that could not be decoded (compress_source; listed in its warning)
    left_out: int = 0  # entries of the source that are not image files

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
            "skipped_files": self.skipped, "left_out_entries": self.left_out,
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
                          pr.entropy_coding.numerics(models.device, machine=False), self.records, list(names))
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
    here = _elsewhere(archive, models)
    if here is not None:
        logger.warning("%s was compressed on %s and is decoded on %s: exact decoding is promised only on the same "
                       "software, device type and CPU instruction set (each image's CRC32 is checked)",
                       where, archive.numerics, here)


def _elsewhere(archive: Archive, models: CodecModels) -> str | None:
    """This machine's numerics when a machine-bound archive (version 1–2: float32 coding) is decoded on
    another kind of machine than the one that wrote it; None when exactness is promised here."""
    here = pr.entropy_coding.numerics(models.device)
    return None if archive.portable or archive.numerics == here else here


def _coder(archive: Archive, models: CodecModels) -> pr.entropy_coding.GridCoder:
    """The range coder an archive's streams were written with (its batch shape, portable or not)."""
    return pr.entropy_coding.GridCoder(models.prior, models.spec, archive.batch_size, portable=archive.portable)


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
def _decode(archive: Archive, models: CodecModels, indices: list[int], bar=None,
            coder: pr.entropy_coding.GridCoder | None = None) -> Decoded:
    """The grids of ``indices`` of a checked archive, each checked against its CRC32 (``coder``: one
    from ``_coder`` to reuse across calls — it holds the prior's float64 copy)."""
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
    coder = coder or _coder(archive, models)
    flat, problems = coder.decode([archive.images[i].stream for i in todo],
                                  [archive.images[i].label for i in todo], progress=bar)
    grids = torch.zeros(len(indices), models.spec.num_codes, dtype=torch.long)
    position = {i: k for k, i in enumerate(indices)}
    here = _elsewhere(archive, models)
    # a machine-bound archive where the prior computes differently: a wrong decode is far likelier than damage
    cause = ("is damaged" if here is None else
             f"did not decode (likely not damage: it was compressed on {archive.numerics}, this is {here}; "
             "decode it on a machine that computes like the one that wrote it)")
    for row, (i, problem) in enumerate(zip(todo, problems, strict=True)):
        if problem is not None:
            errors[i] = f"{cause}: {problem}"
        elif codes_crc(flat[row].numpy()) != archive.images[i].crc:
            errors[i] = f"{cause}: its decoded codes fail their CRC32 check"
        else:
            grids[position[i]] = flat[row]
    return Decoded(indices, grids.reshape(len(indices), *models.spec.grid), [archive.images[i].label for i in indices],
                   [_name_of(archive, i) for i in indices], dict(sorted(errors.items())), archive)


# Pixels from decoded codes. The tokenizer's float32 convolutions give, for the same codes, last bits that
# depend on the batch shape (measured: decoding in batches of 1 rather than 64 moves one value of 2–4 % of
# the images by one level of 255) and on the CPU's instruction set (175 of 13.4 M values of 4,352 photo
# crops, AVX2 against baseline kernels). So an image is always decoded in a batch of the same shape
# (the last batch padded), whichever images are asked for with it; and ``exact`` decodes with a float64
# copy of the tokenizer, whose last-bit differences are far too small to move a value across an 8-bit
# rounding boundary: the same PNGs on any machine, at about 7× the decoding time (32 px, this CPU).
PIXEL_BATCH_PIXELS = 8 * 256 * 256  # grids per pass × pixels per image: 64 up to 64 px, 32 at 128 px, 8 at 256 px


def pixel_decoder(models: CodecModels, exact: bool = False) -> tuple[tk.VQGAN, torch.device]:
    """The tokenizer that turns decoded codes into pixels and its device: the models' own, or (``exact``)
    a float64 copy — on the CPU where the device has no float64 (Apple's GPUs)."""
    if not exact:
        return models.tokenizer, torch.device(models.device)
    device = torch.device(models.device if torch.device(models.device).type in ("cpu", "cuda") else "cpu")
    return copy.deepcopy(models.tokenizer).to(device=device, dtype=torch.float64).eval(), device


def pixel_batches(grids: torch.Tensor, decoder: tuple[tk.VQGAN, torch.device]):
    """grids LongTensor[N, h, w] → (rows, images FloatTensor[n, C, H, W] in [-1, 1] on the CPU) per pass;
    every pass decodes the same number of grids (``PIXEL_BATCH_PIXELS``), so an image's pixels do not
    depend on which others are decoded with it. float64 images from an exact decoder."""
    tokenizer, device = decoder
    size = tokenizer.config.image_size
    rows = max(1, min(64, PIXEL_BATCH_PIXELS // (size * size)))
    with torch.inference_mode():
        for start in range(0, len(grids), rows):
            chunk = grids[start: start + rows]
            n = len(chunk)
            if n < rows:
                chunk = torch.cat([chunk, chunk[:1].expand(rows - n, *chunk.shape[1:])])
            yield range(start, start + n), tokenizer.decode(chunk.to(device))[:n].cpu()


def decode_pixels(grids: torch.Tensor, decoder: tuple[tk.VQGAN, torch.device]) -> torch.Tensor:
    """``pixel_batches`` gathered: FloatTensor[N, C, H, W] in [-1, 1] (float64 from an exact decoder)."""
    parts = [images for _, images in pixel_batches(grids, decoder)]
    if parts:
        return torch.cat(parts)
    channels, size = decoder[0].config.channels, decoder[0].config.image_size
    return torch.zeros(0, channels, size, size)


def decode_archive(data: bytes, models: CodecModels, indices: Sequence[int] | None = None,
                   where: str = "the archive", progress: bool = False) -> Decoded:
    """Archive bytes → the grids of ``indices`` (default: all), each checked against its CRC32
    (``progress``: a bar over the images decoded)."""
    archive = _open(data, models, where)
    indices = _indices(archive, indices, where)
    with tqdm(total=len(indices), desc="decode", unit="img", disable=not progress) as bar:
        return _decode(archive, models, indices, bar)
