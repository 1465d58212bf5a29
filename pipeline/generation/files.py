"""What ``sample`` and ``complete`` write: the output folder, one PNG per image, the grid and
``settings.json`` — earlier results replaced only as a whole, in one rename."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from PIL import Image
from torchvision.utils import make_grid, save_image

from vqgpt.atomic import write_folder

from ..data import from_pil, load_image_file, to_pil
from ..settings import SampleConfig

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Pipeline

__all__ = ["RESULT_FILES", "check_out", "result_folder", "write_samples", "write_settings", "write_completions"]


def _safe_name(text: str) -> str:
    """A class name as a file-name part ("T-shirt / top" → "T-shirt_top")."""
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "class"


RESULT_FILES = ("sample_*.png", "completion_*.png", "grid.png", "settings.json")  # what sample/complete write


def check_out(out: str | Path, overwrite: bool = False, patterns: tuple[str, ...] = RESULT_FILES) -> Path:
    """Refuse an output folder that already holds results unless ``overwrite`` — and even then one
    that also holds other files (the new results replace the old folder as a whole). Touches nothing:
    the verbs check before sampling and replace the old results only once the new ones are ready."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    old = [p for pattern in patterns for p in out.glob(pattern)] if out.is_dir() else []
    if old and not overwrite:
        raise FileExistsError(f"{out} already holds {len(old)} result file(s); pass `overwrite` or choose another folder")
    others = sorted(p.name for p in out.iterdir() if p not in old) if old else []
    if others:
        raise FileExistsError(f"`overwrite` refused: {out} holds files besides earlier results ({', '.join(others[:3])}); "
                              "choose another folder")
    return out


@contextmanager
def result_folder(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """The folder to write new results into. Over earlier results: a hidden sibling, swapped in as one
    rename when the ``with`` block ends (``vqgpt.atomic.write_folder``), so until then the old results
    are whole and a run killed or out of disk leaves them as they were. Otherwise ``out`` itself."""
    out = check_out(out, overwrite)
    if any(p for pattern in RESULT_FILES for p in out.glob(pattern)):
        with write_folder(out) as tmp:
            yield tmp
    else:
        out.mkdir(parents=True, exist_ok=True)
        yield out


def write_samples(images: list[Image.Image], settings: SampleConfig, pipe: "Pipeline", out: str | Path,
                  overwrite: bool = False) -> dict[str, Path]:
    """``vqgpt sample``: one PNG per image, a grid (one row per class when classes are asked for)
    and ``settings.json`` with every setting and the seed, replacing earlier results in ``out`` only
    with ``overwrite`` and only as a whole (``result_folder``)."""
    final = Path(out)
    with result_folder(final, overwrite) as out:
        paths = _write_samples(images, settings, pipe, out)
    return {k: final / p.name for k, p in paths.items()}


def _write_samples(images: list[Image.Image], settings: SampleConfig, pipe: "Pipeline", out: Path) -> dict[str, Path]:
    labels = settings.labels_per_image
    for i, img in enumerate(images):
        suffix = f"_class-{_safe_name(pipe.class_names[labels[i]])}" if labels else ""
        img.save(out / f"sample_{i:04d}{suffix}.png")
    tensor = from_pil(images)
    nrow = settings.num if labels else min(len(images), max(1, math.ceil(math.sqrt(len(images)))))
    grid_path = out / "grid.png"
    save_image(make_grid((tensor + 1) / 2, nrow=nrow, padding=2, pad_value=1.0), grid_path)
    settings_path = write_settings(pipe, out, settings, {"num_images": len(images)})
    return {"grid": grid_path, "settings": settings_path}


def write_completions(pipe: "Pipeline", image_path: str | Path, keep_rows: int, settings: SampleConfig,
                      out: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """``vqgpt complete``: write the completions, and a grid with the original, its reconstruction
    and the rows the prior was given first."""
    check_out(out, overwrite)
    final = Path(out)
    settings = pipe.resolve(settings)
    image = load_image_file(image_path, pipe.tokenizer.config.image_size, pipe.tokenizer.config.channels)
    codes = pipe.encode(image)  # encoded once: the completions' prefix and the reconstruction tile
    decoded = pipe.complete(codes, keep_rows, settings, output_type="pt")
    h, w = codes.shape
    original = from_pil([image])
    reconstruction = pipe.decode(codes[None])
    kept = reconstruction.clone()
    rows_px = keep_rows * pipe.tokenizer.config.image_size // h
    kept[:, :, rows_px:] = -1.0  # the part the prior sees, the rest blacked out
    images = to_pil(decoded)
    with result_folder(final, overwrite) as out:  # the old results go only now that the new ones are ready
        for i, img in enumerate(images):
            img.save(out / f"completion_{i:04d}.png")
        tiles = torch.cat([original, reconstruction, kept, decoded])
        save_image(make_grid((tiles + 1) / 2, nrow=min(len(tiles), 8), padding=2, pad_value=1.0), out / "grid.png")
        write_settings(pipe, out, settings, {"image": str(image_path), "keep_rows": keep_rows,
                                             "grid_layout": "original, reconstruction, kept rows, completions…"})
    return {"grid": final / "grid.png", "settings": final / "settings.json"}


def write_settings(pipe: "Pipeline", out: Path, settings: SampleConfig, extra: dict) -> Path:
    """``settings.json``: every sampling setting, the class names, the tokenizer and prior used."""
    record = {
        **asdict(settings),
        "class_names": [pipe.class_names[c] for c in settings.class_labels] if settings.class_labels else [],
        "tokenizer_fingerprint": pipe.tokenizer_fingerprint,
        "prior": pipe.spec.path,
        **extra,
    }
    path = out / "settings.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
