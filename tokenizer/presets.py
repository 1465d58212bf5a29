"""Size presets of the tokenizer: plain dicts of field overrides, one registry.

``PRESETS[name] = {"model": {VQGANConfig overrides}, "train": {TokenizerTrainConfig overrides}}``

- ``digits`` (default): 32×32 grey scikit-learn digits → 8×8 codes, 64 codes; under a minute
  on an idle 2-core CPU, no VGG needed; light GAN for the last quarter of training.
- ``tiny``: for tests — trains in seconds, quality irrelevant.
- ``photos``: 32×32 RGB crops (scikit-image photographs) → 8×8 codes; a CPU-sized RGB model
  (a few minutes on a 2-core CPU).
- ``base``: 256×256 RGB real images → 16×16 codes, 16,384 codes of dimension 8 (LlamaGen
  VQ-16 style), LPIPS + PatchGAN; GPU-scale (bf16).
"""

from __future__ import annotations

__all__ = ["PRESETS", "DEFAULT_PRESET"]

DEFAULT_PRESET = "digits"

PRESETS: dict[str, dict[str, dict]] = {
    "digits": {
        "model": {
            "image_size": 32,
            "channels": 1,
            "base_channels": 16,
            "channel_mult": (1, 2, 2),
            "num_res_blocks": 1,
            "z_channels": 32,
            "norm_groups": 8,
            "codebook_size": 64,  # small enough for the prior to learn on a CPU; 30 dB
            "codebook_dim": 8,
        },
        "train": {
            "steps": 300,
            "batch_size": 16,
            "lr": 2e-3,
            "adam_beta1": 0.9,
            "adam_beta2": 0.99,
            "warmup_steps": 30,
            "disc_weight": 0.05,
            "disc_start": 220,
            "disc_channels": 16,
            "disc_layers": 2,
            "checkpoint_every": 150,
            "sample_every": 100,
        },
    },
    "tiny": {
        "model": {
            "image_size": 16,
            "channels": 1,
            "base_channels": 8,
            "channel_mult": (1, 2),
            "num_res_blocks": 1,
            "z_channels": 8,
            "norm_groups": 4,
            "codebook_size": 32,
            "codebook_dim": 4,
            "kmeans_iters": 2,
            "restart_after_steps": 5,
        },
        "train": {
            "steps": 4,
            "batch_size": 8,
            "warmup_steps": 1,
            "disc_start": 2,
            "disc_channels": 8,
            "disc_layers": 1,
            "checkpoint_every": 2,
            "sample_every": 2,
            "log_every": 1,
            "eval_batch_size": 16,
            "num_sample_images": 4,
        },
    },
    "photos": {
        "model": {
            "image_size": 32,
            "channels": 3,
            "base_channels": 32,
            "channel_mult": (1, 2, 2),
            "num_res_blocks": 1,
            "z_channels": 32,
            "norm_groups": 8,
            "codebook_size": 512,
            "codebook_dim": 8,
        },
        "train": {
            "steps": 600,
            "batch_size": 16,
            "lr": 2e-3,
            "adam_beta1": 0.9,
            "adam_beta2": 0.99,
            "warmup_steps": 30,
            "disc_weight": 0.05,
            "disc_start": 450,
            "disc_channels": 16,
            "disc_layers": 2,
            "checkpoint_every": 300,
            "sample_every": 100,
        },
    },
    "base": {
        "model": {
            "image_size": 256,
            "channels": 3,
            "base_channels": 128,
            "channel_mult": (1, 1, 2, 2, 4),
            "num_res_blocks": 2,
            "attn_at_lowest": True,
            "z_channels": 256,
            "norm_groups": 32,
            "codebook_size": 16384,
            "codebook_dim": 8,
            "restart_after_steps": 200,
        },
        "train": {
            "steps": 400_000,
            "batch_size": 32,
            "lr": 1e-4,
            "weight_decay": 0.05,
            "warmup_steps": 2000,
            "mixed_precision": "bf16",
            "perceptual_weight": 1.0,
            "disc_weight": 0.5,
            "disc_start": 20_000,
            "disc_channels": 64,
            "disc_layers": 3,
            "use_ema": True,
            "ema_decay": 0.9999,
            "checkpoint_every": 5000,
            "sample_every": 1000,
            "log_every": 50,
            "num_workers": 8,
        },
    },
}
