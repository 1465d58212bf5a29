"""Settings of the tokenizer: its architecture (``VQGANConfig``, saved as ``config.json``
beside the weights) and how it is trained (``TokenizerTrainConfig``).

Plain frozen dataclasses with no torch import, so the command line can build its flags
(``vqgpt train-tokenizer --help``) without loading a model library.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

__all__ = ["VQGANConfig", "TokenizerTrainConfig", "CODEBOOK_NORMS"]

CODEBOOK_NORMS = ("l2", "none")
_UPPER_BOUNDS = {"image_size": 8192, "base_channels": 4096, "channel_mult": 64, "num_res_blocks": 64, "z_channels": 16384,
                 "codebook_size": 1 << 22, "codebook_dim": 4096, "norm_groups": 4096}


def _fits(value: object, annotation: str) -> bool:
    """Is a config.json value of the type a field's annotation (as a string) names?"""
    kinds = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
             "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
             "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str), "None": lambda v: v is None,
             "tuple[int, ...]": lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, int) and not
                                                                                isinstance(x, bool) for x in v)}
    return any(kinds.get(part.strip(), lambda v: True)(value) for part in str(annotation).split("|"))


# Settings added after vqgpt 0.1, with the value every earlier tokenizer had.
_LATER_DEFAULTS = {"attn_resolutions": [], "norm_eps": 1e-6, "codebook_norm": "l2", "source_family": "",
                   "source_file": "", "source_sha256": ""}


@dataclass(frozen=True)
class VQGANConfig:
    """Every architecture setting of the tokenizer; saved as config.json beside the weights."""

    image_size: int = 32  # square input side in pixels; must be divisible by downsample_factor
    channels: int = 1  # 1 = grey model, 3 = RGB
    base_channels: int = 32  # conv width at full resolution
    channel_mult: tuple[int, ...] = (1, 2, 2)  # width multiplier per level; f = 2**(levels-1)
    num_res_blocks: int = 1  # ResNet blocks per encoder level (decoder uses one more)
    attn_at_lowest: bool = False  # self-attention in the middle (lowest resolution) blocks
    attn_resolutions: tuple[int, ...] = ()  # feature-map sides (px) whose ResNet blocks are each followed by attention
    norm_groups: int = 8  # GroupNorm groups (capped at the channel count)
    norm_eps: float = 1e-6  # GroupNorm epsilon
    dropout: float = 0.0  # dropout inside ResNet blocks
    z_channels: int = 64  # latent size: encoder output / decoder input channels
    codebook_size: int = 256  # K, number of codes
    codebook_dim: int = 8  # codes live in this (small) space
    codebook_norm: str = "l2"  # "l2": vectors and codes l2-normalised (cosine lookups); "none": plain Euclidean
    commitment_beta: float = 0.25  # β of the commitment loss β·||z_e - sg[z_q]||²
    kmeans_init: bool = True  # k-means-initialise the codebook on the first training batch
    kmeans_iters: int = 10  # k-means iterations for that initialisation
    restart_after_steps: int = 20  # restart a code unused for this many training steps; 0 = never
    distance_chunk_rows: int = 1024  # rows per chunk of the N×K distance computation
    # What it was trained on (the pipeline records it; "" = unknown): the data source and the seed
    # and validation share of its train/validation split (None: the source's own split), so an
    # evaluation of the same source scores exactly the held-out images, and of another, all of it.
    trained_on: str = ""
    trained_split_seed: int = 0
    trained_val_fraction: float | None = None
    # Where an imported tokenizer came from (``vqgpt import-tokenizer``; "" = trained here): the
    # family (taming, llamagen, diffusers), the file's name and its SHA-256.
    source_family: str = ""
    source_file: str = ""
    source_sha256: str = ""

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"invalid tokenizer config: {msg}")

        if self.channels not in (1, 3):
            fail(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if len(self.channel_mult) < 1 or any(int(m) < 1 for m in self.channel_mult):
            fail(f"channel_mult must be a non-empty tuple of positive ints, got {self.channel_mult}")
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        f = self.downsample_factor
        if self.image_size < 1 or self.image_size % f != 0:
            fail(
                f"image_size {self.image_size} is not divisible by the downsampling factor {f} "
                f"(2**(len(channel_mult)-1) with channel_mult={self.channel_mult})"
            )
        if self.codebook_size < 2:
            fail(f"codebook_size must be >= 2, got {self.codebook_size}")
        for name, bound in _UPPER_BOUNDS.items():  # sizes no tokenizer has: refused before anything is built
            value = getattr(self, name)
            if (max(value) if isinstance(value, tuple) and value else value) > bound:
                fail(f"{name} {value} is beyond any tokenizer this tool builds (at most {bound})")
        if len(self.channel_mult) > 12:
            fail(f"channel_mult has {len(self.channel_mult)} levels; at most 12")
        if self.codebook_dim < 1:
            fail(f"codebook_dim must be >= 1, got {self.codebook_dim}")
        for name in ("base_channels", "num_res_blocks", "norm_groups", "z_channels", "distance_chunk_rows"):
            if getattr(self, name) < 1:
                fail(f"{name} must be >= 1, got {getattr(self, name)}")
        for mult in self.channel_mult:
            width = self.base_channels * mult
            if width % min(self.norm_groups, width) != 0:
                fail(f"channel width {width} is not divisible by norm_groups {self.norm_groups}")
        if not 0.0 <= self.dropout < 1.0:
            fail(f"dropout must be in [0, 1), got {self.dropout}")
        if self.codebook_norm not in CODEBOOK_NORMS:
            fail(f"codebook_norm must be one of {', '.join(CODEBOOK_NORMS)}, got {self.codebook_norm!r}")
        if not self.norm_eps > 0:
            fail(f"norm_eps must be > 0, got {self.norm_eps}")
        sides = {self.image_size // 2 ** level for level in range(len(self.channel_mult))}
        if any(r not in sides for r in self.attn_resolutions):
            fail(f"attn_resolutions {self.attn_resolutions} must be feature-map sides of this model: {sorted(sides)}")
        if self.commitment_beta < 0:
            fail(f"commitment_beta must be >= 0, got {self.commitment_beta}")
        if self.kmeans_iters < 0 or self.restart_after_steps < 0:
            fail("kmeans_iters and restart_after_steps must be >= 0")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.image_size // self.downsample_factor
        return side, side

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "VQGANConfig":
        """Build from a dict; unknown keys are a ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source} has unknown tokenizer config keys: {', '.join(unknown)}")
        values = dict(data)
        for f in dataclasses.fields(cls):  # a string where a number belongs is one line, not a TypeError
            if f.name in values and not _fits(values[f.name], f.type):
                raise ValueError(f"{source}: {f.name} must be {f.type}, got {values[f.name]!r}")
        for key in ("channel_mult", "attn_resolutions"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def identity(self) -> dict:
        """The settings that identify the tokenizer (its fingerprint's part): settings added after
        vqgpt 0.1 count only when they differ from their default, so tokenizers trained before them
        keep their fingerprints (and stay paired with their token datasets and priors)."""
        data = self.to_dict()
        for name, default in _LATER_DEFAULTS.items():
            if data.get(name) == default:
                data.pop(name)
        return data


@dataclass(frozen=True)
class TokenizerTrainConfig:
    """Everything about *how* the tokenizer is trained (the architecture is VQGANConfig)."""

    # The training settings both stages share have the same names in both (the Hugging Face
    # Trainer's where it has one): max_steps, batch_size, gradient_accumulation_steps,
    # learning_rate, warmup_steps, min_lr_ratio, weight_decay, adam_beta1/2, grad_clip,
    # mixed_precision, checkpoint_every, keep_checkpoints, sample_every, log_every, num_workers, seed.
    renamed: ClassVar[dict[str, str]] = {"steps": "max_steps", "lr": "learning_rate",
                                         "grad_accum_steps": "gradient_accumulation_steps",
                                         "disc_lr": "disc_learning_rate"}

    max_steps: int = 1000  # optimizer updates
    batch_size: int = 32  # images per process per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer update
    learning_rate: float = 1e-3  # peak AdamW learning rate of the autoencoder
    disc_learning_rate: float | None = None  # discriminator learning rate (None = learning_rate)
    adam_beta1: float = 0.5
    adam_beta2: float = 0.9
    weight_decay: float = 0.01  # on conv/linear weights only (not norms, biases, codebook)
    warmup_steps: int = 50  # linear warm-up, then cosine decay to min_lr_ratio·lr
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping
    mixed_precision: str = "no"  # "no", "bf16" or "fp16"
    rec_loss: str = "l1"  # "l1" or "l2" pixel loss
    rec_weight: float = 1.0
    perceptual_weight: float = 0.0  # LPIPS weight; > 0 needs local VGG16 weights
    vgg_path: str | None = None  # torchvision vgg16 state dict (None = torch hub cache file)
    lpips_lin_path: str | None = None  # LPIPS linear weights (None = inside the lpips package)
    disc_weight: float = 0.1  # GAN loss weight (times the adaptive λ); 0 = no GAN
    disc_start: int = 0  # optimizer step at which the GAN loss and D training start
    disc_channels: int = 32  # PatchGAN width
    disc_layers: int = 2  # PatchGAN depth
    adaptive_weight_max: float = 1e4  # clamp of λ = ||∇L_rec|| / (||∇L_G|| + 1e-4)
    use_ema: bool = False  # keep an EMA of the weights; it is what gets evaluated and saved
    ema_decay: float = 0.999
    checkpoint_every: int = 500  # optimizer steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept (0 = all)
    sample_every: int = 500  # steps between reconstruction grids; 0 = only at the end
    num_sample_images: int = 8  # columns of the reconstruction grid
    log_every: int = 10  # steps between metrics.jsonl lines
    eval_batch_size: int = 128
    num_workers: int = 0  # DataLoader workers
    seed: int = 0
    cpu: bool = False  # force CPU even when a GPU is present
    report_to: str = "none"  # experiment trackers: none, tensorboard, wandb, trackio, all (or several, comma-separated)

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"invalid tokenizer training config: {msg}")

        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "num_sample_images", "log_every",
                     "eval_batch_size"):
            if getattr(self, name) < 1:
                fail(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every", "keep_checkpoints", "sample_every", "disc_start", "num_workers",
                     "grad_clip", "weight_decay", "rec_weight", "perceptual_weight", "disc_weight"):
            if getattr(self, name) < 0:
                fail(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.learning_rate <= 0 or (self.disc_learning_rate is not None and self.disc_learning_rate <= 0):
            fail("learning_rate and disc_learning_rate must be > 0")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            fail(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.rec_loss not in ("l1", "l2"):
            fail(f"rec_loss must be 'l1' or 'l2', got {self.rec_loss!r}")
        if self.disc_layers < 1 or self.disc_channels < 1:
            fail("disc_layers and disc_channels must be >= 1")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            fail(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 < self.ema_decay < 1.0:
            fail(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if not (0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0):
            fail("adam_beta1 and adam_beta2 must be in [0, 1)")
