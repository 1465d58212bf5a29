"""What every data source is: ``ImageSource``, a split of a source as a torch Dataset, and the
deterministic train/validation split of sources that bring none of their own.

``source[i] = {"image": FloatTensor[C, S, S] in [-1, 1], "label": int (-1 when there are no
classes), "source": str}``. Subclasses (``folder.py``, ``bundled.py``, ``hf.py``) say how many
images a split has, where each comes from and how to decode it; resizing and the model's colour
mode are done here, the same way for every source (``images.py``).
"""

from __future__ import annotations

import abc
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import pil_to_pixels, read_pixels_at, resize_center_crop, to_model

logger = logging.getLogger(__name__)

__all__ = ["SPLITS", "ImageSource", "split_indices", "require_nonempty"]

SPLITS = ("train", "validation", "all")


def split_indices(n: int, split: str, seed: int, val_fraction: float) -> list[int]:
    """Deterministic train/validation split of ``n`` sorted items.

    ``torch.randperm(n, generator=manual_seed(seed))``; the last ``round(n *
    val_fraction)`` positions (at least one when ``val_fraction > 0`` and ``n ≥ 2``) are
    validation. Indices come back sorted."""
    if split == "all":
        return list(range(n))
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = perm[n - n_val:] if split == "validation" else perm[: n - n_val]
    return sorted(chosen)


def require_nonempty(items: Sequence[Any], split: str, spec: str, total: int,
                      val_fraction: float) -> None:
    if not items:
        hint = " (raise val_fraction)" if split == "validation" else ""
        raise ValueError(f"the {split} split of {spec} has no images ({total} in all, "
                         f"val_fraction={val_fraction}){hint}")


class ImageSource(Dataset, abc.ABC):
    """A split of a data source as a torch Dataset.

    ``source[i] = {"image": FloatTensor[C, S, S] in [-1, 1], "label": int, "source": str}``.

    Attributes: ``spec`` (what was asked for), ``root`` (the folder, or None),
    ``split``, ``image_size``, ``channels``, ``class_names`` (``[]`` when there are no
    classes), ``skipped`` (``[(source, reason), ...]`` for files that could not be
    decoded and are not in the dataset), ``split_fraction`` (the validation share of a
    seeded split, None when the source brings its own split).

    Subclasses implement ``__len__``, ``label_of``, ``source_of`` and ``load_pil`` (the
    full-resolution image, already in the model's colour mode); ``pixels_at`` may be
    overridden when resizing is not a plain resize + center crop. Sources that read image files
    also give ``file_at`` (a path or the bytes), so an image wanted at several sizes is read and
    decoded once (``pixels_at_sizes``).
    """

    def __init__(self, spec: str, image_size: int, channels: int, split: str,
                 class_names: list[str], root: Path | None) -> None:
        self.spec = spec
        self.image_size = image_size
        self.channels = channels
        self.split = split
        self.class_names = list(class_names)
        self.root = root
        self.skipped: list[tuple[str, str]] = []  # images that could not be decoded
        self.left_out: list[tuple[str, str]] = []  # other entries of the source not read (hidden, not images, links out)
        self.split_fraction: float | None = None  # set by sources split with split_indices

    @abc.abstractmethod
    def __len__(self) -> int:
        """Images in this split."""

    @abc.abstractmethod
    def label_of(self, index: int) -> int:
        """Class index of item ``index`` (-1 when the source has no classes)."""

    @abc.abstractmethod
    def source_of(self, index: int) -> str:
        """Where item ``index`` comes from: a path relative to the root, or ``index:N``."""

    @abc.abstractmethod
    def load_pil(self, index: int, min_size: int) -> Image.Image:
        """The image at (at least) ``min_size`` on its shorter side where the format
        allows a cheaper decode, in "RGB" or "L" per ``channels``."""

    def identity_of(self, index: int) -> str:
        """What a resumed run compares to know item ``index`` is the same: its source (tar shards add
        the member's size)."""
        return self.source_of(index)

    def pixels_at(self, index: int, size: int) -> torch.Tensor:
        """Item ``index`` resized to ``size × size`` as the source holds it: ByteTensor[C, size, size]
        in 0..255 for 8-bit images (4× less to pass between processes than floats; ``to_model``
        converts a whole batch at once), FloatTensor in [-1, 1] for sources computed in floating
        point (``digits``)."""
        data = self.file_at(index)
        if data is not None:  # read_pixels_at: a plain PNG decoded by libspng, the same pixels faster
            return read_pixels_at(data, self.channels, (size,))[0]
        return pil_to_pixels(resize_center_crop(self.load_pil(index, size), size))

    def file_at(self, index: int) -> str | bytes | None:
        """Item ``index``'s image file (a path) or its bytes, for sources that read files; None for the
        others."""
        return None

    def pixels_at_sizes(self, index: int, sizes: Sequence[int]) -> list[torch.Tensor]:
        """``pixels_at`` for each of ``sizes``, exactly, a file read and decoded once
        (``read_pixels_at``): what tokenize reads for an image and its crops."""
        data = self.file_at(index)
        if data is None:
            return [self.pixels_at(index, size) for size in sizes]
        return read_pixels_at(data, self.channels, sizes)

    def image_at(self, index: int, size: int) -> torch.Tensor:
        """Item ``index`` resized to ``size × size`` → FloatTensor[C, size, size] in [-1, 1]."""
        return to_model(self.pixels_at(index, size)).contiguous()

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return {
            "image": self.image_at(index, self.image_size),
            "label": self.label_of(index),
            "source": self.source_of(index),
        }

    def skip_report(self) -> str:
        """One line: how many files were skipped or left out and why (first few of each)."""
        def some(items: list[tuple[str, str]]) -> str:
            shown = "; ".join(f"{s} ({r})" for s, r in items[:3])
            return shown + (f"; … {len(items) - 3} more" if len(items) > 3 else "")

        parts = []
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)} file(s) that could not be decoded: {some(self.skipped)}")
        if self.left_out:
            parts.append(f"left out {len(self.left_out)} other entr{'y' if len(self.left_out) == 1 else 'ies'}: "
                         f"{some(self.left_out)}")
        if not parts:
            return f"{self.spec}: no files skipped"
        return f"{self.spec} ({self.split}): " + " — ".join(parts)

    def __repr__(self) -> str:
        classes = f", {len(self.class_names)} classes" if self.class_names else ""
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        return (f"{type(self).__name__}({self.spec!r}, split={self.split!r}, "
                f"{len(self)} images, {self.channels}×{self.image_size}²{classes}{skipped})")

    def _set_skipped(self, skipped: list[tuple[str, str]], total: int) -> None:
        self.skipped = skipped
        if skipped or self.left_out:
            logger.warning(self.skip_report())
        if skipped and len(skipped) == total:
            first, reason = skipped[0]
            raise ValueError(f"none of the {total} images of the {self.split} split of "
                             f"{self.spec} could be decoded (e.g. {first}: {reason})")
