"""VQGAN autoencoder: convolutional encoder → l2-normalised vector quantizer → decoder.

Reads top to bottom: building blocks (ResNet block, attention, up/down sampling), encoder and
decoder, then the model (its config, ``VQGANConfig``, lives in ``config.py``) with encode/decode/save/load/fingerprint.
Images are FloatTensor[B, C, H, W] in [-1, 1]; codes are LongTensor[B, h, w] with
h = H / f, w = W / f, f = 2 ** (len(channel_mult) - 1).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from vqgpt.atomic import write_file, write_text
from vqgpt.resources import require_memory

from .config import VQGANConfig
from .quantizer import VectorQuantizer

__all__ = ["VQGAN", "VQGANOutput", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
def _norm(channels: int, groups: int, eps: float = 1e-6) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(groups, channels), num_channels=channels, eps=eps)


class ResnetBlock(nn.Module):
    """GroupNorm → SiLU → conv3x3, twice, plus a (1x1-projected) skip connection."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = _norm(in_channels, groups, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over spatial positions (SDPA)."""

    def __init__(self, channels: int, groups: int, eps: float = 1e-6):
        super().__init__()
        self.norm = _norm(channels, groups, eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)  # 3×(B, hw, C)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # (B, hw, C)
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 conv3x3 (asymmetric padding as in taming-transformers)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest ×2 then conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    """(B, C, H, W) → (B, z_channels, H/f, W/f).

    ``down`` runs level by level: ``num_res_blocks`` ResNet blocks (each followed by attention
    where the feature map's side is in ``attn_resolutions``), then a downsampling except after the
    last level. ``layout`` names each of its modules: ("res" | "attn" | "resample", level, index)."""

    def __init__(self, cfg: "VQGANConfig"):
        super().__init__()
        ch, g, eps = cfg.base_channels, cfg.norm_groups, cfg.norm_eps
        self.conv_in = nn.Conv2d(cfg.channels, ch, 3, padding=1)
        blocks: list[nn.Module] = []
        self.layout: list[tuple[str, int, int]] = []
        in_ch, side = ch, cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            out_ch = ch * mult
            for i in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(in_ch, out_ch, g, cfg.dropout, eps))
                self.layout.append(("res", level, i))
                in_ch = out_ch
                if side in cfg.attn_resolutions:
                    blocks.append(AttnBlock(in_ch, g, eps))
                    self.layout.append(("attn", level, i))
            if level != len(cfg.channel_mult) - 1:
                blocks.append(Downsample(in_ch))
                self.layout.append(("resample", level, 0))
                side //= 2
        self.down = nn.Sequential(*blocks)
        self.mid = nn.Sequential(
            ResnetBlock(in_ch, in_ch, g, cfg.dropout, eps),
            AttnBlock(in_ch, g, eps) if cfg.attn_at_lowest else nn.Identity(),
            ResnetBlock(in_ch, in_ch, g, cfg.dropout, eps),
        )
        self.norm_out = _norm(in_ch, g, eps)
        self.conv_out = nn.Conv2d(in_ch, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z_channels, h, w) → (B, C, h·f, w·f), unbounded (the model clamps at decode).

    ``up`` mirrors the encoder from the lowest resolution up, with one more ResNet block per
    level; ``layout`` as the encoder's, levels numbered as the encoder's (0 = full resolution)."""

    def __init__(self, cfg: "VQGANConfig"):
        super().__init__()
        ch, g, eps = cfg.base_channels, cfg.norm_groups, cfg.norm_eps
        in_ch = ch * cfg.channel_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, in_ch, 3, padding=1)
        self.mid = nn.Sequential(
            ResnetBlock(in_ch, in_ch, g, cfg.dropout, eps),
            AttnBlock(in_ch, g, eps) if cfg.attn_at_lowest else nn.Identity(),
            ResnetBlock(in_ch, in_ch, g, cfg.dropout, eps),
        )
        blocks: list[nn.Module] = []
        self.layout: list[tuple[str, int, int]] = []
        side = cfg.image_size // cfg.downsample_factor
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            out_ch = ch * mult
            for i in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(in_ch, out_ch, g, cfg.dropout, eps))
                self.layout.append(("res", level, i))
                in_ch = out_ch
                if side in cfg.attn_resolutions:
                    blocks.append(AttnBlock(in_ch, g, eps))
                    self.layout.append(("attn", level, i))
            if level != 0:
                blocks.append(Upsample(in_ch))
                self.layout.append(("resample", level, 0))
                side *= 2
        self.up = nn.Sequential(*blocks)
        self.norm_out = _norm(in_ch, g, eps)
        self.conv_out = nn.Conv2d(in_ch, cfg.channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
@dataclass
class VQGANOutput:
    """Result of ``VQGAN.forward`` for images (B, C, H, W)."""

    reconstruction: torch.Tensor  # (B, C, H, W), unclamped decoder output
    codes: torch.Tensor  # (B, h, w) long
    codebook_loss: torch.Tensor  # scalar ||sg[z_e] - z_q||²
    commitment_loss: torch.Tensor  # scalar ||z_e - sg[z_q]||² (before β)
    quantizer_loss: torch.Tensor  # scalar codebook_loss + β·commitment_loss
    usage: torch.Tensor  # scalar fraction of codes used in the batch
    perplexity: torch.Tensor  # scalar exp(entropy) of the batch's codes


class VQGAN(nn.Module):
    """Image tokenizer: ``encode`` images to code grids, ``decode`` code grids to images."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_proj = nn.Conv2d(config.z_channels, config.codebook_dim, 1)  # to code space
        self.quantizer = VectorQuantizer(
            codebook_size=config.codebook_size,
            codebook_dim=config.codebook_dim,
            kmeans_init=config.kmeans_init,
            kmeans_iters=config.kmeans_iters,
            restart_after_steps=config.restart_after_steps,
            chunk_rows=config.distance_chunk_rows,
            l2_normalized=config.codebook_norm == "l2",
        )
        self.post_quant_proj = nn.Conv2d(config.codebook_dim, config.z_channels, 1)  # back
        self.decoder = Decoder(config)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's last conv (for the adaptive GAN weight)."""
        return self.decoder.conv_out.weight

    def _check_images(self, images: torch.Tensor) -> None:
        c, s = self.config.channels, self.config.image_size
        if images.ndim != 4 or images.shape[1] != c or images.shape[2] % self.config.downsample_factor or images.shape[3] % self.config.downsample_factor:
            raise ValueError(
                f"expected images of shape (B, {c}, H, W) with H, W divisible by "
                f"{self.config.downsample_factor} (trained at {s}x{s}), got {tuple(images.shape)}"
            )

    def forward(self, images: torch.Tensor) -> VQGANOutput:
        """images (B, C, H, W) in [-1, 1] → reconstruction, codes and quantizer losses."""
        self._check_images(images)
        z = self.quant_proj(self.encoder(images))  # (B, codebook_dim, h, w)
        q = self.quantizer(z)
        reconstruction = self.decoder(self.post_quant_proj(q.quantized.to(z.dtype)))
        return VQGANOutput(
            reconstruction=reconstruction,
            codes=q.codes,
            codebook_loss=q.codebook_loss,
            commitment_loss=q.commitment_loss,
            quantizer_loss=q.codebook_loss + self.config.commitment_beta * q.commitment_loss,
            usage=q.usage,
            perplexity=q.perplexity,
        )

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images FloatTensor[B, C, H, W] in [-1, 1] → codes LongTensor[B, H/f, W/f]."""
        self._check_images(images)
        return self.quantizer.lookup(self.quant_proj(self.encoder(images)))

    @torch.no_grad()
    def encode_vectors(self, images: torch.Tensor) -> torch.Tensor:
        """images FloatTensor[B, C, H, W] in [-1, 1] → FloatTensor[B, h·w, D]: each position's encoder
        vector as the codebook lookup sees it (``quantizer.distances`` of them: its distance to every
        code; ``encode`` picks the nearest, a codec may trade a little distance for a likelier code)."""
        self._check_images(images)
        return self.quantizer.vectors(self.quant_proj(self.encoder(images)))

    @torch.no_grad()
    def encode_with_vectors(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(encode(images), encode_vectors(images))`` from one pass of the encoder."""
        self._check_images(images)
        z = self.quant_proj(self.encoder(images))
        return self.quantizer.lookup(z), self.quantizer.vectors(z)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes LongTensor[B, h, w] → images FloatTensor[B, C, h·f, w·f] clamped to [-1, 1]."""
        if codes.ndim != 3:
            raise ValueError(f"expected codes of shape (B, h, w), got {tuple(codes.shape)}")
        vectors = self.quantizer.embed(codes.to(self.quantizer.codebook.device))  # (B, D, h, w)
        dtype = self.post_quant_proj.weight.dtype
        return self.decoder(self.post_quant_proj(vectors.to(dtype))).clamp(-1.0, 1.0)

    # -- saving / loading -----------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` atomically (each
        file is written to a temporary name, then renamed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        write_file(directory / WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
        text = json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n"
        write_text(directory / CONFIG_NAME, text)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "VQGAN":
        """Load a folder written by ``save_pretrained``; strict: every weight must match."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer folder {directory} does not exist")
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"tokenizer folder {directory} has no {CONFIG_NAME}; is it a tokenizer folder?")
        try:
            data = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{config_path} is not valid JSON ({err}); the tokenizer folder is corrupt") from None
        if not isinstance(data, dict):
            raise ValueError(f"{config_path} must hold a JSON object")
        config = VQGANConfig.from_dict(data, source=str(config_path))
        weights_path = directory / WEIGHTS_NAME
        if not weights_path.is_file():
            raise FileNotFoundError(f"tokenizer folder {directory} has no {WEIGHTS_NAME}")
        # The config is checked against the weights' shapes (read from the file's header) on a model
        # built on the meta device: an edited config.json allocates nothing before it is refused.
        with torch.device("meta"):
            shell = cls(config)
        require_memory(4 * sum(p.numel() for p in shell.parameters()), f"the tokenizer in {directory}")
        try:
            with safe_open(str(weights_path), framework="pt") as f:
                shapes = {k: _Shape(tuple(f.get_slice(k).get_shape())) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{weights_path} could not be read as safetensors ({err})") from None
        _check_state_dict(shell.state_dict(), shapes, weights_path)
        try:
            state = load_file(str(weights_path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{weights_path} could not be read as safetensors ({err})") from None
        model = cls(config)
        model.load_state_dict(state, strict=True)
        return model.to(device).eval()

    def fingerprint(self) -> str:
        """16 hex chars of sha256 over the canonical config JSON and every weight's bytes."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.config.identity(), sort_keys=True, separators=(",", ":")).encode())
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class _Shape:
    """A weight's shape as a file's header gives it (for ``_check_state_dict``)."""

    shape: tuple[int, ...]


def _check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], path: Path) -> None:
    """One-line ValueError naming the first few missing / unexpected / mis-shaped weights."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [
        f"{k} {tuple(found[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and tuple(found[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} weights ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} weights ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})")
    if mismatched:
        problems.append(
            f"{len(mismatched)} shape mismatches (file vs config: {'; '.join(mismatched[:3])}{'; ...' if len(mismatched) > 3 else ''})"
        )
    if problems:
        raise ValueError(f"{path} does not match its config.json: " + "; ".join(problems))
