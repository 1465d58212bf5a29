"""``vqgpt reconstruct``: encode + decode a split, write a side-by-side grid, report metrics."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.utils import make_grid, save_image

from vqgpt import tokenizer as tk

__all__ = ["reconstruct", "write_reconstruction_grid"]


@torch.inference_mode()
def write_reconstruction_grid(model: tk.VQGAN, data: Dataset, out: str | Path, num_images: int = 32,
                              batch_size: int = 64) -> Path:
    """Write ``out`` (PNG): pairs of columns, original | reconstruction, for the first
    ``num_images`` items of ``data``."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png file, got {out}")
    if num_images < 1:
        raise ValueError(f"--num must be at least 1, got {num_images}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    out.parent.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    model.eval()
    shown = min(num_images, len(data))
    originals = torch.stack([data[i]["image"] for i in range(shown)])  # (N, C, H, W)
    recons = torch.cat([model.decode(model.encode(chunk.to(device))).float().cpu() for chunk in originals.split(batch_size)])
    pairs = torch.stack([originals, recons], dim=1).flatten(0, 1)  # (2N, C, H, W): orig, recon, orig, …
    save_image(make_grid((pairs + 1) / 2, nrow=min(16, 2 * shown), padding=2, pad_value=1.0), out)
    return out


def reconstruct(model: tk.VQGAN, data: Dataset, out: str | Path, num_images: int = 32, batch_size: int = 64) -> dict:
    """Write the side-by-side grid (``write_reconstruction_grid``) and return PSNR, SSIM,
    codebook usage and perplexity over all of ``data``."""
    write_reconstruction_grid(model, data, out, num_images=num_images, batch_size=batch_size)
    metrics = tk.evaluate_reconstruction(model, data, batch_size=batch_size)
    return {**metrics, "images": len(data)}
