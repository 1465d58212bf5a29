"""Training the VQGAN tokenizer with accelerate.

Three layers, as everywhere in vqgpt:

- ``train_step(parts, images, step, config) -> dict`` — one micro-batch: autoencoder update
  (reconstruction + perceptual + quantizer + adaptive-weighted GAN loss) then discriminator
  update (hinge loss on real vs *detached* reconstructions). Returns numbers; logs nothing.
- ``evaluate_reconstruction(model, val_data) -> dict`` — PSNR, SSIM (LPIPS when given one), codebook usage
  and perplexity of encode→decode on held-out images (sharded over processes when given an
  accelerator); ``vqgpt evaluate`` adds rFID through its ``on_batch`` hook.
- ``train_tokenizer(...)`` — the loop: out-dir checks, checkpoints and resume (``vqgpt.checkpoints``,
  shared with the prior), tqdm bar, metrics.jsonl, reconstruction grids, loss curve, final save.
  Only the main process writes files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from vqgpt import checkpoints as ckpt
from vqgpt.atomic import publish_files
from vqgpt.resources import require_memory

from . import run_folder
from .config import TokenizerTrainConfig, VQGANConfig
from .losses import (
    LPIPS,
    NLayerDiscriminator,
    adaptive_gan_weight,
    discriminator_loss,
    generator_adversarial_loss,
    reconstruction_loss,
)
from .metrics import code_histogram, codebook_stats, psnr, ssim
from .model import CONFIG_NAME, VQGAN, WEIGHTS_NAME

logger = logging.getLogger(__name__)

__all__ = ["TrainParts", "WeightEMA", "train_step", "evaluate_reconstruction", "train_tokenizer"]


class WeightEMA(AveragedModel):
    """Exponential moving average of a VQGAN's weights (``torch.optim.swa_utils``).

    Every parameter — codebook included, as LlamaGen's tokenizer does — is averaged with
    ``decay``; buffers (the quantizer's k-means flag and usage counters) are copied from the
    live model, since an average of counters or flags means nothing. ``.module`` is the
    averaged VQGAN: what gets evaluated and saved."""

    def __init__(self, model: VQGAN, decay: float):
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
        self.module.eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: VQGAN) -> None:
        self.update_parameters(model)
        for average, live in zip(self.module.buffers(), model.buffers()):
            average.copy_(live)


@dataclass
class TrainParts:
    """What ``train_step`` needs; built (and prepared) by ``train_tokenizer``."""

    accelerator: Accelerator
    model: nn.Module  # VQGAN, possibly wrapped (DDP)
    discriminator: nn.Module  # NLayerDiscriminator, possibly wrapped
    ae_optimizer: torch.optim.Optimizer
    d_optimizer: torch.optim.Optimizer
    ae_scheduler: torch.optim.lr_scheduler.LRScheduler
    d_scheduler: torch.optim.lr_scheduler.LRScheduler
    perceptual: LPIPS | None = None
    ema: WeightEMA | None = None


def train_step(parts: TrainParts, images: torch.Tensor, step: int, config: TokenizerTrainConfig) -> dict[str, float]:
    """One micro-batch of training on ``images`` (B, C, H, W) in [-1, 1] at optimizer step
    ``step``. Steps the optimizers/schedulers when the accumulation window is complete.
    Returns a dict of floats (losses, λ, grad norm, batch codebook usage/perplexity)."""
    acc = parts.accelerator
    model, disc = parts.model, parts.discriminator
    raw_model: VQGAN = acc.unwrap_model(model)
    raw_disc: nn.Module = acc.unwrap_model(disc)
    gan_active = config.disc_weight > 0 and step >= config.disc_start
    model.train()
    disc.train()
    metrics: dict[str, float] = {}

    # -- autoencoder (generator) update ---------------------------------------------------------
    with acc.accumulate(model, disc):
        with acc.autocast():
            out = model(images)
            rec = out.reconstruction
            rec_loss = reconstruction_loss(rec.float(), images.float(), config.rec_loss)
            nll = config.rec_weight * rec_loss
            if parts.perceptual is not None and config.perceptual_weight > 0:
                p_loss = parts.perceptual(rec, images).mean()
                nll = nll + config.perceptual_weight * p_loss
                metrics["perceptual_loss"] = p_loss.item()
            loss = nll + out.quantizer_loss
            if gan_active:
                # unwrapped D with its parameters frozen: the generator loss sends no grads to D
                g_loss = generator_adversarial_loss(raw_disc, rec)
        if gan_active:
            weight = adaptive_gan_weight(nll, g_loss, raw_model.last_layer, config.adaptive_weight_max)
            loss = loss + config.disc_weight * weight * g_loss
            metrics["g_loss"] = g_loss.item()
            metrics["gan_lambda"] = weight.item()
        acc.backward(loss)
        if acc.sync_gradients and config.grad_clip > 0:
            metrics["grad_norm"] = float(acc.clip_grad_norm_(model.parameters(), config.grad_clip))
        parts.ae_optimizer.step()
        if acc.sync_gradients:
            parts.ae_scheduler.step()
        parts.ae_optimizer.zero_grad(set_to_none=True)

        # -- discriminator update (reconstructions detached: no grads into the autoencoder) --
        if gan_active:
            with acc.autocast():
                d_loss = discriminator_loss(disc, images, rec)
            acc.backward(d_loss)
            if acc.sync_gradients and config.grad_clip > 0:
                acc.clip_grad_norm_(disc.parameters(), config.grad_clip)
            parts.d_optimizer.step()
            if acc.sync_gradients:
                parts.d_scheduler.step()
            parts.d_optimizer.zero_grad(set_to_none=True)
            metrics["d_loss"] = d_loss.item()

    if parts.ema is not None and acc.sync_gradients:
        parts.ema.update(raw_model)
    metrics.update(
        loss=loss.item(),
        rec_loss=rec_loss.item(),
        codebook_loss=out.codebook_loss.item(),
        commitment_loss=out.commitment_loss.item(),
        batch_usage=out.usage.item(),
        batch_perplexity=out.perplexity.item(),
        lr=parts.ae_scheduler.get_last_lr()[0],
    )
    return metrics


@torch.no_grad()
def evaluate_reconstruction(
    model: VQGAN,
    val_data: Dataset,
    batch_size: int = 128,
    accelerator: Accelerator | None = None,
    device: str | torch.device | None = None,
    lpips: nn.Module | None = None,
    on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> dict[str, float]:
    """Encode→decode every image of ``val_data``; returns psnr (dB, mean over images), ssim,
    codebook_usage (% of codes used over the whole split), perplexity (of the split's code
    histogram) and num_images. With an ``accelerator`` the split is sharded over processes.

    ``lpips``: a perceptual distance module ((B, C, H, W) pairs in [-1, 1] → (B,)), adds
    ``lpips`` (mean over images). ``on_batch(images, reconstructions)`` sees every batch of
    this process (both (B, C, H, W) in [-1, 1]), e.g. to collect features for an rFID."""
    if len(val_data) == 0:
        raise ValueError("evaluate_reconstruction() needs a non-empty validation set")
    was_training = model.training
    model.eval()
    loader = DataLoader(val_data, batch_size=batch_size, shuffle=False)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    device = device or next(model.parameters()).device
    k = model.config.codebook_size
    histogram = torch.zeros(k, dtype=torch.long)
    figures: dict[str, list[torch.Tensor]] = {"psnr": [], "ssim": [], "lpips": []}
    for batch in loader:
        images = batch["image"].to(device)
        codes = model.encode(images)
        recon = model.decode(codes)
        per_image = {"psnr": psnr(recon, images), "ssim": ssim(recon, images)}
        if lpips is not None:
            per_image["lpips"] = lpips(recon.float(), images.float())
        if on_batch is not None:
            on_batch(images, recon)
        if accelerator is not None:
            per_image, codes = accelerator.gather_for_metrics((per_image, codes))
        for name, values in per_image.items():
            figures[name].append(values.float().cpu())
        histogram += code_histogram(codes.cpu(), k)
    model.train(was_training)
    usage, perplexity = codebook_stats(histogram)
    out = {
        "psnr": float(torch.cat(figures["psnr"]).mean()),
        "ssim": float(torch.cat(figures["ssim"]).mean()),
        "codebook_usage": 100.0 * usage,
        "perplexity": perplexity,
        "num_images": int(torch.cat(figures["psnr"]).numel()),
    }
    if figures["lpips"]:
        out["lpips"] = float(torch.cat(figures["lpips"]).mean())
    return out


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def train_tokenizer(
    model_config: VQGANConfig,
    train_config: TokenizerTrainConfig,
    train_data: Dataset,
    val_data: Dataset | None,
    out_dir: str | os.PathLike,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a VQGAN on ``train_data`` and save it to ``out_dir`` (config.json +
    model.safetensors, written only when training has finished).

    ``out_dir`` also receives ``checkpoints/step_N`` (every ``checkpoint_every`` steps),
    ``samples/recon_step_XXXXXX.png``, ``metrics.jsonl`` and ``loss_curve.png``. An out_dir
    holding a finished tokenizer or an unfinished run needs ``overwrite`` or ``resume``.
    Returns a summary: final validation metrics, steps, seconds, images/s and fingerprint.
    """
    cfg = train_config
    out = Path(out_dir)
    if len(train_data) < cfg.batch_size:
        raise ValueError(f"the training set has {len(train_data)} images, fewer than batch_size {cfg.batch_size}")
    if val_data is not None and len(val_data) == 0:
        val_data = None
    _check_image(train_data[0]["image"], model_config)
    perceptual = LPIPS(cfg.vgg_path, cfg.lpips_lin_path) if cfg.perceptual_weight > 0 else None  # fails early
    accelerator = ckpt.make_accelerator(cfg.mixed_precision, cfg.gradient_accumulation_steps, cfg.seed, cpu=cfg.cpu,
                                        report_to=cfg.report_to, logging_dir=out / "trackers")
    is_main = accelerator.is_main_process
    ckpt_root = out / ckpt.CHECKPOINT_DIR
    run_folder.prepare_out_dir(out, resume, overwrite, accelerator)
    ckpt.start_trackers(accelerator, "vqgpt-tokenizer", {**{f"model/{k}": v for k, v in model_config.to_dict().items()},
                                                         **{f"train/{k}": v for k, v in dataclasses.asdict(cfg).items()}})

    with torch.device("meta"):  # sizes that cannot fit are refused before anything is allocated
        weights = sum(p.numel() for p in VQGAN(model_config).parameters())
    # weights, gradients and two AdamW moments, fp32; the discriminator is small beside them
    require_memory(16 * weights, f"training a {weights / 1e6:.0f} M-parameter tokenizer", accelerator.device)
    set_seed(cfg.seed)
    model = VQGAN(model_config)
    disc = NLayerDiscriminator(model_config.channels, cfg.disc_channels, cfg.disc_layers)
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    ae_opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=betas)
    d_opt = torch.optim.AdamW(_param_groups(disc, cfg.weight_decay), lr=cfg.disc_learning_rate or cfg.learning_rate,
                              betas=betas)
    ae_sched = get_cosine_with_min_lr_schedule_with_warmup(ae_opt, cfg.warmup_steps, cfg.max_steps,
                                                           min_lr_rate=cfg.min_lr_ratio)
    d_sched = get_cosine_with_min_lr_schedule_with_warmup(d_opt, cfg.warmup_steps, max(cfg.max_steps - cfg.disc_start, 1),
                                                          min_lr_rate=cfg.min_lr_ratio)
    loader = DataLoader(
        train_data, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    model, disc, ae_opt, d_opt, loader = accelerator.prepare(model, disc, ae_opt, d_opt, loader)
    if perceptual is not None:
        perceptual = perceptual.to(accelerator.device)
    raw_model: VQGAN = accelerator.unwrap_model(model)
    ema = WeightEMA(raw_model, cfg.ema_decay).to(accelerator.device) if cfg.use_ema else None
    # schedulers are stepped by hand once per optimizer update (not per process), so they are not
    # prepared; checkpoints keep their state (and the EMA) themselves, without pickles
    schedulers = [ae_sched, d_sched]
    parts = TrainParts(accelerator, model, disc, ae_opt, d_opt, ae_sched, d_sched, perceptual, ema)

    record = {"model_config": model_config.to_dict()}  # trainer_state.json of every checkpoint
    step = 0
    latest = ckpt.latest_checkpoint(ckpt_root) if resume else None
    if latest is not None:
        saved = ckpt.read_trainer_state(latest)
        if saved.get("model_config", model_config.to_dict()) != model_config.to_dict():
            raise ValueError(f"the checkpoint in {latest} was trained with another model config; "
                             "resume with the same preset and settings as the first run")
        ckpt.load_checkpoint(accelerator, latest, schedulers, run_folder.ema_loader(ema, accelerator.device))
        step = int(saved["step"])
        logger.info("resumed from %s (step %d)", latest, step)
    log = ckpt.MetricsLog(out / ckpt.METRICS_FILE, enabled=is_main, accelerator=accelerator)
    log.start(step)

    def save_checkpoint() -> None:
        ckpt.save_checkpoint(accelerator, ckpt_root, step, record, cfg.keep_checkpoints, schedulers,
                             run_folder.ema_writer(ema))

    shown = val_data if val_data is not None else train_data
    sample_images = torch.stack([shown[i]["image"] for i in range(min(cfg.num_sample_images, len(shown)))])
    batches = ckpt.resumable_batches(accelerator, loader, step * cfg.gradient_accumulation_steps)
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train tokenizer", dynamic_ncols=True,
               disable=not accelerator.is_local_main_process)
    start_time, images_seen = time.perf_counter(), 0
    guard = ckpt.StepGuard(accelerator, ckpt_root, "tokenizer").__enter__()  # left in the finally below
    try:
        while step < cfg.max_steps:
            batch = next(batches)
            metrics = train_step(parts, batch["image"], step, cfg)
            images_seen += batch["image"].shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            preempted = guard.check(metrics["loss"], step + 1)  # NaN/Inf anywhere: stops before saving
            step += 1
            bar.update(1)
            bar.set_postfix(
                rec=f"{metrics['rec_loss']:.4f}", q=f"{metrics['codebook_loss']:.4f}",
                use=f"{metrics['batch_usage']:.2f}", **({"d": f"{metrics['d_loss']:.3f}"} if "d_loss" in metrics else {}),
            )
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                elapsed = time.perf_counter() - start_time
                log.write({"step": step, "split": "train", **metrics, "images_per_sec": images_seen / max(elapsed, 1e-9)})
            if cfg.sample_every and step % cfg.sample_every == 0 and step < cfg.max_steps:
                grid = run_folder.save_recon_grid(ema.module if ema else raw_model, sample_images, out, step, accelerator)
                if grid is not None:
                    ckpt.log_image(accelerator, "reconstructions", grid, step)
            saved = cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps
            if saved or (preempted and step < cfg.max_steps):
                save_checkpoint()
            if preempted and step < cfg.max_steps:  # SIGTERM: the step in flight is done and saved
                raise ckpt.Preempted("tokenizer", step, ckpt_root / f"step_{step}")
    finally:
        guard.__exit__()
        bar.close()
    train_seconds = time.perf_counter() - start_time

    final_model = ema.module if ema is not None else raw_model
    final_model.eval()
    summary: dict[str, Any] = {"steps": step, "train_seconds": train_seconds,
                               "train_images_per_sec": images_seen / max(train_seconds, 1e-9)}
    if val_data is not None:
        summary.update(evaluate_reconstruction(final_model, val_data, cfg.eval_batch_size, accelerator))
    grid = run_folder.save_recon_grid(final_model, sample_images, out, step, accelerator)
    if grid is not None:
        ckpt.log_image(accelerator, "reconstructions", grid, step)
    log.write({"step": step, "split": "validation", "final": True, **summary})
    if is_main:
        run_folder.plot_loss_curve(log, out / ckpt.LOSS_CURVE_FILE)
    accelerator.wait_for_everyone()
    if cfg.checkpoint_every:
        save_checkpoint()
    if is_main:  # the finished tokenizer (kept through an overwrite run) is replaced in one swap
        publish_files(out, final_model.save_pretrained, replaced=(CONFIG_NAME, WEIGHTS_NAME))
    accelerator.wait_for_everyone()
    summary["fingerprint"] = final_model.fingerprint()
    summary["out_dir"] = str(out)
    if accelerator.trackers:
        accelerator.end_training()  # closes the trackers' files
    if is_main:
        logger.info("tokenizer saved to %s: %s", out, {k: summary[k] for k in summary if k in ("psnr", "ssim", "codebook_usage", "perplexity")})
    return summary


# ---------------------------------------------------------------------------------------------
# Helpers of the loop
# ---------------------------------------------------------------------------------------------
def _check_image(image: torch.Tensor, config: VQGANConfig) -> None:
    expected = (config.channels, config.image_size, config.image_size)
    if tuple(image.shape) != expected:
        raise ValueError(
            f"training images have shape {tuple(image.shape)} but the tokenizer config expects {expected} "
            "(set image_size/channels to match the data)"
        )


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv weights only; none on biases, norms and the codebook."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith("codebook") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
