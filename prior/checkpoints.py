"""The prior's training folder: checkpoints, the final prior files, the loss curve — in one place.

    out/config.json, model.safetensors, generation_config.json, vqgpt_prior.json   (at the end)
    out/metrics.jsonl, out/loss_curve.png
    out/checkpoints/step_N/   accelerate `save_state` + trainer_state.json (written atomically)
    out/checkpoints/best/     best prior by held-out loss (when early stopping is on)

Only the main process writes; `save_checkpoint` is called on every process (`save_state` and the
barriers need them all). No checkpoint file is read back as an arbitrary pickle: the schedule's
state is JSON inside trainer_state.json, and accelerate reads the optimizer, RNG and sampler
states with `weights_only=True`; `load_checkpoint` checks them and names a damaged file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from transformers import PreTrainedModel

from .config import PriorConfig
from .model import SPEC_FILE, PriorSpec, save_prior

__all__ = ["CHECKPOINT_DIR", "STATE_FILE", "checkpoints", "save_checkpoint", "read_state", "load_checkpoint", "publish", "move_prior_files",
           "plot_loss_curve", "prepare_out_dir", "check_resume"]

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"


def checkpoints(root: Path) -> list[tuple[int, Path]]:
    out = []
    for path in root.glob("step_*") if root.is_dir() else []:
        if path.is_dir() and path.name[5:].isdigit() and (path / STATE_FILE).is_file():
            out.append((int(path.name[5:]), path))
    return sorted(out)


def save_checkpoint(accelerator: Accelerator, root: Path, step: int, record: dict, keep: int, scheduler) -> None:
    """`save_state` into a temporary folder, add trainer_state.json (`record` plus the schedule's
    state), then rename (atomic); keep the newest `keep`."""
    final, tmp = root / f"step_{step}", root / f".step_{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    # every process writes its own RNG state into `tmp`: the main one may rename it only once all
    # have (a two-process CPU run failed with "parent directory .step_3.tmp does not exist")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {**record, "scheduler": scheduler.state_dict()}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        if final.exists():
            _discard(final)
        os.replace(tmp, final)
        for _, old in checkpoints(root)[:-keep] if keep else []:
            _discard(old)
    accelerator.wait_for_everyone()


def _discard(path: Path) -> None:
    """Remove a checkpoint folder without ever leaving a half-deleted `step_N` behind a kill:
    rename it to a hidden name (atomic), then delete."""
    aside = path.with_name(f".old_{path.name}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


def read_state(path: Path) -> dict:
    """A checkpoint's trainer_state.json; a damaged one is a one-line ValueError."""
    try:
        saved = json.loads((path / STATE_FILE).read_text())
        if not isinstance(saved, dict) or not isinstance(saved.get("step"), int):
            raise ValueError("it holds no integer 'step'")
        return saved
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot resume: {path / STATE_FILE} is damaged ({err}); delete {path.name} to resume "
                         "from an earlier checkpoint, or start again with --overwrite") from None


def load_checkpoint(accelerator: Accelerator, path: Path, scheduler) -> dict:
    """Restore model, optimizer, RNG and sampler states (accelerate) and the schedule (JSON) from
    `path`; returns trainer_state.json. Every process checks its own RNG file first, because
    accelerate skips an unreadable one with an INFO line and the resume would silently drift."""
    saved = read_state(path)
    planted = sorted(p.name for p in path.glob("custom_checkpoint_*"))
    if planted:  # vqgpt never writes these; accelerate would unpickle them with weights_only=False
        raise ValueError(f"cannot resume: {path} holds {', '.join(planted)}, which vqgpt never writes and will not "
                         "load (pickles can run code); remove them or resume from a checkpoint you made")
    rng = path / f"random_states_{accelerator.process_index}.pkl"
    parts = [(rng.name, lambda: accelerate_load(rng)),
             ("model, optimizer or sampler state", lambda: accelerator.load_state(str(path))),
             ("schedule state", lambda: scheduler.load_state_dict(saved["scheduler"]))]
    for what, load in parts:
        try:
            load()
        except Exception as err:  # torch, safetensors and accelerate raise assorted types
            reason = (str(err).splitlines() or [""])[0][:200]
            raise ValueError(f"cannot resume: {what} in {path} is damaged ({type(err).__name__}: {reason}); "
                             f"delete {path.name} to resume from an earlier checkpoint, or --overwrite") from None
    return saved


def publish(model: PreTrainedModel, spec: PriorSpec, out_dir: Path) -> None:
    """Write the final prior into out_dir (which also holds logs): save to a temporary folder,
    move the files in one by one, the JSON that makes it a prior last."""
    staged = save_prior(model, spec, out_dir / ".final.tmp")
    move_prior_files(staged, out_dir)


_PRIOR_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                "model-*-of-*.safetensors")


def move_prior_files(src: Path, out_dir: Path) -> None:
    """Replace the prior files in `out_dir` by those in `src`: the spec JSON (what makes the folder a
    prior) goes first and comes back last; stale weight shards of an older prior are removed."""
    (out_dir / SPEC_FILE).unlink(missing_ok=True)
    names = sorted(p.name for p in src.iterdir() if p.name != SPEC_FILE)
    for pattern in _PRIOR_FILES:
        for old in out_dir.glob(pattern):
            if old.name not in names:
                old.unlink()
    for name in names + [SPEC_FILE]:
        if (src / name).is_file():
            os.replace(src / name, out_dir / name)
    shutil.rmtree(src, ignore_errors=True)


def plot_loss_curve(metrics_path: Path, png: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train, val = [], []
    for line in metrics_path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("split") == "train":
            train.append((rec["step"], rec["bits_per_code"]))
        elif rec.get("split") == "validation":
            val.append((rec["step"], rec["bits_per_code"]))
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="held-out", linewidth=1.5, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("bits per code")
    ax.set_title("prior loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, png)


def prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose another --out")
    if resume:
        if not checkpoints(out_dir / "checkpoints"):
            raise FileNotFoundError(f"nothing to resume: {out_dir / 'checkpoints'} holds no checkpoint; run without --resume")
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} already exists and is not empty; pass --overwrite to replace it or --resume to continue")
        ours = (out_dir / SPEC_FILE).is_file() or any(
            "tokens_dir" in p.read_text() for p in (out_dir / "checkpoints").glob("step_*/trainer_state.json"))
        if not ours:
            raise ValueError(f"--overwrite refused: {out_dir} does not look like a prior training folder; choose another --out")
        # Only what a training run writes goes, and the finished prior stays usable until the new
        # one replaces it (`publish`); a user's other files in the folder are never touched.
        for name in ("checkpoints", "samples", ".final.tmp"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in ("metrics.jsonl", "loss_curve.png"):
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
