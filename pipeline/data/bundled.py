"""The bundled data sets, ready on any machine with vqgpt installed (nothing is downloaded).

- ``digits``: scikit-learn's 1,797 handwritten 8×8 digits (classes "0".."9"), upsampled
  bilinearly to the model's size.
- ``photos``: deterministic random square crops of the photographs shipped inside
  scikit-image's data folder; a fixed set of photos (``PHOTOS_HELD_OUT``) only ever feeds the
  validation split. No classes.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .images import check_decodes, decode_image
from .source import ImageSource, require_nonempty, split_indices

__all__ = ["PHOTOS", "PHOTOS_HELD_OUT", "DigitsSource", "PhotoSource"]

# Natural photographs that ship inside scikit-image's data folder (no pooch download).
# Synthetic images (chessboards, logos, phantoms, silhouettes) and near-duplicates
# (the right image of the motorcycle stereo pair) are left out.
PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png",
    "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
    "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
)
# Photos whose crops only ever appear in the validation split.
PHOTOS_HELD_OUT = ("chelsea.png", "coins.png", "gravel.png", "rocket.jpg")


class DigitsSource(ImageSource):
    """scikit-learn's handwritten digits: 8×8 values 0..16, upsampled bilinearly."""

    def __init__(self, image_size: int, channels: int, split: str, seed: int,
                 val_fraction: float) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        super().__init__("digits", image_size, channels, split, [str(d) for d in range(10)], None)
        n = len(digits.images)  # 1797
        self.indices = split_indices(n, split, seed, val_fraction)
        self.split_fraction = val_fraction
        require_nonempty(self.indices, split, "digits", n, val_fraction)
        self._images = torch.from_numpy(digits.images.astype(np.float32))  # (N, 8, 8) in 0..16
        self._targets = digits.target.astype(np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def label_of(self, index: int) -> int:
        return int(self._targets[self.indices[index]])

    def source_of(self, index: int) -> str:
        return f"index:{self.indices[index]}"

    def load_pil(self, index: int, min_size: int) -> Image.Image:
        x = self._images[self.indices[index]].div(16).mul(255).round().byte().numpy()
        return Image.fromarray(x, mode="L").convert("RGB" if self.channels == 3 else "L")

    def pixels_at(self, index: int, size: int) -> torch.Tensor:
        x = self._images[self.indices[index]][None] / 16  # (1, 8, 8) in [0, 1]
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        x = x * 2 - 1  # (1, S, S) in [-1, 1]
        return x.repeat(self.channels, 1, 1)  # (C, S, S)


class PhotoSource(ImageSource):
    """Deterministic random square crops of scikit-image's bundled photographs.

    Crop ``j`` of photo ``p`` is drawn from a generator seeded by (seed, photo name, j):
    a side between ``max(0.2·m, min(S, m))`` and ``m`` (``m`` = the photo's shorter side)
    and a uniform position; it is then resized to ``S × S``."""

    def __init__(self, image_size: int, channels: int, split: str, seed: int,
                 crops_per_photo: int) -> None:
        super().__init__("photos", image_size, channels, split, [], None)
        folder = _skimage_data_dir()
        present = [p for p in PHOTOS if (folder / p).is_file()]
        held = [p for p in present if p in PHOTOS_HELD_OUT]
        train = [p for p in present if p not in PHOTOS_HELD_OUT]
        wanted = {"train": train, "validation": held, "all": train + held}[split]
        self.root = folder
        self.seed = seed
        self.crops_per_photo = crops_per_photo
        reasons = [check_decodes(folder / p) for p in wanted]
        self.photos = [p for p, r in zip(wanted, reasons) if r is None]
        skipped = [(p, r) for p, r in zip(wanted, reasons) if r is not None]
        if not wanted:
            raise ValueError(f"no scikit-image photographs for the {split} split found in {folder}")
        self._cache: dict[str, Image.Image] = {}
        self._set_skipped(skipped, len(wanted))

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers re-read the photos
        return {**self.__dict__, "_cache": {}}

    def __len__(self) -> int:
        return len(self.photos) * self.crops_per_photo

    def label_of(self, index: int) -> int:
        return -1

    def source_of(self, index: int) -> str:
        return f"{self.photos[index // self.crops_per_photo]}:{index % self.crops_per_photo}"

    def crop_box(self, index: int) -> tuple[str, tuple[int, int, int, int]]:
        """(photo file, (left, top, right, bottom)) of crop ``index``."""
        name = self.photos[index // self.crops_per_photo]
        j = index % self.crops_per_photo
        w, h = self._photo(name).size
        m = min(w, h)
        g = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{name}:{j}".encode()))
        lo = max(0.2 * m, min(self.image_size, m))
        u = torch.rand(3, generator=g).tolist()
        side = int(round(lo + (m - lo) * u[0]))
        left = int((w - side) * u[1])
        top = int((h - side) * u[2])
        return name, (left, top, left + side, top + side)

    def load_pil(self, index: int, min_size: int) -> Image.Image:
        name, box = self.crop_box(index)
        return self._photo(name).crop(box)

    def _photo(self, name: str) -> Image.Image:
        if name not in self._cache:
            assert self.root is not None
            self._cache[name] = decode_image(self.root / name, self.channels, 1 << 16)
        return self._cache[name]


def _skimage_data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the 'photos' data source needs scikit-image (pip install scikit-image)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"
