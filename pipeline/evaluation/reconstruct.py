"""``vqgpt reconstruct``: encode + decode the held-out images of a source, write a side-by-side grid,
report PSNR, SSIM and codebook usage. Which images are scored is ``held_out_split``'s decision, the
same one ``evaluate`` makes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.utils import make_grid, save_image

from vqgpt import tokenizer as tk
from vqgpt.atomic import write_file

from ..data import held_out_split, load_images

__all__ = ["reconstruct", "write_reconstruction_grid"]


@torch.inference_mode()
def write_reconstruction_grid(model: tk.VQGAN, data: Dataset, out: str | Path, num: int = 32,
                              batch_size: int = 64) -> Path:
    """Write ``out`` (PNG): pairs of columns, original | reconstruction, for the first ``num`` items
    of ``data``."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"`out` must be a .png file, got {out}")
    if num < 1:
        raise ValueError(f"`num` must be at least 1, got {num}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1, got {batch_size}")
    out.parent.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    model.eval()
    shown = min(num, len(data))
    originals = torch.stack([data[i]["image"] for i in range(shown)])  # (N, C, H, W)
    recons = torch.cat([model.decode(model.encode(chunk.to(device))).float().cpu() for chunk in originals.split(batch_size)])
    pairs = torch.stack([originals, recons], dim=1).flatten(0, 1)  # (2N, C, H, W): orig, recon, orig, …
    grid = make_grid((pairs + 1) / 2, nrow=min(16, 2 * shown), padding=2, pad_value=1.0)
    return write_file(out, lambda tmp: save_image(grid, tmp))  # the old grid stays whole until then


def reconstruct(model: tk.VQGAN, data: str, out: str | Path, split: str | None = None, data_seed: int | None = None,
                num: int = 32, batch_size: int = 64) -> dict[str, Any]:
    """Score ``model`` on the held-out images of the data source ``data`` (``held_out_split`` of what
    the tokenizer recorded about its training data; ``split``/``data_seed`` override it), write the
    side-by-side grid of the first ``num`` to ``out`` and return PSNR, SSIM, codebook usage
    and perplexity, with which images were scored: ``split``, ``why``, ``images`` (scored),
    ``total`` (in the whole source), ``skipped`` and ``skip_report``."""
    mc = model.config
    held = held_out_split(data, mc.trained_on, mc.trained_split_seed if data_seed is None else data_seed,
                          mc.trained_val_fraction, split=split)
    images = load_images(data, mc.image_size, mc.channels, split=held.split, seed=held.seed,
                         val_fraction=held.val_fraction)
    total = len(images)
    if held.split != "all":
        other = "train" if held.split == "validation" else "validation"
        total += len(load_images(data, mc.image_size, mc.channels, split=other, seed=held.seed,
                                 val_fraction=held.val_fraction, check=False))
    write_reconstruction_grid(model, images, out, num=num, batch_size=batch_size)
    metrics = tk.evaluate_reconstruction(model, images, batch_size=batch_size)
    return {**metrics, "images": len(images), "total": total, "split": held.split, "why": held.why,
            "skipped": len(images.skipped) + len(images.left_out), "skip_report": images.skip_report()}
