"""Training the VQGAN tokenizer with accelerate.

Three layers, as everywhere in vqgpt:

- ``train_step(parts, images, step, config) -> dict`` — one micro-batch: autoencoder update
  (reconstruction + perceptual + quantizer + adaptive-weighted GAN loss) then discriminator
  update (hinge loss on real vs *detached* reconstructions). Returns numbers; logs nothing.
- ``evaluate(model, val_data) -> dict`` — PSNR, SSIM, codebook usage and perplexity of
  encode→decode on held-out images (works sharded over processes when given an accelerator).
- ``train_tokenizer(...)`` — the loop: out-dir checks, checkpoints (``accelerator.save_state``
  into a temp dir, then renamed), resume, tqdm bar, metrics.jsonl, reconstruction grids, loss
  curve, final save. Only the main process writes files.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.utils import make_grid, save_image
from tqdm.auto import tqdm

from .losses import (
    LPIPS,
    NLayerDiscriminator,
    adaptive_gan_weight,
    discriminator_loss,
    generator_adversarial_loss,
    reconstruction_loss,
)
from .metrics import code_histogram, codebook_stats, psnr, ssim
from .model import CONFIG_NAME, WEIGHTS_NAME, VQGAN, VQGANConfig

logger = logging.getLogger(__name__)

__all__ = ["TokenizerTrainConfig", "TrainParts", "WeightEMA", "train_step", "evaluate", "train_tokenizer"]

CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
TRAINER_STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass(frozen=True)
class TokenizerTrainConfig:
    """Everything about *how* the tokenizer is trained (the architecture is VQGANConfig)."""

    steps: int = 1000  # optimizer updates
    batch_size: int = 32  # images per process per micro-batch
    grad_accum_steps: int = 1  # micro-batches per optimizer update
    lr: float = 1e-3  # peak AdamW learning rate of the autoencoder
    disc_lr: float | None = None  # discriminator learning rate (None = lr)
    adam_beta1: float = 0.5
    adam_beta2: float = 0.9
    weight_decay: float = 0.01  # on conv/linear weights only (not norms, biases, codebook)
    warmup_steps: int = 50  # linear warm-up, then cosine decay to min_lr_ratio·lr
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping
    mixed_precision: str = "no"  # "no", "bf16" or "fp16"
    rec_loss: str = "l1"  # "l1" or "l2" pixel loss
    rec_weight: float = 1.0
    perceptual_weight: float = 0.0  # LPIPS weight; > 0 needs local VGG16 weights
    vgg_path: str | None = None  # torchvision vgg16 state dict (None = torch hub cache file)
    lpips_lin_path: str | None = None  # LPIPS linear weights (None = inside the lpips package)
    disc_weight: float = 0.1  # GAN loss weight (times the adaptive λ); 0 = no GAN
    disc_start: int = 0  # optimizer step at which the GAN loss and D training start
    disc_channels: int = 32  # PatchGAN width
    disc_layers: int = 2  # PatchGAN depth
    adaptive_weight_max: float = 1e4  # clamp of λ = ||∇L_rec|| / (||∇L_G|| + 1e-4)
    use_ema: bool = False  # keep an EMA of the weights; it is what gets evaluated and saved
    ema_decay: float = 0.999
    checkpoint_every: int = 500  # optimizer steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept
    sample_every: int = 500  # steps between reconstruction grids; 0 = only at the end
    num_sample_images: int = 8  # columns of the reconstruction grid
    log_every: int = 10  # steps between metrics.jsonl lines
    eval_batch_size: int = 128
    num_workers: int = 0  # DataLoader workers
    seed: int = 0
    cpu: bool = False  # force CPU even when a GPU is present

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"invalid tokenizer training config: {msg}")

        for name in ("steps", "batch_size", "grad_accum_steps", "num_sample_images", "log_every", "eval_batch_size", "keep_checkpoints"):
            if getattr(self, name) < 1:
                fail(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every", "sample_every", "disc_start", "num_workers", "grad_clip", "weight_decay", "rec_weight", "perceptual_weight", "disc_weight"):
            if getattr(self, name) < 0:
                fail(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0 or (self.disc_lr is not None and self.disc_lr <= 0):
            fail("lr and disc_lr must be > 0")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            fail(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.rec_loss not in ("l1", "l2"):
            fail(f"rec_loss must be 'l1' or 'l2', got {self.rec_loss!r}")
        if self.disc_layers < 1 or self.disc_channels < 1:
            fail("disc_layers and disc_channels must be >= 1")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            fail(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 < self.ema_decay < 1.0:
            fail(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if not (0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0):
            fail("adam_beta1 and adam_beta2 must be in [0, 1)")


class WeightEMA(nn.Module):
    """Exponential moving average of a VQGAN's weights.

    Every float parameter/buffer is averaged, except the quantizer's: the codebook is a lookup
    table whose rows get restarted, so averaging it would blend unrelated codes — it is copied.
    The decay warms up as min(decay, (1 + n) / (10 + n)).
    """

    def __init__(self, model: VQGAN, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: VQGAN) -> None:
        self.num_updates += 1
        n = int(self.num_updates)
        decay = min(self.decay, (1 + n) / (10 + n))
        current = model.state_dict()
        for name, average in self.module.state_dict().items():
            value = current[name].detach()
            if name.startswith("quantizer.") or not average.is_floating_point():
                average.copy_(value)
            else:
                average.lerp_(value.to(average.dtype), 1.0 - decay)


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
def evaluate(
    model: VQGAN,
    val_data: Dataset,
    batch_size: int = 128,
    accelerator: Accelerator | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Encode→decode every image of ``val_data``; returns psnr (dB, mean over images), ssim,
    codebook_usage (% of codes used over the whole split), perplexity (of the split's code
    histogram) and num_images. With an ``accelerator`` the split is sharded over processes."""
    if len(val_data) == 0:
        raise ValueError("evaluate() needs a non-empty validation set")
    was_training = model.training
    model.eval()
    loader = DataLoader(val_data, batch_size=batch_size, shuffle=False)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    device = device or next(model.parameters()).device
    k = model.config.codebook_size
    histogram = torch.zeros(k, dtype=torch.long)
    psnrs, ssims = [], []
    for batch in loader:
        images = batch["image"].to(device)
        codes = model.encode(images)
        recon = model.decode(codes)
        p, s = psnr(recon, images), ssim(recon, images)
        if accelerator is not None:
            p, s, codes = accelerator.gather_for_metrics((p, s, codes))
        psnrs.append(p.cpu())
        ssims.append(s.cpu())
        histogram += code_histogram(codes.cpu(), k)
    model.train(was_training)
    usage, perplexity = codebook_stats(histogram)
    return {
        "psnr": float(torch.cat(psnrs).mean()),
        "ssim": float(torch.cat(ssims).mean()),
        "codebook_usage": 100.0 * usage,
        "perplexity": perplexity,
        "num_images": int(torch.cat(psnrs).numel()),
    }


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
    accelerator = _make_accelerator(cfg)
    is_main = accelerator.is_main_process
    ckpt_root = out / CHECKPOINT_DIR
    _prepare_out_dir(out, resume, overwrite, accelerator)

    set_seed(cfg.seed)
    model = VQGAN(model_config)
    disc = NLayerDiscriminator(model_config.channels, cfg.disc_channels, cfg.disc_layers)
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    ae_opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=betas)
    d_opt = torch.optim.AdamW(_param_groups(disc, cfg.weight_decay), lr=cfg.disc_lr or cfg.lr, betas=betas)
    ae_sched = torch.optim.lr_scheduler.LambdaLR(ae_opt, _lr_lambda(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio))
    d_sched = torch.optim.lr_scheduler.LambdaLR(
        d_opt, _lr_lambda(cfg.warmup_steps, max(cfg.steps - cfg.disc_start, 1), cfg.min_lr_ratio)
    )
    loader = DataLoader(
        train_data, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    model, disc, ae_opt, d_opt, loader = accelerator.prepare(model, disc, ae_opt, d_opt, loader)
    if perceptual is not None:
        perceptual = perceptual.to(accelerator.device)
    raw_model: VQGAN = accelerator.unwrap_model(model)
    ema = WeightEMA(raw_model, cfg.ema_decay).to(accelerator.device) if cfg.use_ema else None
    # schedulers are stepped by hand once per optimizer update (not per process), so they are
    # registered for checkpointing rather than prepared
    accelerator.register_for_checkpointing(ae_sched, d_sched)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    parts = TrainParts(accelerator, model, disc, ae_opt, d_opt, ae_sched, d_sched, perceptual, ema)

    step = 0
    latest = _latest_checkpoint(ckpt_root) if resume else None
    if latest is not None:
        saved = json.loads((latest / TRAINER_STATE_FILE).read_text())
        if saved.get("model_config", model_config.to_dict()) != model_config.to_dict():
            raise ValueError(f"the checkpoint in {latest} was trained with another model config; "
                             "resume with the same --preset/--config/--set as the first run")
        accelerator.load_state(str(latest))
        step = int(saved["step"])
        logger.info("resumed from %s (step %d)", latest, step)
    elif resume:
        logger.info("no checkpoint in %s; starting from step 0", ckpt_root)
    if is_main:
        _truncate_metrics(out / METRICS_FILE, step)

    sample_images = _sample_batch(val_data if val_data is not None else train_data, cfg.num_sample_images)
    batches_per_epoch = len(loader)
    micro = step * cfg.grad_accum_steps
    epoch, skip = divmod(micro, batches_per_epoch)
    bar = tqdm(total=cfg.steps, initial=step, desc="train tokenizer", dynamic_ncols=True, disable=not accelerator.is_local_main_process)
    start_time, images_seen = time.perf_counter(), 0
    metrics_file = open(out / METRICS_FILE, "a") if is_main else None
    try:
        while step < cfg.steps:
            loader.set_epoch(epoch)  # seeds the shuffle: epoch e has the same order on resume
            for index, batch in enumerate(loader):
                if index < skip:  # resuming mid-epoch: skip the batches already trained on
                    continue
                metrics = train_step(parts, batch["image"], step, cfg)
                images_seen += batch["image"].shape[0] * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                step += 1
                bar.update(1)
                bar.set_postfix(
                    rec=f"{metrics['rec_loss']:.4f}", q=f"{metrics['codebook_loss']:.4f}",
                    use=f"{metrics['batch_usage']:.2f}", **({"d": f"{metrics['d_loss']:.3f}"} if "d_loss" in metrics else {}),
                )
                if metrics_file is not None and (step % cfg.log_every == 0 or step == cfg.steps):
                    elapsed = time.perf_counter() - start_time
                    record = {"step": step, **metrics, "images_per_sec": images_seen / max(elapsed, 1e-9)}
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                if cfg.sample_every and step % cfg.sample_every == 0 and step < cfg.steps:
                    _save_recon_grid(ema.module if ema else raw_model, sample_images, out, step, accelerator)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    _save_checkpoint(accelerator, ckpt_root, step, cfg.keep_checkpoints, model_config)
                if step >= cfg.steps:
                    break
            epoch, skip = epoch + 1, 0
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
    train_seconds = time.perf_counter() - start_time

    final_model = ema.module if ema is not None else raw_model
    final_model.eval()
    summary: dict[str, Any] = {"steps": step, "train_seconds": train_seconds, "train_images_per_sec": images_seen / max(train_seconds, 1e-9)}
    if val_data is not None:
        summary.update(evaluate(final_model, val_data, cfg.eval_batch_size, accelerator))
    _save_recon_grid(final_model, sample_images, out, step, accelerator)
    if is_main:
        with open(out / METRICS_FILE, "a") as f:
            f.write(json.dumps({"step": step, "split": "validation", **{k: v for k, v in summary.items()}}) + "\n")
        _plot_loss_curve(out / METRICS_FILE, out / LOSS_CURVE_FILE)
    accelerator.wait_for_everyone()
    if cfg.checkpoint_every:
        _save_checkpoint(accelerator, ckpt_root, step, cfg.keep_checkpoints, model_config)
    if is_main:
        final_model.save_pretrained(out)
    accelerator.wait_for_everyone()
    summary["fingerprint"] = final_model.fingerprint()
    summary["out_dir"] = str(out)
    if is_main:
        logger.info("tokenizer saved to %s: %s", out, {k: summary[k] for k in summary if k in ("psnr", "ssim", "codebook_usage", "perplexity")})
    return summary


# ---------------------------------------------------------------------------------------------
# Helpers of the loop
# ---------------------------------------------------------------------------------------------
def _make_accelerator(cfg: TokenizerTrainConfig) -> Accelerator:
    kwargs = dict(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        cpu=cfg.cpu,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    try:
        return Accelerator(**kwargs)
    except ValueError as err:
        # In a single process (tests, the demo) an earlier run may have fixed accelerate's
        # global state with another precision; start it afresh. Launched jobs keep the error.
        if "already been initialized" not in str(err) or PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        return Accelerator(**kwargs)


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


def _lr_lambda(warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _prepare_out_dir(out: Path, resume: bool, overwrite: bool, accelerator: Accelerator) -> None:
    complete = (out / CONFIG_NAME).is_file() and (out / WEIGHTS_NAME).is_file()
    ckpt_root = out / CHECKPOINT_DIR
    has_ckpt = _latest_checkpoint(ckpt_root) is not None
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {out} exists and is not a folder")
    if (out / "vqgpt_prior.json").is_file() or (out / "dataset_dict.json").is_file():
        raise ValueError(f"{out} holds a prior or a token dataset, not a tokenizer run; choose another --out")
    if resume and not has_ckpt:
        raise FileNotFoundError(f"nothing to resume: {ckpt_root} holds no checkpoint; run without --resume")
    if not overwrite and not resume:
        if complete:
            raise FileExistsError(f"{out} already holds a trained tokenizer; pass overwrite (--overwrite) to replace it")
        if has_ckpt:
            raise FileExistsError(
                f"{out} holds checkpoints of an unfinished run; pass resume (--resume) to continue or overwrite (--overwrite)"
            )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if overwrite and not resume:
            for name in (CONFIG_NAME, WEIGHTS_NAME, METRICS_FILE, LOSS_CURVE_FILE):
                (out / name).unlink(missing_ok=True)
            for name in (CHECKPOINT_DIR, SAMPLES_DIR):
                shutil.rmtree(out / name, ignore_errors=True)
        elif complete:  # resuming over a finished model: it is rewritten at the end
            (out / CONFIG_NAME).unlink()
        (out / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
        ckpt_root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()


def _latest_checkpoint(ckpt_root: Path) -> Path | None:
    if not ckpt_root.is_dir():
        return None
    found = []
    for path in ckpt_root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / TRAINER_STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def _save_checkpoint(accelerator: Accelerator, ckpt_root: Path, step: int, keep: int, model_config: VQGANConfig) -> None:
    """accelerate.save_state into ``.tmp_step_N``, then rename to ``step_N`` (atomic)."""
    final = ckpt_root / f"step_{step}"
    tmp = ckpt_root / f".tmp_step_{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE_FILE).write_text(json.dumps({"step": step, "model_config": model_config.to_dict()}) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        steps = sorted(int(m.group(1)) for p in ckpt_root.iterdir() if (m := _STEP_DIR.match(p.name)))
        for old in steps[:-keep]:
            shutil.rmtree(ckpt_root / f"step_{old}", ignore_errors=True)
    accelerator.wait_for_everyone()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics.jsonl lines logged after ``step`` (by a run killed after its checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        record = json.loads(line) if line.strip() else None
        if record is not None and record.get("step", 0) <= step and "split" not in record:
            kept.append(line + "\n")
    path.write_text("".join(kept))


def _sample_batch(data: Dataset, n: int) -> torch.Tensor:
    return torch.stack([data[i]["image"] for i in range(min(n, len(data)))])  # (n, C, H, W)


@torch.no_grad()
def _save_recon_grid(model: VQGAN, images: torch.Tensor, out: Path, step: int, accelerator: Accelerator) -> None:
    """Originals (top row) over reconstructions (bottom row) → samples/recon_step_XXXXXX.png."""
    if not accelerator.is_main_process:
        return
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    recon = model.decode(model.encode(images.to(device))).cpu()
    model.train(was_training)
    grid = make_grid(torch.cat([images, recon]), nrow=images.shape[0], padding=2, pad_value=1.0)
    save_image((grid + 1.0) / 2.0, out / SAMPLES_DIR / f"recon_step_{step:06d}.png")


def _plot_loss_curve(metrics_path: Path, png_path: Path) -> None:
    """Training losses against step (log scale) → loss_curve.png (Agg canvas, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    records = [r for r in records if "split" not in r]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_ae, ax_gan = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for key in ("rec_loss", "codebook_loss", "commitment_loss", "perceptual_loss"):
        points = [(r["step"], r[key]) for r in records if key in r and r[key] > 0]
        if points:
            ax_ae.plot(*zip(*points), label=key)
    for key in ("g_loss", "d_loss"):  # hinge losses can be negative: linear scale
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax_gan.plot(*zip(*points), label=key)
    if ax_ae.lines:
        ax_ae.set_yscale("log")
    ax_ae.set_title("autoencoder losses")
    ax_gan.set_title("GAN losses" if ax_gan.lines else "GAN losses (GAN not started)")
    for ax in (ax_ae, ax_gan):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
