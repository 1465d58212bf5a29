"""Reconstruction and codebook metrics (images in [-1, 1]; PSNR/SSIM via torchmetrics on [0, 1])."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from .quantizer import code_histogram, codebook_stats

__all__ = ["psnr", "ssim", "code_histogram", "codebook_stats"]


def _unit(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, (B,), of (B, C, H, W) images in [-1, 1] (data range [0, 1])."""
    return peak_signal_noise_ratio(
        _unit(reconstruction), _unit(target), data_range=1.0, reduction="none", dim=(1, 2, 3)
    )


def ssim(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM, (B,), of (B, C, H, W) images in [-1, 1] (data range [0, 1])."""
    return structural_similarity_index_measure(
        _unit(reconstruction), _unit(target), data_range=1.0, reduction="none"
    )
