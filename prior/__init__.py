"""Stage 2 of vqgpt: a GPT prior (a `transformers` causal LM) over the tokenizer's code grids.

Knows integer grids only — codebook size, grid height × width, number of classes — never pixels.
"""

from .config import DEFAULT_PRESET, PRESETS, PriorConfig, PriorTrainConfig
from .data import TokenData, TokenSequences, load_token_dataset, write_token_dataset
from .model import PriorSpec, build_prior_model, load_prior, save_prior
from .sampling import sample
from .train import evaluate, train_prior, train_step

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "PriorConfig",
    "PriorTrainConfig",
    "PriorSpec",
    "TokenData",
    "TokenSequences",
    "build_prior_model",
    "evaluate",
    "load_prior",
    "load_token_dataset",
    "sample",
    "save_prior",
    "train_prior",
    "train_step",
    "write_token_dataset",
]
