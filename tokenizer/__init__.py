"""vqgpt stage 1: the VQGAN image tokenizer (images ⇄ integer code grids).

    from tokenizer import VQGAN, VQGANConfig
    model = VQGAN.from_pretrained("runs/digits/tokenizer")
    codes = model.encode(images)        # (B, C, H, W) in [-1, 1] → LongTensor (B, h, w)
    recon = model.decode(codes)         # → (B, C, H, W) in [-1, 1]
"""

from . import metrics
from .losses import LPIPS, NLayerDiscriminator
from .model import VQGAN, VQGANConfig, VQGANOutput
from .presets import DEFAULT_PRESET, PRESETS
from .quantizer import VectorQuantizer, codebook_stats, code_histogram
from .train import TokenizerTrainConfig, evaluate, train_step, train_tokenizer

__all__ = [
    "VQGAN",
    "VQGANConfig",
    "VQGANOutput",
    "VectorQuantizer",
    "LPIPS",
    "NLayerDiscriminator",
    "TokenizerTrainConfig",
    "train_tokenizer",
    "train_step",
    "evaluate",
    "PRESETS",
    "DEFAULT_PRESET",
    "metrics",
    "codebook_stats",
    "code_histogram",
]
