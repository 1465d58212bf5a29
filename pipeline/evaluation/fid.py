"""Fréchet distances under one pinned protocol: FID on the standard Inception features, and a
pixel-space Fréchet distance for small images (never called FID).

The FID protocol, printed with every figure (``protocol_line``):

- images: the model's resolution (real images resized + centre-cropped by the data source, as
  in training), quantised to uint8 by ``images.to_uint8`` — the 8-bit image a PNG would hold —
  grey replicated to RGB; real, reconstructed and generated images all take this one path;
- features: torch-fidelity's ``FeatureExtractorInceptionV3`` ("inception-v3-compat", the
  2048-d pool features of the 2015-12-05 TensorFlow FID Inception), which resizes the uint8
  images to 299×299 with its TensorFlow-1.x-compatible bilinear interpolation, as the original
  TTUR FID did;
- weights: a **local** file (``--inception-weights`` or the torch hub checkpoints folder) —
  torch-fidelity would download them when given no path, so a path is always given, and
  without a file the FID is absent with a one-line reason;
- statistics and distance: torch-fidelity's ``fid_features_to_statistics`` and
  ``fid_statistics_to_metric`` (mean, covariance, ``||μ1-μ2||² + Tr(Σ1+Σ2-2(Σ1Σ2)^½)``).

Reference statistics of a data split are cached in an ``.npz`` (``mu``, ``sigma`` as
pytorch-fid names them, plus the pixel statistics and the JSON key they were made under).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import to_uint8

__all__ = ["INCEPTION_FILES", "PIXEL_FD_MAX_VALUES", "inception_search_paths", "find_inception_weights",
           "InceptionFeatures", "FrechetStats", "frechet_distance", "flat_pixels", "pixel_fd_absent",
           "FeatureCollector", "file_sha256", "default_cache_dir"]

logger = logging.getLogger(__name__)

# The standard FID Inception weights (converted from TensorFlow's 2015-12-05 graph): pytorch-fid
# names the file the first name, torch-fidelity the second; the suffix is its hub hash tag.
INCEPTION_FILES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_FEATURE = "2048"  # the pool3 features every published FID uses
_INCEPTION_KEYS = ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight", "fc.weight")
# Pixel-space Fréchet distance only for images of at most this many values (32×32 RGB): beyond
# it the covariance grows too large to estimate from evaluation-sized sets (and to factorise).
PIXEL_FD_MAX_VALUES = 3072


# --------------------------------------------------------------------------- weights


def inception_search_paths() -> list[Path]:
    """Where the weights are looked for without ``--inception-weights``: the torch hub
    checkpoints folder (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/...``)."""
    return [Path(torch.hub.get_dir()) / "checkpoints" / name for name in INCEPTION_FILES]


def find_inception_weights(path: str | Path | None) -> tuple[Path | None, str | None]:
    """(weights file, None), or (None, one line saying why FID is absent).

    A ``path`` that was given must exist (FileNotFoundError otherwise: a typo is not "no FID");
    without one the hub checkpoints folder is searched. Nothing is ever downloaded."""
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"`inception_weights` {file} does not exist")
        return file, None
    for file in inception_search_paths():
        if file.is_file():
            return file, None
    folder = inception_search_paths()[0].parent
    return None, (f"no Inception weights file: {INCEPTION_FILES[0]} is not in {folder} and no "
                  "`inception_weights` file was given (nothing is downloaded; see the README, Evaluation)")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_inception_file(path: Path) -> None:
    """Refuse anything but a plain tensor state dict of the FID Inception, before torch-fidelity
    reads it (it unpickles without ``weights_only``; a file that loads with it holds only tensors)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt or foreign file: one clear line
        raise ValueError(f"could not read Inception weights {path}: {type(err).__name__}: {err}".splitlines()[0]) from None
    if not isinstance(state, dict) or any(k not in state for k in _INCEPTION_KEYS):
        raise ValueError(f"{path} is not the FID Inception state dict ({INCEPTION_FILES[0]}, as pytorch-fid and "
                         "torch-fidelity use it)")


class InceptionFeatures:
    """2048-d pool features of the FID Inception (torch-fidelity's "inception-v3-compat") from
    a local weights file. ``features(images)``: ByteTensor[B, C, H, W] (C = 1 or 3) →
    FloatTensor[B, 2048] on the CPU; any H × W (resized to 299 × 299 inside)."""

    def __init__(self, weights: str | Path, device: str = "cpu", batch_size: int = 64) -> None:
        import torch_fidelity
        from torch_fidelity import FeatureExtractorInceptionV3

        if batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1, got {batch_size}")
        self.weights = Path(weights)
        _check_inception_file(self.weights)
        try:
            model = FeatureExtractorInceptionV3("inception-v3-compat", [INCEPTION_FEATURE],
                                                feature_extractor_weights_path=str(self.weights))
        except RuntimeError as err:  # load_state_dict: missing/unexpected keys, wrong shapes
            raise ValueError(f"{self.weights} does not fit the FID Inception: {str(err).splitlines()[0]}") from None
        self.model = model.to(device)
        self.device = device
        self.batch_size = batch_size
        self.sha256 = file_sha256(self.weights)
        self.evaluator = f"torch-fidelity {torch_fidelity.__version__}"

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"Inception features need uint8 images (B, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")
        rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images  # grey → RGB
        parts = [self.model(chunk.to(self.device))[0].float().cpu() for chunk in rgb.split(self.batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, int(INCEPTION_FEATURE))

    def describe(self) -> dict[str, Any]:
        """What identifies these features: evaluator and version, layer, weights file and hash."""
        return {"evaluator": self.evaluator, "network": "inception-v3-compat", "feature": INCEPTION_FEATURE,
                "weights": str(self.weights), "weights_sha256": self.sha256,
                "resize": "uint8 → 299×299, torch-fidelity's TensorFlow-1.x-compatible bilinear"}


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class FrechetStats:
    """Mean (D,) and covariance (D, D) of a feature set, as torch-fidelity computes them."""

    mu: np.ndarray
    sigma: np.ndarray
    num_images: int

    @classmethod
    def of(cls, features: torch.Tensor) -> "FrechetStats":
        """FloatTensor[N, D] → statistics (N ≥ 2)."""
        from torch_fidelity.metric_fid import fid_features_to_statistics

        if features.dim() != 2 or features.shape[0] < 2:
            raise ValueError(f"a Fréchet distance needs at least 2 images per set, got {features.shape[0]}")
        stats = fid_features_to_statistics(features.detach().float().cpu())
        return cls(stats["mu"], stats["sigma"], int(features.shape[0]))


def frechet_distance(a: FrechetStats, b: FrechetStats) -> float:
    """``||μa-μb||² + Tr(Σa + Σb - 2(Σa Σb)^½)`` by torch-fidelity's ``fid_statistics_to_metric``."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature sizes differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    result = fid_statistics_to_metric({"mu": a.mu, "sigma": a.sigma}, {"mu": b.mu, "sigma": b.sigma}, verbose=False)
    return float(result[KEY_METRIC_FID])


def flat_pixels(images: torch.Tensor) -> torch.Tensor:
    """ByteTensor[B, C, H, W] → FloatTensor[B, C·H·W]: the 8-bit pixels scaled to [0, 1]."""
    return images.flatten(1).float().div(255.0)


def pixel_fd_absent(channels: int, image_size: int) -> str | None:
    """Why a pixel-space Fréchet distance is not computed for these images, or None."""
    values = channels * image_size * image_size
    if values > PIXEL_FD_MAX_VALUES:
        return (f"pixel FD is for small images: {channels}×{image_size}×{image_size} = {values} values "
                f"exceeds {PIXEL_FD_MAX_VALUES}")
    return None


class FeatureCollector:
    """Quantises batches of images in [-1, 1] to uint8 once and keeps their Inception features
    (when ``inception`` is given) and pixel features (when ``pixels``), optionally with labels."""

    def __init__(self, inception: InceptionFeatures | None, pixels: bool) -> None:
        self.inception = inception
        self.pixels = pixels
        self.parts: dict[str, list[torch.Tensor]] = {"inception": [], "pixel": [], "label": []}

    def add(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        batch = to_uint8(images.detach()).cpu()  # (B, C, H, W) uint8
        if self.inception is not None:
            self.parts["inception"].append(self.inception.features(batch))
        if self.pixels:
            self.parts["pixel"].append(flat_pixels(batch))
        if labels is not None:
            self.parts["label"].append(torch.as_tensor(labels).reshape(-1).cpu())

    def features(self, kind: str) -> torch.Tensor | None:
        return torch.cat(self.parts[kind]) if self.parts[kind] else None

    def stats(self) -> dict[str, FrechetStats]:
        return {kind: FrechetStats.of(self.features(kind)) for kind in ("inception", "pixel") if self.parts[kind]}


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/vqgpt/reference_stats`` (``~/.cache/vqgpt/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vqgpt" / "reference_stats"


def cache_file(cache_dir: Path, key: dict[str, Any]) -> Path:
    """``<cache_dir>/<data>-<split>-<hash of key>.npz``."""
    text = json.dumps(key, sort_keys=True)
    tag = hashlib.sha256(text.encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(key.get("data", "data"))).name or "data")[:40]
    return cache_dir / f"{name}-{key.get('split', 'split')}-{tag}.npz"


def save_stats(path: Path, key: dict[str, Any], stats: dict[str, FrechetStats]) -> None:
    """Write ``stats`` ({"inception": …, "pixel": …}) and their key atomically."""
    arrays: dict[str, Any] = {"key": np.array(json.dumps(key, sort_keys=True))}
    for kind, s in stats.items():
        prefix = "" if kind == "inception" else f"{kind}_"
        arrays.update({f"{prefix}mu": s.mu, f"{prefix}sigma": s.sigma, f"{prefix}num_images": np.array(s.num_images)})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_stats(path: Path, key: dict[str, Any]) -> dict[str, FrechetStats] | None:
    """The statistics cached at ``path`` when they were made under exactly ``key``, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if json.loads(str(data["key"])) != json.loads(json.dumps(key, sort_keys=True)):
                return None
            out = {}
            for kind, prefix in (("inception", ""), ("pixel", "pixel_")):
                if f"{prefix}mu" in data:
                    out[kind] = FrechetStats(data[f"{prefix}mu"], data[f"{prefix}sigma"], int(data[f"{prefix}num_images"]))
            return out
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        logger.warning("ignoring unreadable reference statistics %s (%s)", path, err)
        return None
