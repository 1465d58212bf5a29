"""What the ``compress`` / ``decompress`` verbs do with files: every image of a data source into one
archive file, and an archive file back into one PNG per image and a manifest — a chunk of images
(``codec.CHUNK_IMAGES``) at a time both ways, so memory does not grow with the data set.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import re
from pathlib import Path, PurePosixPath
from typing import Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vqgpt import prior as pr
from vqgpt.atomic import write_file, write_folder

from ..data import load_images, to_pil
from . import codec
from .codec import (
    CodecModels,
    CompressStats,
    Restored,
    _ArchiveWriter,
    _batches,
    _check_rate_weight,
    _coder,
    _decode,
    _encode,
    _name_of,
    _open,
    pixel_batches,
    pixel_decoder,
)

logger = logging.getLogger(__name__)

__all__ = ["MANIFEST", "compress_source", "decompress_to_folder", "output_names"]

MANIFEST = "manifest.json"


# --------------------------------------------------------------------------------------- files


def output_names(names: Sequence[str]) -> list[str]:
    """Relative PNG paths for decoded images: the source's relative path with ``.png``. A bundled set's
    ``index:N`` → ``N.png``; a photo crop ``photo.jpg:N`` → ``photo/N.png``; a tar shard's member
    ``shard.tar:dir/a.jpg`` → ``shard/dir/a.png``; a ``datasets`` row ``train[3]`` → ``train/3.png``.
    A source file already named ``.png`` keeps its name; one whose name another image took (``a.jpg``
    beside ``a.png``) becomes ``a_N.png`` in its folder (N its index in the archive), and one that
    would leave the output folder ``image_N.png``."""
    paths: list[PurePosixPath | None] = []
    for name in names:
        head, sep, tail = name.rpartition(":")
        if sep and head == "index":
            name = tail
        elif sep and (tail.isdigit() or head.endswith(".tar")):  # a photo's crop, a shard's member
            name = f"{PurePosixPath(head).with_suffix('')}/{tail}"
        elif row := re.fullmatch(r"(.+)\[(\d+)\]", name):  # a datasets split's row: no brackets (shell globs)
            name = f"{row[1]}/{row[2]}"
        path = PurePosixPath(name)
        safe = path.parts and not path.is_absolute() and ".." not in path.parts and not path.name.startswith(".")
        paths.append(path if safe else None)
    out: list[str | None] = [None] * len(names)
    seen: set[str] = set()
    # PNG sources first, so that `a.png` keeps its name when `a.jpg` is beside it
    for k in sorted(range(len(names)), key=lambda k: paths[k] is None or paths[k].suffix.lower() != ".png"):
        path = paths[k]
        candidates = [] if path is None else [path.with_suffix(".png"), path.with_name(f"{path.stem}_{k}.png")]
        fallbacks = (f"image_{k}{f'_{j}' if j else ''}.png" for j in itertools.count())
        out[k] = next(c for c in itertools.chain(map(str, candidates), fallbacks) if c not in seen)
        seen.add(out[k])
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
    loader = DataLoader(source, batch_size=min(64, codec.CHUNK_IMAGES), shuffle=False)
    pending: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    with tqdm(total=len(source), desc="compress", unit="img") as bar:
        for k, batch in enumerate(loader):
            pending.append(_encode(models, batch["image"], rate_weight))
            end = min((k + 1) * loader.batch_size, len(source))  # images encoded so far
            if end - len(writer.records) >= codec.CHUNK_IMAGES or end == len(source):
                grids = torch.cat([g for g, _ in pending])
                vectors = torch.cat([v for _, v in pending]) if rate_weight > 0 else None
                writer.add(grids, labels[len(writer.records): end], vectors, progress=bar)
                pending.clear()
    archive, stats = writer.finish(names)
    write_file(out, lambda tmp: tmp.write_bytes(archive))
    return dataclasses.replace(stats, skipped=len(source.skipped), left_out=len(source.left_out))


def decompress_to_folder(models: CodecModels, archive_path: str | Path, out: str | Path,
                         overwrite: bool = False, exact_pixels: bool = False) -> Restored:
    """An archive → one PNG per image (at its source's relative path) and ``manifest.json`` in ``out``,
    written as a whole, a chunk of images decoded at a time. Damaged images are left out and listed
    in the manifest; the caller reports them. ``exact_pixels``: the tokenizer decodes in float64, so the
    PNGs are the same on any machine (``codec.pixel_decoder``), not only the codes."""
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
    coder = _coder(archive, models)  # one for every chunk: it holds the prior's float64 copy
    decoder = pixel_decoder(models, exact_pixels)
    errors: dict[int, str] = {}
    with write_folder(out) as tmp, tqdm(total=count, desc="decompress", unit="img") as bar:
        for chunk in _batches(count, codec.CHUNK_IMAGES):
            decoded = _decode(archive, models, list(chunk), bar, coder)
            errors.update(decoded.errors)
            good = [k for k, i in enumerate(decoded.indices) if i not in decoded.errors]
            for rows, pixels in pixel_batches(decoded.grids[good], decoder):
                for k, image in zip((good[r] for r in rows), to_pil(pixels), strict=True):
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
                    "numerics": archive.numerics, "header_bytes": archive.header_bytes, "exact_pixels": exact_pixels,
                    "restored": count - len(errors), "failed": len(errors), "images": entries}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Restored(count, errors, {i: names[i] for i in errors})
