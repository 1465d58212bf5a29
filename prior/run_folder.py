"""The prior's training folder: what `train_prior` writes besides the checkpoints.

    out/config.json, model.safetensors, generation_config.json, vqgpt_prior.json   (at the end)
    out/metrics.jsonl, out/loss_curve.png
    out/checkpoints/step_N/   a checkpoint (`vqgpt.checkpoints`, shared with the tokenizer)
    out/checkpoints/best/     best prior by held-out loss (when early stopping is on)
    out/samples/              sample grids (when the pipeline passes a decoder)

Checkpoints, resuming, the metrics log and the NaN stop are `vqgpt.checkpoints`'; this module adds
what only a prior run has: its folder checks, the checks before a resume, and publishing the final
prior without ever leaving the folder without a loadable one.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from transformers import PreTrainedModel

from vqgpt.atomic import publish_files
from vqgpt.checkpoints import (
    CHECKPOINT_DIR,
    LOSS_CURVE_FILE,
    METRICS_FILE,
    Curve,
    MetricsLog,
    list_checkpoints,
    plot_loss_curves,
)

from .config import PriorConfig
from .model import SPEC_FILE, PriorSpec

__all__ = ["publish", "plot_loss_curve", "prepare_out_dir", "check_resume"]


def publish(model: PreTrainedModel, spec: PriorSpec, out_dir: Path) -> None:
    """Write the final prior into `out_dir` (which also holds logs, checkpoints and maybe a user's
    files) so that the folder always loads as the old prior or the new one: `vqgpt.atomic.publish_files`
    builds the new folder beside it and swaps it in whole (one atomic exchange on Linux)."""
    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        (folder / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=2) + "\n")

    stale = [p.name for pattern in _PRIOR_FILES for p in out_dir.glob(pattern)]  # an older prior's weight shards
    publish_files(out_dir, write, replaced=[*stale, SPEC_FILE])


_PRIOR_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                "model-*-of-*.safetensors")


def plot_loss_curve(log: MetricsLog, png: Path) -> None:
    """Training and held-out bits per code against step → loss_curve.png."""
    plot_loss_curves(log, png, [Curve("prior loss", "bits_per_code", "train", "train"),
                                Curve("prior loss", "bits_per_code", "validation", "held-out", "o-")],
                     ylabel="bits per code")


def prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Check `out_dir` for the requested mode: a non-empty folder needs `resume` (with a checkpoint)
    or `overwrite` (and must be a prior's training folder)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose another output folder")
    if resume:
        if not list_checkpoints(out_dir / CHECKPOINT_DIR):
            raise FileNotFoundError(f"nothing to resume: {out_dir / CHECKPOINT_DIR} holds no checkpoint; run without `resume`")
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} already exists and is not empty; pass `overwrite` to replace it or `resume` to "
                                  "continue")
        ours = (out_dir / SPEC_FILE).is_file() or any(
            "tokens_dir" in p.read_text() for p in (out_dir / CHECKPOINT_DIR).glob("step_*/trainer_state.json"))
        if not ours:
            raise ValueError(f"`overwrite` refused: {out_dir} does not look like a prior training folder; choose another "
                             "output folder")
        # Only what a training run writes goes, and the finished prior stays usable until the new
        # one replaces it (`publish`); a user's other files in the folder are never touched.
        for name in (CHECKPOINT_DIR, "samples", "trackers"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in (METRICS_FILE, LOSS_CURVE_FILE):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def check_resume(saved: dict, spec: PriorSpec, model_config: PriorConfig, tokens_dir: str) -> None:
    """Refuse to continue a checkpoint on tokens of another tokenizer, codebook, grid or classes."""
    if saved.get("tokenizer_fingerprint") != spec.tokenizer_fingerprint:
        raise ValueError(f"cannot resume: {tokens_dir} comes from tokenizer {spec.tokenizer_fingerprint or '?'}, "
                         f"the checkpoint was trained on {saved.get('tokenizer_fingerprint') or '?'}")
    if saved.get("codebook_size") != spec.codebook_size:
        raise ValueError(f"cannot resume: {tokens_dir} has codebook size {spec.codebook_size}, the checkpoint {saved.get('codebook_size')}")
    if tuple(saved.get("grid", ())) != spec.grid or tuple(saved.get("class_names", ())) != spec.class_names:
        raise ValueError(f"cannot resume: {tokens_dir} has grid {list(spec.grid)} and {spec.num_classes} classes, "
                         f"the checkpoint grid {saved.get('grid')} and {len(saved.get('class_names', []))} classes")
    given = dataclasses.asdict(model_config)
    changed = [k for k, v in saved.get("model_config", {}).items() if given.get(k) != v]
    if changed:
        raise ValueError(f"cannot resume with different model settings ({', '.join(changed)}); use the checkpoint's")
