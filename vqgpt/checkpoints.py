"""What both trainers do with their run folder: checkpoints, resuming, the metrics log, the NaN
stop, preemption (SIGTERM → checkpoint → exit 143) and the loss plot. One owner, so the tokenizer
and the prior behave alike.

    out/checkpoints/step_N/     accelerate ``save_state`` (models as safetensors, optimizers, RNG
                                states) + trainer_state.json (step, the loop's state, the schedules)
                                + what the stage adds (the tokenizer's EMA weights)
    out/metrics.jsonl           one JSON record per line: {"step", "split": "train"|"validation", …}
    out/loss_curve.png          those records plotted

Guarantees, each kept by a test:
- atomic checkpoints: written into ``.step_N.tmp`` and renamed after every process has written its
  part, so a run killed while saving never leaves a ``step_N`` that ``--resume`` would pick up
  half-written; old ones are discarded by rename-then-delete;
- no pickle runs: the schedules are JSON in trainer_state.json; what accelerate reads back
  (optimizer, RNG and sampler states) it reads with ``weights_only=True``; ``custom_checkpoint_*``
  files (which accelerate would unpickle freely) are refused; a damaged file is one ValueError;
- bit-identical resume: the data order is seeded per epoch (accelerate's seedable sampler) and a
  resumed run skips the micro-batches already trained on (``resumable_batches``), so N steps, a kill
  and a resume give the weights of an uninterrupted run; two processes draw what one does.

Imports no stage: it knows accelerate and files, not models.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin
from accelerate.utils import load as accelerate_load
from torch.utils.data import DataLoader

from .atomic import discard_dir, write_file, write_json, write_text

__all__ = ["CHECKPOINT_DIR", "STATE_FILE", "METRICS_FILE", "LOSS_CURVE_FILE", "make_accelerator", "list_checkpoints",
           "latest_checkpoint", "save_checkpoint", "read_trainer_state", "load_checkpoint", "resumable_batches",
           "Preempted", "StepGuard", "MetricsLog", "REPORT_TO", "trackers", "start_trackers", "log_image", "Curve", "plot_loss_curves"]

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")  # what accelerate's save_state writes


REPORT_TO = ("none", "tensorboard", "wandb", "trackio", "all")  # the Hugging Face Trainer's names
_TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def trackers(report_to: str) -> list[str]:
    """``report_to`` ("none", "all", or names joined by commas) → the trackers to start; a name that is
    not known, or whose package is not installed, is one ValueError (accelerate alone only warns)."""
    from accelerate.utils import is_tensorboard_available, is_trackio_available, is_wandb_available

    names = [n.strip() for n in str(report_to).split(",") if n.strip()]
    unknown = [n for n in names if n not in REPORT_TO]
    if unknown:
        raise ValueError(f"`report_to` {unknown[0]!r} is not a tracker; choose from {', '.join(REPORT_TO)}")
    if "none" in names:
        return []
    installed = {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available(),
                 "trackio": is_trackio_available()}
    if "all" in names:
        return [n for n, ok in installed.items() if ok]
    missing = [n for n in names if not installed[n]]
    if missing:
        raise ValueError(f"`report_to` {missing[0]}: the {_TRACKER_PACKAGES[missing[0]]} package is not installed "
                         f"(pip install {_TRACKER_PACKAGES[missing[0]]})")
    return list(dict.fromkeys(names))


def make_accelerator(mixed_precision: str, gradient_accumulation_steps: int, seed: int, cpu: bool = False,
                     report_to: str = "none", logging_dir: str | os.PathLike | None = None) -> Accelerator:
    """The trainers' ``Accelerator``: seedable data order (epoch e is shuffled with seed + e, the
    same in every process and after a resume), gradient accumulation that the loop groups itself,
    across epoch ends (never a forced sync at an epoch's end), and the experiment trackers asked for
    (``report_to``; their files under ``logging_dir``)."""
    chosen = trackers(report_to)
    try:
        return Accelerator(
            mixed_precision=mixed_precision,
            cpu=cpu,
            log_with=chosen or None,
            project_dir=str(logging_dir) if logging_dir is not None and chosen else None,
            gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=gradient_accumulation_steps,
                                                                    sync_with_dataloader=False),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
        )
    except ValueError as err:  # accelerate's state is per process and fixed by its first Accelerator
        if "already been initialized" not in str(err):
            raise
        raise ValueError(f"this process already runs accelerate with other settings than mixed_precision="
                         f"{mixed_precision!r} / cpu={cpu}; train each stage in its own process") from None


# --------------------------------------------------------------------------- checkpoints


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Finished checkpoints under ``root`` (``step_N`` folders holding trainer_state.json), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest finished ``step_N`` folder under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def save_checkpoint(accelerator: Accelerator, root: str | os.PathLike, step: int, state: dict[str, Any], keep: int,
                    schedulers: Sequence[Any] = (), write_extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``root/step_{step}``; call on every process (``save_state`` and the barriers need all).

    ``save_state`` into ``.step_N.tmp``; once every process has written its part, the main process
    adds ``write_extra(folder)`` (files of the stage's own) and trainer_state.json
    (``{"step", **state, "schedulers": [their state dicts]}``), renames the folder into place and
    keeps the newest ``keep`` checkpoints (0 = all)."""
    root = Path(root)
    final, tmp = root / f"step_{step}", root / f".step_{step}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    # every process writes its own RNG state into `tmp`: the main one may rename it only once all
    # have (a two-process run failed with "parent directory .step_3.tmp does not exist")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if write_extra is not None:
            write_extra(tmp)
        write_json(tmp / STATE_FILE, {"step": step, **state, "schedulers": [s.state_dict() for s in schedulers]})
        if final.exists():
            discard_dir(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(root)[:-keep] if keep else []:
            discard_dir(old)
    accelerator.wait_for_everyone()
    return final


def _damaged(path: Path, what: str, err: BaseException) -> ValueError:
    reason = (str(err).splitlines() or [""])[0][:200]
    return ValueError(f"cannot resume: {what} in {path} is damaged ({type(err).__name__}: {reason}); delete "
                      f"{path.name} to resume from an earlier checkpoint, or start again with `overwrite`")


def read_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    """trainer_state.json of a checkpoint folder; a damaged one is a one-line ValueError."""
    path = Path(path)
    try:
        saved = json.loads((path / STATE_FILE).read_text())
        if not isinstance(saved, dict) or not isinstance(saved.get("step"), int):
            raise ValueError("it holds no integer 'step'")
        return saved
    except (OSError, ValueError) as err:
        raise _damaged(path, STATE_FILE, err) from None


def load_checkpoint(accelerator: Accelerator, path: str | os.PathLike, schedulers: Sequence[Any] = (),
                    load_extra: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Restore a folder written by ``save_checkpoint`` into the prepared objects (models, optimizers,
    RNG and sampler states through accelerate; the schedules from JSON; ``load_extra(folder)`` for
    the stage's own files); returns trainer_state.json. Any damaged or foreign file is one
    ValueError naming it."""
    path = Path(path)
    saved = read_trainer_state(path)
    planted = sorted(p.name for p in path.glob("custom_checkpoint_*"))
    if planted:  # never written by vqgpt; accelerate would unpickle them with weights_only=False
        raise ValueError(f"cannot resume: {path} holds {', '.join(planted)}, which vqgpt never writes and will not "
                         "load (pickles can run code); remove them or resume from a checkpoint you made")
    # accelerate logs and skips an unreadable RNG file; a resume that silently changes the random
    # stream is not bit-identical, so every process checks its own file first.
    rng = path / f"random_states_{accelerator.process_index}.pkl"
    # checkpoints of vqgpt 0.1's prior kept one schedule under "scheduler"
    states = saved["schedulers"] if "schedulers" in saved else [saved["scheduler"]] if "scheduler" in saved else []
    def rng_states() -> None:  # accelerate skips a file lacking these with an INFO line: the stream would drift
        states = accelerate_load(rng)
        missing = [k for k in _RNG_KEYS if not isinstance(states, dict) or k not in states]
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")

    parts: list[tuple[str, Callable[[], Any]]] = [
        (rng.name, rng_states),
        ("the model, optimizer or sampler state", lambda: accelerator.load_state(str(path))),
        ("the schedule state", lambda: _restore_schedules(schedulers, states)),
    ]
    if load_extra is not None:
        parts.append(("the stage's own files", lambda: load_extra(path)))
    for what, load in parts:
        try:
            load()
        except Exception as err:  # torch, safetensors and accelerate raise assorted types
            raise _damaged(path, what, err) from None
    return saved


def _restore_schedules(schedulers: Sequence[Any], states: list[Any]) -> None:
    """Every schedule restored from a state holding all its keys (a scheduler's ``load_state_dict``
    would keep its fresh values for missing ones: a resume on another learning-rate curve)."""
    for scheduler, state in zip(schedulers, states, strict=True):
        missing = sorted(set(scheduler.state_dict()) - set(state if isinstance(state, dict) else ()))
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
        scheduler.load_state_dict(state)


def resumable_batches(accelerator: Accelerator, loader: DataLoader, start: int) -> Iterator[Any]:
    """Endless micro-batches of a prepared ``loader``, beginning at micro-batch ``start`` (counted
    from the first of epoch 0): epoch e is shuffled with seed + e and the batches already trained on
    are skipped without being loaded, so a resumed run continues exactly where it stopped."""
    per_epoch = len(loader)
    if per_epoch == 0:
        raise ValueError("the training data gives no batch (fewer rows than the batch size?)")
    epoch, skip = divmod(start, per_epoch)
    while True:
        loader.set_epoch(epoch)
        yield from (accelerator.skip_first_batches(loader, skip) if skip else loader)
        epoch, skip = epoch + 1, 0


class Preempted(Exception):
    """The run was asked to stop (SIGTERM, what cluster schedulers send before they stop a job): the
    step in flight was finished and a checkpoint written; ``resume`` continues from it."""

    def __init__(self, what: str, step: int, checkpoint: Path):
        super().__init__(f"stopped by SIGTERM at step {step}: the {what}'s checkpoint {checkpoint.name} is written; "
                         "continue with `resume`")
        self.step, self.checkpoint = step, checkpoint


class StepGuard:
    """What the loop asks after every optimizer step, in one all-reduce over the processes:

    - did any process's loss become NaN/Inf? Then every process stops before anything is saved,
      so the last checkpoint on disk is the last good state (FloatingPointError, one line);
    - did any process receive SIGTERM? Then ``check`` returns True on every process: the loop
      writes a checkpoint and raises ``Preempted``. Inside the ``with`` block SIGTERM only sets a
      flag (installed from the main thread; the previous handler comes back on exit)."""

    def __init__(self, accelerator: Accelerator, root: str | os.PathLike, what: str) -> None:
        self.accelerator, self.root, self.what = accelerator, Path(root), what
        self.signalled = False
        self._previous: Any = None

    def __enter__(self) -> "StepGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_term)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_term(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def check(self, loss: float, step: int) -> bool:
        """After step ``step`` (counted from 1) with this process's ``loss``: raise on divergence,
        return True when the run must checkpoint and stop."""
        flags = torch.tensor([float(not math.isfinite(loss)), float(self.signalled)], device=self.accelerator.device)
        flags = self.accelerator.reduce(flags, "sum")
        if float(flags[0]) > 0:
            latest = latest_checkpoint(self.root)
            kept = f"the last good checkpoint is {latest.name}" if latest else "no checkpoint was written yet"
            raise FloatingPointError(f"the {self.what}'s loss became {loss} at step {step}; stopped without saving "
                                     f"({kept}); resume (`resume`) with a lower train.learning_rate or with mixed "
                                     "precision off")
        return float(flags[1]) > 0


# --------------------------------------------------------------------------- the metrics log


class MetricsLog:
    """``metrics.jsonl`` of a run: one JSON record per line, written by the main process only.

    ``start(step)`` begins a run that continues from ``step`` (0 = a fresh run): records logged
    after that step (by a run killed after its checkpoint) and ``"final"`` records (an end-of-run
    summary, redone by the resumed run) are dropped, so the log reads as one uninterrupted run."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True, accelerator: Accelerator | None = None) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.accelerator = accelerator  # its experiment trackers get every number under "split/name"

    def start(self, step: int) -> None:
        if not self.enabled:
            return
        kept = []
        if step > 0 and self.path.is_file():
            for line in self.path.read_text().splitlines():
                record = json.loads(line) if line.strip() else None
                if record is not None and record.get("step", 0) <= step and not record.get("final"):
                    kept.append(line + "\n")
        write_text(self.path, "".join(kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.accelerator is not None and self.accelerator.trackers:  # accelerate logs from the main process
            split = record.get("split", "train")
            numbers = {f"{split}/{k}": v for k, v in record.items() if k not in ("step", "split", "final", "time")
                       and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
            self.accelerator.log(numbers, step=int(record.get("step", 0)))


    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def start_trackers(accelerator: Accelerator, project: str, settings: dict[str, Any]) -> None:
    """Start the experiment trackers (if any) with the run's settings as hyper-parameters."""
    if accelerator.log_with:
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in settings.items()}
        accelerator.init_trackers(project, config=flat)


def log_image(accelerator: Accelerator, tag: str, image: torch.Tensor, step: int) -> None:
    """An image FloatTensor[C, H, W] in [0, 1] (a reconstruction or sample grid) to every tracker
    that takes images."""
    for tracker in accelerator.trackers if accelerator.is_main_process else []:
        if hasattr(tracker, "log_images"):
            tracker.log_images({tag: image[None].float().cpu()}, step=step)


@dataclass(frozen=True)
class Curve:
    """One line of a loss plot: ``key`` of the records of ``split``, on panel ``panel``."""

    panel: str  # panel title; curves with the same title share it
    key: str
    split: str = "train"
    label: str | None = None  # legend entry (default: the key)
    marker: str = ""  # matplotlib format, e.g. "o-" for sparse evaluations


def plot_loss_curves(log: MetricsLog, png: str | os.PathLike, curves: Sequence[Curve], ylabel: str = "loss",
                     log_panels: Sequence[str] = ()) -> None:
    """The log's records as one panel per distinct ``Curve.panel``, losses against step
    (``log_panels`` on a log scale) → ``png``, written atomically (Agg canvas, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = log.records()
    panels = list(dict.fromkeys(c.panel for c in curves))
    fig = Figure(figsize=(5 * len(panels) + 1, 4), dpi=100)
    FigureCanvasAgg(fig)
    for i, title in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        for curve in (c for c in curves if c.panel == title):
            points = [(r["step"], r[curve.key]) for r in records
                      if r.get("split") == curve.split and not r.get("final") and isinstance(r.get(curve.key), (int, float))
                      and (title not in log_panels or r[curve.key] > 0)]
            if points:
                ax.plot(*zip(*points), curve.marker or "-", label=curve.label or curve.key, linewidth=1, markersize=3)
        if ax.lines and title in log_panels:
            ax.set_yscale("log")
        ax.set_title(title if ax.lines else f"{title} (nothing logged yet)")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    write_file(png, fig.savefig)
