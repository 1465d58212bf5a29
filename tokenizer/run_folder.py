"""The tokenizer's training folder: what ``train_tokenizer`` writes besides the model.

    out/config.json, model.safetensors        the finished tokenizer (``VQGAN.save_pretrained``)
    out/checkpoints/step_N/                   a checkpoint (``vqgpt.checkpoints``) + ema.safetensors
    out/samples/recon_step_XXXXXX.png         originals over reconstructions during training
    out/metrics.jsonl, out/loss_curve.png     training log and its plot

Checkpoints, resuming, the metrics log and the NaN stop are ``vqgpt.checkpoints``', shared with the
prior; this module adds what only a tokenizer run has: its folder checks, the EMA weights inside a
checkpoint (safetensors, never a pickle) and the reconstruction grids.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torchvision.utils import make_grid, save_image

from vqgpt.checkpoints import (
    CHECKPOINT_DIR,
    LOSS_CURVE_FILE,
    METRICS_FILE,
    Curve,
    MetricsLog,
    latest_checkpoint,
    plot_loss_curves,
)

from .model import CONFIG_NAME, VQGAN, WEIGHTS_NAME

__all__ = ["SAMPLES_DIR", "EMA_FILE", "prepare_out_dir", "ema_writer", "ema_loader", "save_recon_grid",
           "plot_loss_curve"]

SAMPLES_DIR = "samples"
EMA_FILE = "ema.safetensors"
# Files of the other stages' folders: a tokenizer run never goes into one of those.
_FOREIGN_MARKERS = ("vqgpt_prior.json", "dataset_dict.json")


def prepare_out_dir(out: Path, resume: bool, overwrite: bool, accelerator: Accelerator) -> None:
    """Check ``out`` for the requested mode and make its sub-folders.

    Without ``resume`` or ``overwrite`` a finished tokenizer or an unfinished run is refused;
    ``overwrite`` removes only what a tokenizer run writes (never a user's other files), and keeps
    the finished tokenizer loadable until the new one replaces it at the end of training."""
    complete = (out / CONFIG_NAME).is_file() and (out / WEIGHTS_NAME).is_file()
    ckpt_root = out / CHECKPOINT_DIR
    has_ckpt = latest_checkpoint(ckpt_root) is not None
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {out} exists and is not a folder")
    if any((out / marker).is_file() for marker in _FOREIGN_MARKERS):
        raise ValueError(f"{out} holds a prior or a token dataset, not a tokenizer run; choose another output folder")
    if resume and not has_ckpt:
        raise FileNotFoundError(f"nothing to resume: {ckpt_root} holds no checkpoint; run without `resume`")
    if not overwrite and not resume:
        if complete:
            raise FileExistsError(f"{out} already holds a trained tokenizer; pass `overwrite` to replace it")
        if has_ckpt:
            raise FileExistsError(f"{out} holds checkpoints of an unfinished run; pass `resume` to continue it or "
                                  "`overwrite` to start again")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if overwrite and not resume:
            for name in (METRICS_FILE, LOSS_CURVE_FILE):
                (out / name).unlink(missing_ok=True)
            for name in (CHECKPOINT_DIR, SAMPLES_DIR, "trackers"):
                shutil.rmtree(out / name, ignore_errors=True)
        elif complete:  # resuming over a finished model: it is rewritten at the end
            (out / CONFIG_NAME).unlink()
        (out / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
        ckpt_root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()


def ema_writer(ema: torch.nn.Module | None):
    """``write_extra`` for ``save_checkpoint``: the EMA weights as safetensors (None: nothing)."""
    if ema is None:
        return None
    return lambda folder: save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()},
                                    str(folder / EMA_FILE))


def ema_loader(ema: torch.nn.Module | None, device: torch.device):
    """``load_extra`` for ``load_checkpoint``: restore the EMA weights (None: nothing)."""
    if ema is None:
        return None
    return lambda folder: ema.load_state_dict(load_file(str(folder / EMA_FILE), device=str(device)))


@torch.no_grad()
def save_recon_grid(model: VQGAN, images: torch.Tensor, out: Path, step: int,
                    accelerator: Accelerator) -> torch.Tensor | None:
    """Originals (top row) over reconstructions (bottom row) → samples/recon_step_XXXXXX.png; returns
    the grid FloatTensor[C, H, W] in [0, 1] (None on other processes than the main one)."""
    if not accelerator.is_main_process:
        return None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    recon = model.decode(model.encode(images.to(device))).cpu()
    model.train(was_training)
    grid = (make_grid(torch.cat([images, recon]), nrow=images.shape[0], padding=2, pad_value=1.0) + 1.0) / 2.0
    save_image(grid, out / SAMPLES_DIR / f"recon_step_{step:06d}.png")
    return grid.clamp(0, 1)


def plot_loss_curve(log: MetricsLog, png: Path) -> None:
    """Autoencoder losses (log scale) beside the GAN's hinge losses (linear: they can be negative)."""
    curves = [Curve("autoencoder losses", key) for key in ("rec_loss", "codebook_loss", "commitment_loss",
                                                           "perceptual_loss")]
    curves += [Curve("GAN losses", key) for key in ("g_loss", "d_loss")]
    plot_loss_curves(log, png, curves, log_panels=("autoencoder losses",))
