"""The tokenizer's run folder: what ``train_tokenizer`` writes besides the model, in one place.

    out/config.json, model.safetensors        the finished tokenizer (``VQGAN.save_pretrained``)
    out/checkpoints/step_N/                   ``accelerator.save_state`` (models as safetensors, optimizers,
                                              RNG states) + ema.safetensors + trainer_state.json
    out/samples/recon_step_XXXXXX.png         originals over reconstructions during training
    out/metrics.jsonl, out/loss_curve.png     training log and its plot

A checkpoint is written into a hidden temporary folder and renamed into place, so a run killed
while saving never leaves a ``step_N`` that ``--resume`` would pick up half-written. Only the
main process writes; every process takes part in ``save_state`` and waits at the barriers.

Nothing in a checkpoint is unpickled with ``weights_only=False``: the learning-rate schedules
are JSON in trainer_state.json and the EMA weights safetensors (rather than accelerate's
``register_for_checkpointing``, whose files it reads back as arbitrary pickles); what
accelerate itself reads back (optimizer, RNG and sampler states) it reads with
``weights_only=True``. ``load_checkpoint`` turns a damaged file into one clear error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from safetensors.torch import load_file, save_file
from torchvision.utils import make_grid, save_image

from .model import CONFIG_NAME, VQGAN, WEIGHTS_NAME

__all__ = ["CHECKPOINT_DIR", "SAMPLES_DIR", "METRICS_FILE", "LOSS_CURVE_FILE", "TRAINER_STATE_FILE",
           "EMA_FILE", "prepare_out_dir", "latest_checkpoint", "save_checkpoint", "read_trainer_state", "load_checkpoint", "truncate_metrics",
           "save_recon_grid", "plot_loss_curve"]

CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
TRAINER_STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
_STEP_DIR = re.compile(r"^step_(\d+)$")
# Files of the other stages' folders: a tokenizer run never goes into one of those.
_FOREIGN_MARKERS = ("vqgpt_prior.json", "dataset_dict.json")


def prepare_out_dir(out: Path, resume: bool, overwrite: bool, accelerator: Accelerator) -> None:
    """Check ``out`` for the requested mode and make its sub-folders.

    Without ``resume`` or ``overwrite`` a finished tokenizer or an unfinished run is refused;
    ``overwrite`` removes only what a tokenizer run writes (never a user's other files)."""
    complete = (out / CONFIG_NAME).is_file() and (out / WEIGHTS_NAME).is_file()
    ckpt_root = out / CHECKPOINT_DIR
    has_ckpt = latest_checkpoint(ckpt_root) is not None
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {out} exists and is not a folder")
    if any((out / marker).is_file() for marker in _FOREIGN_MARKERS):
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


def _step_dirs(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Finished checkpoints (those holding trainer_state.json), oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / TRAINER_STATE_FILE).is_file()]
    return sorted(found)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest finished ``step_N`` folder, or None."""
    found = _step_dirs(ckpt_root)
    return found[-1][1] if found else None


def save_checkpoint(accelerator: Accelerator, ckpt_root: Path, step: int, keep: int, record: dict[str, Any],
                    schedulers: list[Any] = (), ema: torch.nn.Module | None = None) -> None:
    """``save_state`` into ``.tmp_step_N``, add the EMA weights and trainer_state.json
    (``{"step", **record, "schedulers": [state dicts]}``), rename to ``step_N``; then keep
    only the newest ``keep`` checkpoints."""
    final, tmp = ckpt_root / f"step_{step}", ckpt_root / f".tmp_step_{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}, str(tmp / EMA_FILE))
        state = {"step": step, **record, "schedulers": [s.state_dict() for s in schedulers]}
        (tmp / TRAINER_STATE_FILE).write_text(json.dumps(state) + "\n")
        if final.exists():
            _discard(final)
        os.replace(tmp, final)
        for _, old in _step_dirs(ckpt_root)[:-keep]:
            _discard(old)
    accelerator.wait_for_everyone()


def _discard(path: Path) -> None:
    """Remove a checkpoint folder so that a kill part-way never leaves a half-deleted
    ``step_N``: rename it to a hidden name (atomic) first, then delete."""
    aside = path.with_name(f".old_{path.name}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _damaged(path: Path, what: str, err: BaseException) -> ValueError:
    reason = (str(err).splitlines() or [""])[0][:200]
    return ValueError(f"checkpoint {path} is damaged ({what}: {type(err).__name__}: {reason}); delete it to "
                      f"resume from an earlier one, or start again with --overwrite")


def read_trainer_state(path: Path) -> dict[str, Any]:
    """trainer_state.json of a checkpoint folder (one clear error when unreadable)."""
    try:
        saved = json.loads((path / TRAINER_STATE_FILE).read_text())
        if not isinstance(saved, dict) or not isinstance(saved.get("step"), int):
            raise ValueError("no integer 'step'")
        return saved
    except (OSError, ValueError) as err:
        raise _damaged(path, TRAINER_STATE_FILE, err) from None


def load_checkpoint(accelerator: Accelerator, path: Path, schedulers: list[Any] = (),
                    ema: torch.nn.Module | None = None) -> dict[str, Any]:
    """Restore a ``step_N`` folder written by ``save_checkpoint`` into the prepared objects;
    returns its trainer_state.json. Any damaged or missing file is one ValueError naming it."""
    saved = read_trainer_state(path)
    planted = sorted(p.name for p in path.glob("custom_checkpoint_*"))
    if planted:  # vqgpt never writes these; accelerate would unpickle them with weights_only=False
        raise ValueError(f"cannot resume: {path} holds {', '.join(planted)}, which vqgpt never writes and will not "
                         "load (pickles can run code); remove them or resume from a checkpoint you made")
    # accelerate logs and skips an unreadable RNG file; a resume that silently changes the
    # random stream is not bit-identical, so every process checks its own file first.
    rng_file = path / f"random_states_{accelerator.process_index}.pkl"
    try:
        accelerate_load(rng_file)
    except Exception as err:  # torch raises assorted types for truncated or foreign pickles
        raise _damaged(path, rng_file.name, err) from None
    try:
        accelerator.load_state(str(path))
        for scheduler, state in zip(schedulers, saved["schedulers"], strict=True):
            scheduler.load_state_dict(state)
        if ema is not None:
            ema.load_state_dict(load_file(str(path / EMA_FILE), device=str(accelerator.device)))
    except Exception as err:  # safetensors, torch and accelerate raise assorted types
        raise _damaged(path, "weights, optimizer or schedule", err) from None
    return saved


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics.jsonl lines logged after ``step`` (by a run killed after its checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        record = json.loads(line) if line.strip() else None
        if record is not None and record.get("step", 0) <= step and "split" not in record:
            kept.append(line + "\n")
    path.write_text("".join(kept))


@torch.no_grad()
def save_recon_grid(model: VQGAN, images: torch.Tensor, out: Path, step: int, accelerator: Accelerator) -> None:
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

def plot_loss_curve(metrics_path: Path, png_path: Path) -> None:
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
