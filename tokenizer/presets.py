"""Size presets of the tokenizer: plain dicts of field overrides, one registry.

``PRESETS[name] = {"model": {VQGANConfig overrides}, "train": {TokenizerTrainConfig overrides}}``

Presets name model sizes, not data sets; what depends on the data (channels, resolution,
codebook size, training length) is derived from it by ``vqgpt train-tokenizer``
(``vqgpt.pipeline.derived``) and recorded in the tokenizer's ``config.json``.

- ``tiny``: for tests — trains in seconds, quality irrelevant.
- ``small`` (default): a CPU-sized model, 32 px → 8×8 codes; minutes on a 2-core CPU.
- ``base``: 256×256 RGB → 16×16 codes, 16,384 codes of dimension 8 (LlamaGen VQ-16 style),
  LPIPS + PatchGAN + EMA; GPU-scale (bf16).
"""


from __future__ import annotations

__all__ = ["PRESETS", "DEFAULT_PRESET"]

DEFAULT_PRESET = "small"

PRESETS: dict[str, dict[str, dict]] = {
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
            "max_steps": 4,
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
    # CPU size: 32 px → 8×8 codes. Channels, resolution, codebook and training length come from
    # the data (pipeline/derived.py) unless set; these are the widths and the optimiser.
    "small": {
        "model": {
            "base_channels": 16,  # 32 trains at half the speed and read no better (docs/design-notes.md)
            "num_res_blocks": 1,
            "z_channels": 32,
            "norm_groups": 8,
            "codebook_dim": 8,
        },
        "train": {
            "batch_size": 16,
            "learning_rate": 2e-3,
            "adam_beta1": 0.9,
            "adam_beta2": 0.99,
            "disc_weight": 0.05,
            # The adaptive λ = ||∇L_rec|| / ||∇L_G|| reached 5–147 on letters and digits; uncapped,
            # a letters tokenizer ended 1.8 dB below the same run with λ ≤ 1 or with no GAN
            # (docs/design-notes.md). Capped, the GAN term weighs at most disc_weight × its loss.
            "adaptive_weight_max": 1.0,
            "disc_channels": 16,
            "disc_layers": 2,
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
            "max_steps": 400_000,
            "batch_size": 32,
            "learning_rate": 1e-4,
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
