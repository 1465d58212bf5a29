"""What prior training borrows from the tokenizer: the grids it samples while training, decoded into
PNGs, and decoded pixels as the features its sampling choice compares (``vqgpt.prior.train_prior``'s
``sample_callback`` and ``grid_features``). The prior itself never sees pixels; the pipeline
passes these in."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
from torchvision.utils import make_grid, save_image

from vqgpt import prior as pr
from vqgpt import tokenizer as tk

__all__ = ["checked_tokenizer", "sample_grid_writer", "decoded_pixel_features"]


def checked_tokenizer(tokenizer_dir: str | Path, tokens_dir: str | Path | None = None, device: str = "cpu") -> tk.VQGAN:
    """The tokenizer of ``tokenizer_dir``, refused unless it made the token dataset ``tokens_dir``."""
    tokenizer = tk.VQGAN.from_pretrained(tokenizer_dir, device=device).eval()
    if tokens_dir is not None:
        made_by, fingerprint = pr.read_token_meta(tokens_dir).get("tokenizer_fingerprint"), tokenizer.fingerprint()
        if made_by != fingerprint:
            raise ValueError(
                f"the tokenizer {tokenizer_dir} is not the one that made {tokens_dir} "
                f"(fingerprints {fingerprint} vs {made_by})"
            )
    return tokenizer


def sample_grid_writer(tokenizer: tk.VQGAN, out_dir: str | Path) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """A ``sample_callback`` for prior training: decode the sampled grids, write
    ``out_dir/step_XXXXXX.png`` (a square-ish grid) and return it, FloatTensor[C, H, W] in [0, 1]
    (for the experiment trackers)."""
    out_dir = Path(out_dir)
    device = next(tokenizer.parameters()).device

    @torch.inference_mode()
    def write(codes: torch.Tensor, step: int) -> torch.Tensor:
        out_dir.mkdir(parents=True, exist_ok=True)
        images = tokenizer.decode(codes.to(device)).float().cpu()
        nrow = max(1, math.ceil(math.sqrt(len(images))))
        grid = make_grid((images + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)  # (C, H, W) in [0, 1]
        save_image(grid, out_dir / f"step_{step:06d}.png")
        return grid

    return write


def decoded_pixel_features(tokenizer: tk.VQGAN, max_side: int = 32, batch_size: int = 256) -> Callable[[torch.Tensor], torch.Tensor]:
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
