"""Settings of the prior: its architecture (`PriorConfig`) and how it is trained (`PriorTrainConfig`);
the size presets are in `presets.py`, as the tokenizer's are.

What the prior is trained on (codebook size, grid, classes) is not a setting: it comes from the
token dataset and is stored in `vqgpt_prior.json` beside the weights (see `prior.model.PriorSpec`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

__all__ = ["PriorConfig", "PriorTrainConfig", "ARCHITECTURES", "SAMPLERS",
           "PRECISIONS", "TEMPERATURE_RANGE", "MAX_GUIDANCE", "sampling_value_error"]

ARCHITECTURES = ("llama", "gpt2")
MIXED_PRECISION = ("no", "bf16", "fp16")

# Sampling (prior.sampling), here because the CLI's settings need them without torch.
SAMPLERS = ("auto", "ar", "jacobi", "sjd")  # auto: "jacobi" or "ar", whichever is faster there (same codes)
# Number format of the sampling passes: auto = bf16 on a GPU, fp32 on a CPU (see prior.sampling)
PRECISIONS = ("auto", "fp32", "bf16")
# Sampling values outside these ranges are refused: the float32 maths overflows towards them, and a
# temperature near 0 only means "greedy" (top_k=1 says so exactly).
TEMPERATURE_RANGE = (1e-2, 1e2)
MAX_GUIDANCE = 100.0


def sampling_value_error(temperature: float, guidance: float, top_k: int | None, top_p: float | None,
                         fields: bool = False) -> str | None:
    """What is wrong with these sampling values (None: nothing), one line naming each value by its
    argument of `sample`, or with `fields=True` by its settings field in backticks (`guidance`; the
    command line shows a flag there)."""
    names = (("`temperature`", "`guidance`", "`top_k`", "`top_p`") if fields
             else ("temperature", "guidance_scale", "top_k", "top_p"))

    def number(x) -> bool:
        return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)

    lo, hi = TEMPERATURE_RANGE
    if not (number(temperature) and lo <= temperature <= hi):
        greedy = "`top_k`=1" if fields else "top_k=1"
        return f"{names[0]} must be a number in [{lo:g}, {hi:g}] (for greedy codes use {greedy}), got {temperature!r}"
    if not (number(guidance) and 0 <= guidance <= MAX_GUIDANCE):
        return f"{names[1]} must be a number in [0, {MAX_GUIDANCE:g}] (1 = no guidance), got {guidance!r}"
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
        return f"{names[2]} must be an integer ≥ 1 (or unset), got {top_k!r}"
    if top_p is not None and not (number(top_p) and 0 < top_p <= 1):
        return f"{names[3]} must be in (0, 1] (or unset), got {top_p!r}"
    return None


@dataclass(frozen=True)
class PriorConfig:
    """Architecture of the causal transformer over `[condition token, code_0 … code_{h·w-1}]`."""

    architecture: str = "llama"  # "llama" (RoPE, RMSNorm, SwiGLU, SDPA) or "gpt2" (learned positions, LayerNorm, GELU)
    hidden_size: int = 256  # width of the residual stream
    num_layers: int = 6  # transformer blocks
    num_heads: int = 8  # attention heads; hidden_size must be divisible by it
    num_kv_heads: int | None = None  # llama only: grouped-query attention heads (None = num_heads)
    intermediate_size: int | None = None  # MLP width (None: llama 8/3·hidden rounded up to 64, gpt2 4·hidden)
    dropout: float = 0.1  # llama: attention dropout (its only dropout); gpt2: attention, residual and embedding
    rope_theta: float = 10000.0  # llama only: RoPE base
    tie_word_embeddings: bool = False  # share the input embedding and the output projection
    initializer_range: float = 0.02  # std of the normal weight initialisation

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"model.architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        for name in ("hidden_size", "num_layers", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        for name, bound in (("hidden_size", 65536), ("num_layers", 1024), ("num_heads", 1024),
                            ("intermediate_size", 1 << 20)):  # sizes no prior has: refused before building
            if (getattr(self, name) or 0) > bound:
                raise ValueError(f"model.{name} {getattr(self, name)} is beyond any prior this tool builds (at most {bound})")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_heads ({self.num_heads})")
        if (self.hidden_size // self.num_heads) % 2 and self.architecture == "llama":
            raise ValueError(f"model.hidden_size / model.num_heads must be even for RoPE, got {self.hidden_size // self.num_heads}")
        if self.num_kv_heads is not None:
            if self.architecture != "llama":
                raise ValueError("model.num_kv_heads is only used by the llama architecture; leave it unset for gpt2")
            if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
                raise ValueError(f"model.num_heads ({self.num_heads}) must be a multiple of model.num_kv_heads ({self.num_kv_heads})")
        if self.intermediate_size is not None and self.intermediate_size < 1:
            raise ValueError(f"model.intermediate_size must be at least 1, got {self.intermediate_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.rope_theta <= 0:
            raise ValueError(f"model.rope_theta must be positive, got {self.rope_theta}")
        if self.initializer_range <= 0:
            raise ValueError(f"model.initializer_range must be positive, got {self.initializer_range}")

    @property
    def mlp_size(self) -> int:
        """The MLP width actually used."""
        if self.intermediate_size is not None:
            return self.intermediate_size
        if self.architecture == "llama":
            return -(-int(8 * self.hidden_size / 3) // 64) * 64  # SwiGLU: ~8/3·hidden, multiple of 64
        return 4 * self.hidden_size


@dataclass(frozen=True)
class PriorTrainConfig:
    """How the prior is trained (per-device batch; effective batch = batch · accumulation · processes)."""

    batch_size: int = 64  # sequences per device per micro-step
    gradient_accumulation_steps: int = 1  # micro-steps per optimizer step
    max_steps: int = 5000  # optimizer steps in total (sets the cosine schedule's length)
    learning_rate: float = 3e-4  # peak learning rate after warm-up
    warmup_steps: int = 200  # linear warm-up steps, then cosine decay to min_lr_ratio · learning_rate
    min_lr_ratio: float = 0.0  # floor of the cosine decay (transformers' cosine-with-min-lr schedule, as the tokenizer)
    weight_decay: float = 0.05  # AdamW decay on matrices only (not norms, biases, embeddings)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm (0 = no clipping)
    label_dropout: float = 0.1  # probability of replacing the class token by the null token (for CFG)
    token_dropout: float = 0.0  # probability of replacing each input code by a random one (targets stay true)
    mixed_precision: str = "no"  # "no", "bf16" or "fp16" (autocast through accelerate)
    eval_every: int = 250  # steps between held-out evaluations (bits per code)
    eval_max_batches: int | None = None  # cap on held-out batches per evaluation (None = whole split)
    early_stopping_patience: int | None = None  # stop after this many evaluations without improvement (None = off)
    checkpoint_every: int = 1000  # steps between `save_state` checkpoints (0 = only at the end)
    keep_checkpoints: int = 2  # newest step_N checkpoints kept on disk
    sample_every: int = 0  # steps between calls of the sample callback (0 = only at the end, when one is given)
    sample_per_class: int = 1  # grids per class (or 8 × this when unconditional) passed to the callback
    sample_guidance_scale: float = 2.0  # classifier-free guidance for those grids (before the final selection)
    select_sampling: bool = True  # at the end, choose guidance/temperature on held-out rows (prior/selection.py)
    selection_samples: int = 520  # grids drawn per candidate setting for that choice (20 per class at 26 classes)
    # how far above plain sampling's Fréchet ratio the chosen setting may go (clearer classes vs
    # samples that look like the data; prior/selection.py)
    selection_max_fd_increase: float = 0.25
    log_every: int = 25  # steps between metrics.jsonl records of the training loss
    num_workers: int = 0  # DataLoader workers
    seed: int = 0  # model init, data order, label dropout
    report_to: str = "none"  # experiment trackers: none, tensorboard, wandb, trackio, all (or several, comma-separated)

    def __post_init__(self) -> None:
        positive = ("batch_size", "gradient_accumulation_steps", "max_steps", "eval_every", "log_every", "sample_per_class",
                    "selection_samples")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every", "keep_checkpoints", "sample_every", "num_workers", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be ≥ 0, got {getattr(self, name)}")
        if self.selection_max_fd_increase < 0:
            raise ValueError(f"train.selection_max_fd_increase must be ≥ 0, got {self.selection_max_fd_increase}")
        if self.learning_rate <= 0:
            raise ValueError(f"train.learning_rate must be positive, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay must be ≥ 0, got {self.weight_decay}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.adam_eps <= 0:
            raise ValueError(f"train.adam_eps must be positive, got {self.adam_eps}")
        if self.grad_clip < 0:
            raise ValueError(f"train.grad_clip must be ≥ 0, got {self.grad_clip}")
        if not 0.0 <= self.label_dropout <= 1.0:
            raise ValueError(f"train.label_dropout must be in [0, 1], got {self.label_dropout}")
        if not 0.0 <= self.token_dropout < 1.0:
            raise ValueError(f"train.token_dropout must be in [0, 1), got {self.token_dropout}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"train.mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        if self.eval_max_batches is not None and self.eval_max_batches < 1:
            raise ValueError(f"train.eval_max_batches must be at least 1 or None, got {self.eval_max_batches}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(f"train.early_stopping_patience must be at least 1 or None, got {self.early_stopping_patience}")
        if self.sample_guidance_scale < 0:
            raise ValueError(f"train.sample_guidance_scale must be ≥ 0, got {self.sample_guidance_scale}")
