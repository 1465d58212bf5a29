"""Size presets of the prior: plain dicts of field overrides, one registry (as the tokenizer's).

``PRESETS[name] = {"model": {PriorConfig overrides}, "train": {PriorTrainConfig overrides}}``

Presets name model sizes, from the CPU test model up to a few hundred million parameters; what
depends on the token data (training length, evaluation cadence, early stopping, regularisation)
is derived from it by ``vqgpt train-prior`` (``vqgpt.pipeline.derived``) unless set.
"""

from __future__ import annotations

__all__ = ["PRESETS", "DEFAULT_PRESET"]

# One registry: {preset: {"model": PriorConfig overrides, "train": PriorTrainConfig overrides}}.
PRESETS: dict[str, dict[str, dict]] = {
    # Seconds on a CPU: unit tests and smoke runs.
    "tiny": {
        "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "dropout": 0.0},
        "train": {"select_sampling": False, "batch_size": 8, "max_steps": 20, "warmup_steps": 2, "eval_every": 10, "eval_max_batches": 2,
                  "checkpoint_every": 10, "log_every": 5},
    },
    # CPU size (128 wide, 4 layers). Training length, evaluation cadence, early stopping and the
    # regularisation (dropout, weight decay) come from the token data (vqgpt.pipeline.derived) unless set.
    "mini": {
        "model": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 384},
        "train": {"batch_size": 32, "learning_rate": 2e-3, "label_dropout": 0.1, "log_every": 10},
    },
    # GPU sizes (LlamaGen-like widths/depths). Token data decides the vocabulary and length.
    "small": {
        "model": {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "dropout": 0.1},
        "train": {"batch_size": 128, "max_steps": 50_000, "learning_rate": 4e-4, "warmup_steps": 1000,
                  "mixed_precision": "bf16", "eval_every": 1000, "checkpoint_every": 5000, "sample_every": 5000,
                  "log_every": 50},
    },
    "base": {  # ~110M parameters
        "model": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "dropout": 0.1},
        "train": {"batch_size": 64, "max_steps": 200_000, "learning_rate": 3e-4, "warmup_steps": 2000,
                  "mixed_precision": "bf16", "eval_every": 2000, "checkpoint_every": 5000, "sample_every": 10_000,
                  "log_every": 100},
    },
    "large": {  # ~340M parameters
        "model": {"hidden_size": 1024, "num_layers": 24, "num_heads": 16, "dropout": 0.1},
        "train": {"batch_size": 32, "gradient_accumulation_steps": 2, "max_steps": 300_000, "learning_rate": 2e-4,
                  "warmup_steps": 5000, "mixed_precision": "bf16", "eval_every": 2000, "checkpoint_every": 5000,
                  "sample_every": 10_000, "log_every": 100},
    },
}
DEFAULT_PRESET = "mini"
