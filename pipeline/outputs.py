"""What ``sample`` and ``complete`` write: the output folder, one PNG per image, the grid and
``settings.json``; and the sample-grid writer that prior training calls with fresh codes."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from PIL import Image
from torchvision.utils import make_grid, save_image

from vqgpt import prior as pr
from vqgpt import tokenizer as tk

from .images import from_pil, load_image_file, to_pil
from .settings import SampleConfig

if TYPE_CHECKING:  # pragma: no cover
    from .generate import Pipeline

__all__ = ["RESULT_FILES", "prepare_out", "write_samples", "write_settings", "complete_to_files", "checked_tokenizer",
           "sample_grid_writer", "pixel_features"]


def _safe_name(text: str) -> str:
    """A class name as a file-name part ("T-shirt / top" → "T-shirt_top")."""
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "class"


RESULT_FILES = ("sample_*.png", "completion_*.png", "grid.png", "settings.json")  # what sample/complete write


def prepare_out(out: str | Path, overwrite: bool = False, patterns: tuple[str, ...] = RESULT_FILES,
                check_only: bool = False) -> Path:
    """Make the output folder; refuse one that already holds results unless ``overwrite``
    (then those results — and only files named like them — are removed, so no stale image
    is left beside new settings). ``check_only``: refuse or accept, remove nothing yet — the
    verbs check before sampling and clear the old results only once the new ones are ready."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    old = [p for pattern in patterns for p in out.glob(pattern)] if out.is_dir() else []
    if old and not overwrite:
        raise FileExistsError(f"--out {out} already holds {len(old)} result file(s); pass --overwrite or choose another folder")
    if check_only:
        return out
    for p in old:
        p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_samples(images: list[Image.Image], settings: SampleConfig, pipe: "Pipeline", out: str | Path) -> dict[str, Path]:
    """``vqgpt sample``: one PNG per image, a grid (one row per class when classes are
    asked for) and ``settings.json`` with every setting and the seed. ``out`` should come
    from :func:`prepare_out`, called before sampling."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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


def checked_tokenizer(tokenizer_dir: str | Path, tokens_dir: str | Path | None = None, device: str = "cpu") -> tk.VQGAN:
    """The tokenizer of ``tokenizer_dir``, refused unless it made the token dataset ``tokens_dir``."""
    tokenizer = tk.VQGAN.from_pretrained(tokenizer_dir, device=device).eval()
    if tokens_dir is not None:
        made_by, fingerprint = pr.read_token_meta(tokens_dir).get("tokenizer_fingerprint"), tokenizer.fingerprint()
        if made_by != fingerprint:
            raise ValueError(
                f"--tokenizer {tokenizer_dir} is not the tokenizer that made {tokens_dir} "
                f"(fingerprints {fingerprint} vs {made_by})"
            )
    return tokenizer


def sample_grid_writer(tokenizer: tk.VQGAN, out_dir: str | Path) -> Callable[[torch.Tensor, int], None]:
    """A ``sample_callback`` for prior training: decode the sampled grids and write
    ``out_dir/step_XXXXXX.png`` (a square-ish grid)."""
    out_dir = Path(out_dir)
    device = next(tokenizer.parameters()).device

    @torch.inference_mode()
    def write(codes: torch.Tensor, step: int) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        images = tokenizer.decode(codes.to(device)).float().cpu()
        nrow = max(1, math.ceil(math.sqrt(len(images))))
        save_image(make_grid((images + 1) / 2, nrow=nrow, padding=2, pad_value=1.0), out_dir / f"step_{step:06d}.png")

    return write


def pixel_features(tokenizer: tk.VQGAN, max_side: int = 32, batch_size: int = 256) -> Callable[[torch.Tensor], torch.Tensor]:
    """``features`` for the prior's sampling selection: code grids LongTensor[B, h, w] → the decoded
    images' pixels in [0, 1], area-averaged down to at most ``max_side`` px, FloatTensor[B, C·s·s]."""
    device = next(tokenizer.parameters()).device

    @torch.inference_mode()
    def features(codes: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in codes.split(batch_size):
            images = (tokenizer.decode(chunk.to(device)).float().clamp(-1, 1) + 1) / 2  # (b, C, H, W)
            if images.shape[-1] > max_side:
                images = torch.nn.functional.adaptive_avg_pool2d(images, max_side)
            out.append(images.flatten(1).cpu())
        return torch.cat(out)

    return features


def complete_to_files(pipe: "Pipeline", image_path: str | Path, keep_rows: int, settings: SampleConfig,
                      out: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """``vqgpt complete``: write the completions, and a grid with the original first."""
    prepare_out(out, overwrite, check_only=True)
    settings = pipe.resolve(settings)
    label = settings.class_labels[0] if settings.class_labels else None
    image = load_image_file(image_path, pipe.tokenizer.config.image_size, pipe.tokenizer.config.channels)
    codes, completions = pipe.complete(
        image, keep_rows, settings.num, label, settings.guidance, settings.temperature, settings.top_k,
        settings.top_p, batch_size=settings.batch_size, seed=settings.seed, sampler=settings.sampler,
        precision=settings.precision,
    )
    h, w = codes.shape
    original = from_pil([image])
    reconstruction = pipe.decode(codes[None])
    kept = reconstruction.clone()
    rows_px = keep_rows * pipe.tokenizer.config.image_size // h
    kept[:, :, rows_px:] = -1.0  # the part the prior sees, the rest blacked out
    decoded = pipe.decode(completions, settings.batch_size)
    images = to_pil(decoded)
    out = prepare_out(out, overwrite)  # the old results go only now that the new ones are ready
    for i, img in enumerate(images):
        img.save(out / f"completion_{i:04d}.png")
    grid_path = out / "grid.png"
    tiles = torch.cat([original, reconstruction, kept, decoded])
    save_image(make_grid((tiles + 1) / 2, nrow=min(len(tiles), 8), padding=2, pad_value=1.0), grid_path)
    settings_path = write_settings(pipe, out, settings, {"image": str(image_path), "keep_rows": keep_rows,
                                                          "grid_layout": "original, reconstruction, kept rows, completions…"})
    return {"grid": grid_path, "settings": settings_path}


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
