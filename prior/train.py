"""Training the prior through `accelerate` (one CPU, one GPU, or many processes).

`train_step` (one optimizer step over `gradient_accumulation_steps` micro-batches → metrics),
`evaluate_bits_per_code` (held-out bits per code → metrics), and `train_prior`, the loop that owns
checkpoints, logging, early stopping and the final `save_pretrained`. Checkpoints, resuming, the
metrics log and the NaN stop are `vqgpt.checkpoints`' (shared with the tokenizer); the folder's
other files are described in `run_folder.py`. Only the main process writes files or shows a
progress bar; every process runs the same steps.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from vqgpt import checkpoints as ckpt
from vqgpt.resources import require_memory

from . import run_folder
from .config import PriorConfig, PriorTrainConfig
from .data import TokenData, load_token_dataset
from .model import SPEC_FILE, PriorSpec, build_prior_model, code_logits, load_prior, save_prior
from .sampling import sample
from .selection import SelectionConfig, select_sampling

__all__ = ["train_prior", "train_step", "evaluate_bits_per_code", "TrainState", "sequence_nll", "param_groups"]

logger = logging.getLogger(__name__)

LN2 = math.log(2.0)
SampleCallback = Callable[[torch.Tensor, int], "torch.Tensor | None"]  # may return the grid image [C, H, W] in [0, 1]


@dataclass
class TrainState:
    """What the loop carries between steps (saved in every checkpoint's trainer_state.json)."""

    step: int = 0  # optimizer steps done
    best_val_bits: float = math.inf
    best_step: int = -1
    evals_without_improvement: int = 0


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices only; norms, biases and embeddings are not decayed."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (no_decay if param.ndim < 2 or id(param) in embeddings else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def sequence_nll(model: nn.Module, batch: torch.Tensor, spec: PriorSpec,
                 inputs: torch.Tensor | None = None) -> torch.Tensor:
    """Negative log-likelihood (nats) of each code: batch LongTensor[B, 1 + h·w] → FloatTensor[B, h·w].

    Only code positions are scored, and only over the K code tokens (what sampling can emit).
    `inputs` (LongTensor[B, h·w]) replaces what the model reads, `batch[:, :-1]`, keeping the
    targets (token dropout)."""
    inputs, targets = (batch[:, :-1] if inputs is None else inputs), batch[:, 1:]  # (B, N) each, N = h*w
    logits, _ = code_logits(model, inputs, spec, use_cache=False)  # (B, N, K) float32
    nll = F.cross_entropy(logits.reshape(-1, spec.codebook_size), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape)  # (B, N)


def _global_rows(rows: int, row_offset: int, global_rows: int | None) -> tuple[int, slice]:
    """Rows of the global batch to draw for, and this process's slice of them."""
    return max(global_rows or rows, row_offset + rows), slice(row_offset, row_offset + rows)


def drop_labels(batch: torch.Tensor, spec: PriorSpec, p: float, seed: int = 0, row_offset: int = 0,
                global_rows: int | None = None) -> torch.Tensor:
    """Replace the condition token by the null token with probability p (classifier-free guidance).

    The draws come from their own generator seeded by `seed` (the loop passes one per step and
    micro-batch): `global_rows` uniforms for the whole global batch, of which this process takes
    rows `row_offset …`. So every process drops different rows, a resumed run drops the same ones,
    and N processes × B rows drop exactly what 1 process × N·B rows would."""
    if p <= 0 or spec.num_classes == 0:
        return batch
    total, mine = _global_rows(batch.shape[0], row_offset, global_rows)
    uniform = torch.rand(total, generator=torch.Generator().manual_seed(seed))[mine]
    drop = (uniform < p).to(batch.device)  # (B,)
    batch = batch.clone()
    batch[:, 0] = torch.where(drop, torch.full_like(batch[:, 0], spec.null_token_id), batch[:, 0])
    return batch


def drop_tokens(batch: torch.Tensor, spec: PriorSpec, p: float, seed: int = 0, row_offset: int = 0,
                global_rows: int | None = None) -> torch.Tensor:
    """The model's inputs, `batch[:, :-1]`, with each code (never the condition token) replaced by
    a uniformly random code with probability p; the targets stay the true codes.

    Token dropout: a prior that learnt to continue only clean prefixes has never seen the slips it
    makes itself when sampling; one trained on slightly corrupted prefixes leans on the whole
    context rather than on the last few codes (LlamaGen drops token embeddings for the same end).
    Seeded per global row exactly as `drop_labels`, so processes and resumed runs agree."""
    inputs = batch[:, :-1]
    if p <= 0 or inputs.shape[1] < 2:
        return inputs
    n = inputs.shape[1] - 1
    total, mine = _global_rows(inputs.shape[0], row_offset, global_rows)
    gen = torch.Generator().manual_seed(seed)
    uniform = torch.rand(total, n, generator=gen)[mine]
    random_codes = torch.randint(spec.codebook_size, (total, n), generator=gen)[mine]
    codes = inputs[:, 1:]
    noisy = torch.where((uniform < p).to(codes.device), random_codes.to(codes.device), codes)
    return torch.cat([inputs[:, :1], noisy], dim=1)


def train_step(
    model: nn.Module,
    micro_batches: list[torch.Tensor],
    spec: PriorSpec,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    accelerator: Accelerator,
    config: PriorTrainConfig,
    step: int = 0,
) -> dict:
    """One optimizer step (number `step`, from 0) over `micro_batches` (LongTensor[B, 1 + h·w] each)
    → metrics."""
    model.train()
    total, grad_norm = 0.0, float("nan")
    for micro, batch in enumerate(micro_batches):
        with accelerator.accumulate(model):
            seed = hash((config.seed, step, micro)) & 0x7FFF_FFFF_FFFF_FFFF  # ints hash the same in every process
            batch = drop_labels(batch, spec, config.label_dropout, seed, accelerator.process_index * config.batch_size,
                                config.batch_size * accelerator.num_processes)
            inputs = drop_tokens(batch, spec, config.token_dropout, seed ^ 0x5EED, accelerator.process_index * config.batch_size,
                                 config.batch_size * accelerator.num_processes)
            with accelerator.autocast():
                loss = sequence_nll(model, batch, spec, inputs).mean()
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                if config.grad_clip > 0:
                    grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), config.grad_clip))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        total += loss.detach().float().item()
    lr = scheduler.get_last_lr()[0]
    scheduler.step()  # our scheduler is not `prepare`d: one step per optimizer step, whatever the process count
    loss = total / len(micro_batches)
    return {"loss": loss, "bits_per_code": loss / LN2, "grad_norm": grad_norm, "lr": lr}


@torch.no_grad()
def evaluate_bits_per_code(model: nn.Module, loader: DataLoader, spec: PriorSpec, accelerator: Accelerator,
             max_batches: int | None = None) -> dict:
    """Held-out loss over code positions: nats and bits per code (true labels, no dropout)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        with accelerator.autocast():
            nll = sequence_nll(model, batch, spec).sum(dim=1)  # (B,) nats per sequence
        nll = accelerator.gather_for_metrics(nll)
        total += nll.double().sum().item()
        count += nll.numel() * spec.num_codes
    model.train(was_training)
    loss = total / max(count, 1)
    return {"val_loss": loss, "val_bits_per_code": loss / LN2}


# --------------------------------------------------------------------------- loop


def train_prior(
    model_config: PriorConfig,
    train_config: PriorTrainConfig,
    tokens_dir: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    sample_callback: SampleCallback | None = None,
    grid_features: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Train a prior on a token dataset and save it into `out_dir`; returns summary metrics.

    sample_callback(codes LongTensor[B, h, w], step) receives freshly sampled grids (one per class
    × sample_per_class when conditional, else 8 × sample_per_class) every `sample_every` steps
    and at the end, on the main process only.
    grid_features(codes LongTensor[B, h, w]) → FloatTensor[B, D]: what grids look like (the pipeline
    passes decoded pixels); the sampling selection then also weighs how close samples come to
    held-out rows (`prior/selection.py`).
    """
    if not isinstance(model_config, PriorConfig) or not isinstance(train_config, PriorTrainConfig):
        raise ValueError("train_prior needs a PriorConfig and a PriorTrainConfig")
    cfg = train_config
    data: TokenData = load_token_dataset(tokens_dir)
    # what the saved prior records besides the token data's grid/codebook/classes
    spec = dataclasses.replace(data.spec, label_dropout=cfg.label_dropout if data.spec.num_classes else 0.0)
    out_dir = Path(out_dir)
    ckpt_root = out_dir / ckpt.CHECKPOINT_DIR

    accelerator = ckpt.make_accelerator(cfg.mixed_precision, cfg.gradient_accumulation_steps, cfg.seed,
                                        report_to=cfg.report_to, logging_dir=out_dir / "trackers")
    main = accelerator.is_main_process
    if main:
        run_folder.prepare_out_dir(out_dir, resume, overwrite)
    accelerator.wait_for_everyone()
    ckpt.start_trackers(accelerator, "vqgpt-prior", {**{f"model/{k}": v for k, v in dataclasses.asdict(model_config).items()},
                                                     **{f"train/{k}": v for k, v in dataclasses.asdict(cfg).items()}})
    resume_from = ckpt.latest_checkpoint(ckpt_root) if resume else None
    saved = ckpt.read_trainer_state(resume_from) if resume_from else None
    if saved is not None:
        run_folder.check_resume(saved, spec, model_config, str(tokens_dir))

    with torch.device("meta"):  # sizes that cannot fit are refused before anything is allocated
        weights = sum(p.numel() for p in build_prior_model(model_config, spec).parameters())
    # weights, gradients and two AdamW moments, fp32
    require_memory(16 * weights, f"training a {weights / 1e6:.0f} M-parameter prior", accelerator.device)
    set_seed(cfg.seed)
    model = build_prior_model(model_config, spec)
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.max_steps,
                                                            min_lr_rate=cfg.min_lr_ratio)
    # Loaders get their own generators: a new iterator then draws its worker seed from them, not
    # from the global RNG, so dropout/label-dropout randomness resumes exactly from a checkpoint.
    train_loader = DataLoader(data.train, batch_size=cfg.batch_size, shuffle=True,
                              drop_last=len(data.train) >= cfg.batch_size * accelerator.num_processes,
                              num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed))
    val_loader = DataLoader(data.validation, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers,
                            generator=torch.Generator().manual_seed(cfg.seed))
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    # the scheduler is stepped by hand once per optimizer step (not per process), so it is not
    # prepared; checkpoints keep its state as JSON

    state = TrainState()
    if resume_from is not None:
        ckpt.load_checkpoint(accelerator, resume_from, [scheduler])  # model, optimizer, schedule, RNG states
        state = TrainState(**{f.name: saved[f.name] for f in dataclasses.fields(TrainState)})
        if saved.get("train_config", {}).get("max_steps") != cfg.max_steps:
            logger.warning("max_steps changed from %s to %s: the cosine schedule is stretched accordingly",
                           saved.get("train_config", {}).get("max_steps"), cfg.max_steps)
        logger.info("resuming from %s at step %d", resume_from, state.step)

    metrics_log = ckpt.MetricsLog(out_dir / ckpt.METRICS_FILE, enabled=main, accelerator=accelerator)
    metrics_log.start(state.step)
    record = {
        "tokens_dir": str(tokens_dir), "tokenizer_fingerprint": spec.tokenizer_fingerprint,
        "codebook_size": spec.codebook_size, "grid": list(spec.grid), "class_names": list(spec.class_names),
        "model_config": dataclasses.asdict(model_config), "train_config": dataclasses.asdict(cfg),
    }

    def draw_samples(step: int) -> None:
        if sample_callback is None:
            return
        if main:
            gen = torch.Generator(accelerator.device).manual_seed(cfg.seed)
            codes = sample(accelerator.unwrap_model(model), spec, *_sample_args(spec, cfg), generator=gen)
            grid = sample_callback(codes, step)  # the pipeline's writer returns the decoded grid
            if isinstance(grid, torch.Tensor):
                ckpt.log_image(accelerator, "samples", grid, step)
        accelerator.wait_for_everyone()

    def run_eval() -> dict:
        result = evaluate_bits_per_code(model, val_loader, spec, accelerator, cfg.eval_max_batches)
        metrics_log.write({"step": state.step, "split": "validation", "loss": result["val_loss"],
             "bits_per_code": result["val_bits_per_code"], "time": time.time()})
        improved = result["val_bits_per_code"] < state.best_val_bits - 1e-6
        if improved:
            state.best_val_bits, state.best_step, state.evals_without_improvement = result["val_bits_per_code"], state.step, 0
            if cfg.early_stopping_patience is not None and main:
                save_prior(accelerator.unwrap_model(model), spec, ckpt_root / "best")
        else:
            state.evals_without_improvement += 1
        accelerator.wait_for_everyone()
        if main:
            run_folder.plot_loss_curve(metrics_log, out_dir / ckpt.LOSS_CURVE_FILE)
        return result

    tokens_per_step = cfg.batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes * spec.num_codes
    logger.info("prior: %.2fM parameters, %d train / %d validation sequences of %d codes, %d classes",
                num_params / 1e6, len(data.train), len(data.validation), spec.num_codes, spec.num_classes)
    batches = ckpt.resumable_batches(accelerator, train_loader, state.step * cfg.gradient_accumulation_steps)
    bar = tqdm(total=cfg.max_steps, initial=state.step, desc="prior", unit="step", disable=not main, dynamic_ncols=True)
    start, steps_run, last_ckpt, last_eval = time.time(), 0, state.step, -1
    val: dict = {}
    running: list[float] = []
    stopped_early = False
    guard = ckpt.StepGuard(accelerator, ckpt_root, "prior").__enter__()  # left in the finally below
    try:
        while state.step < cfg.max_steps:
            micro = [next(batches) for _ in range(cfg.gradient_accumulation_steps)]
            figures = train_step(model, micro, spec, optimizer, scheduler, accelerator, cfg, step=state.step)
            preempted = guard.check(figures["loss"], state.step + 1)  # NaN/Inf anywhere: stops before saving
            state.step += 1
            steps_run += 1
            running.append(figures["bits_per_code"])
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                elapsed = time.time() - start
                metrics_log.write({"step": state.step, "split": "train", "loss": figures["loss"],
                                   "bits_per_code": sum(running) / len(running), "lr": figures["lr"],
                                   "grad_norm": figures["grad_norm"], "time": time.time(),
                                   "tokens_per_s": steps_run * tokens_per_step / max(elapsed, 1e-9)})
                running = []
            bar.set_postfix(bits=f"{figures['bits_per_code']:.3f}", **({"val": f"{val['val_bits_per_code']:.3f}"} if val else {}))
            if state.step % cfg.eval_every == 0 or state.step == cfg.max_steps:
                val, last_eval = run_eval(), state.step
                if cfg.early_stopping_patience is not None and state.evals_without_improvement >= cfg.early_stopping_patience:
                    stopped_early = True
                    logger.info("early stopping at step %d: no held-out improvement for %d evaluations (best %.4f at step %d)",
                                state.step, cfg.early_stopping_patience, state.best_val_bits, state.best_step)
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                ckpt.save_checkpoint(accelerator, ckpt_root, state.step, {**record, **dataclasses.asdict(state)},
                                     cfg.keep_checkpoints, [scheduler])
                last_ckpt = state.step
            if preempted and state.step < cfg.max_steps and not stopped_early:  # SIGTERM: save the step in flight
                if last_ckpt != state.step:
                    ckpt.save_checkpoint(accelerator, ckpt_root, state.step, {**record, **dataclasses.asdict(state)},
                                         cfg.keep_checkpoints, [scheduler])
                raise ckpt.Preempted("prior", state.step, ckpt_root / f"step_{state.step}")
            if cfg.sample_every and state.step % cfg.sample_every == 0:
                draw_samples(state.step)
            if stopped_early:
                break
    finally:
        guard.__exit__()
    bar.close()
    elapsed = time.time() - start
    if last_eval != state.step and (steps_run or not math.isfinite(state.best_val_bits)):
        val = run_eval()
    elif not val:  # resumed a finished run: report its held-out loss without logging it twice
        val = evaluate_bits_per_code(model, val_loader, spec, accelerator, cfg.eval_max_batches)
    if last_ckpt != state.step:
        ckpt.save_checkpoint(accelerator, ckpt_root, state.step, {**record, **dataclasses.asdict(state)},
                             cfg.keep_checkpoints, [scheduler])

    use_best = cfg.early_stopping_patience is not None and (ckpt_root / "best" / SPEC_FILE).is_file()
    final_model = load_prior(ckpt_root / "best", device=accelerator.device)[0] if use_best else \
        accelerator.unwrap_model(model)
    selection: dict = {}
    if main:
        if cfg.select_sampling:  # sampling defaults chosen on held-out rows, recorded with the prior
            selection = select_sampling(final_model, spec, data.train, data.validation,
                                        SelectionConfig(samples=cfg.selection_samples, seed=cfg.seed,
                                                        max_fd_increase=cfg.selection_max_fd_increase),
                                        batch_size=max(256, cfg.batch_size), features=grid_features)
            logger.info("sampling defaults: guidance %s, temperature %s (%s)", selection["guidance"],
                        selection["temperature"], selection["selected_by"])
        run_folder.publish(final_model, dataclasses.replace(spec, sampling=selection or None), out_dir)
    accelerator.wait_for_everyone()
    if sample_callback is not None:
        if main:  # the model that was saved, with the settings `sample` will use
            gen = torch.Generator(accelerator.device).manual_seed(cfg.seed)
            n, labels, guidance = _sample_args(spec, cfg)
            grid = sample_callback(sample(final_model, spec, n, labels, guidance_scale=selection.get("guidance", guidance),
                                          temperature=selection.get("temperature", 1.0), generator=gen),
                                   state.best_step if use_best else state.step)
            if isinstance(grid, torch.Tensor):
                ckpt.log_image(accelerator, "samples", grid, state.step)
        accelerator.wait_for_everyone()
    summary = {
        "steps": state.step,
        "stopped_early": stopped_early,
        "val_bits_per_code": state.best_val_bits if use_best else val.get("val_bits_per_code", float("nan")),
        "best_step": state.best_step,
        "train_bits_per_code": figures["bits_per_code"] if steps_run else float("nan"),
        "parameters": num_params,
        "seconds": elapsed,
        "train_tokens_per_s": steps_run * tokens_per_step / max(elapsed, 1e-9),
    }
    logger.info("prior done: %s", summary)
    accelerator.end_training()  # closes the trackers' files
    return summary


def _sample_args(spec: PriorSpec, cfg: PriorTrainConfig) -> tuple:
    """(num_images, class_labels, guidance_scale) for the sample callback."""
    if spec.num_classes:
        labels = torch.arange(spec.num_classes).repeat(cfg.sample_per_class)
        return labels.numel(), labels, cfg.sample_guidance_scale if cfg.label_dropout > 0 else 1.0
    return 8 * cfg.sample_per_class, None, 1.0
