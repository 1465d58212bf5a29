"""Data sources: one function turns ``--data`` into a torch Dataset of images.

``load_images(spec, image_size, channels, split=...)`` accepts

- a folder of images (searched recursively; png/jpg/jpeg/webp/bmp, any case). When every
  image sits inside a first-level sub-folder and there are at least two of them, the
  sub-folder names are the classes (as torchvision's ``ImageFolder``); otherwise there
  are no classes. Hidden files and folders (``.name``) are ignored.
- a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset`` or ``DatasetDict``;
  read by ``hf_sources.py``, as is the hub):
  the first ``datasets.Image`` column holds the images, the first ``ClassLabel`` column
  (else an integer ``label``/``labels`` column) the classes. Its own ``train`` and
  ``validation`` (or ``valid``/``val``/``test``) splits are used when present.
- ``hf:owner/name``: a dataset on the Hugging Face hub, loaded with
  ``datasets.load_dataset`` (needs a network, or ``HF_HUB_OFFLINE=1`` and a cached copy).
  Without one it fails within a few seconds with a ValueError instead of hanging.
- ``digits``: scikit-learn's 1,797 handwritten 8×8 digits (classes "0".."9"), upsampled
  bilinearly to ``image_size``.
- ``photos``: random square crops of the photographs shipped inside scikit-image's
  installed data folder (nothing is downloaded). A fixed set of photos
  (``PHOTOS_HELD_OUT``) only ever feeds the validation split. No classes.

Every item is ``{"image": FloatTensor[C, S, S] in [-1, 1], "label": int (-1 when there
are no classes), "source": str}``. The model's ``channels`` decides the colour mode:
``channels=3`` converts grey and palette images to RGB and composites transparent images
(RGBA, LA, palette with transparency) on white; ``channels=1`` converts everything to
8-bit grey ("L", the same white compositing first). Folder and saved-dataset images are
resized so the shorter side is ``image_size`` (bicubic, antialiased) and center-cropped.

Sources without a split of their own are split deterministically: the sources are sorted
(so file-system order does not matter), ``torch.randperm(n, generator=seed)`` shuffles
them, and the last ``round(n * val_fraction)`` are the validation split.

Files that cannot be decoded are found when the source is built (a cheap decode:
JPEGs at 1/8 scale), left out so ``len()`` is right and DataLoader workers never meet
them, and reported: ``source.skipped`` lists ``(source, reason)`` pairs,
``source.skip_report()`` gives one line, and a warning is logged. Decoding is lazy, per
item, so memory does not grow with the size of the data set.
"""

from __future__ import annotations

import abc
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import check_decodes, check_many, decode_image, pil_to_model, resize_center_crop

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "SPLITS", "BUNDLED", "ImageSource", "load_images",
           "split_indices", "canonical_spec", "default_split"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SPLITS = ("train", "validation", "all")

# --------------------------------------------------------------------------- splits


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


# --------------------------------------------------------------------------- the Dataset


class ImageSource(Dataset, abc.ABC):
    """A split of a data source as a torch Dataset.

    ``source[i] = {"image": FloatTensor[C, S, S] in [-1, 1], "label": int, "source": str}``.

    Attributes: ``spec`` (what was asked for), ``root`` (the folder, or None),
    ``split``, ``image_size``, ``channels``, ``class_names`` (``[]`` when there are no
    classes), ``skipped`` (``[(source, reason), ...]`` for files that could not be
    decoded and are not in the dataset), ``split_fraction`` (the validation share of a
    seeded split, None when the source brings its own split).

    Subclasses implement ``__len__``, ``label_of``, ``source_of`` and ``load_pil`` (the
    full-resolution image, already in the model's colour mode); ``image_at`` may be
    overridden when resizing is not a plain resize + center crop.
    """

    def __init__(self, spec: str, image_size: int, channels: int, split: str,
                 class_names: list[str], root: Path | None) -> None:
        self.spec = spec
        self.image_size = image_size
        self.channels = channels
        self.split = split
        self.class_names = list(class_names)
        self.root = root
        self.skipped: list[tuple[str, str]] = []
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

    def image_at(self, index: int, size: int) -> torch.Tensor:
        """Item ``index`` resized to ``size × size`` → FloatTensor[C, size, size] in [-1, 1]."""
        return pil_to_model(resize_center_crop(self.load_pil(index, size), size))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return {
            "image": self.image_at(index, self.image_size),
            "label": self.label_of(index),
            "source": self.source_of(index),
        }

    def skip_report(self) -> str:
        """One line: how many files were skipped and why (first few)."""
        if not self.skipped:
            return f"{self.spec}: no files skipped"
        shown = "; ".join(f"{s} ({r})" for s, r in self.skipped[:3])
        more = f"; … {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
        return (f"{self.spec} ({self.split}): skipped {len(self.skipped)} file(s) that could "
                f"not be decoded: {shown}{more}")

    def __repr__(self) -> str:
        classes = f", {len(self.class_names)} classes" if self.class_names else ""
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        return (f"{type(self).__name__}({self.spec!r}, split={self.split!r}, "
                f"{len(self)} images, {self.channels}×{self.image_size}²{classes}{skipped})")

    def _set_skipped(self, skipped: list[tuple[str, str]], total: int) -> None:
        self.skipped = skipped
        if skipped:
            logger.warning(self.skip_report())
        if skipped and len(skipped) == total:
            first, reason = skipped[0]
            raise ValueError(f"none of the {total} images of the {self.split} split of "
                             f"{self.spec} could be decoded (e.g. {first}: {reason})")


class _FolderSource(ImageSource):
    def __init__(self, spec: str, root: Path, image_size: int, channels: int, split: str,
                 seed: int, val_fraction: float, check: bool) -> None:
        files = _scan_folder(root)
        if not files:
            exts = "/".join(e[1:] for e in IMAGE_EXTENSIONS)
            raise ValueError(f"no images ({exts}) found under {root}")
        tops = {f.split("/", 1)[0] for f in files}
        nested = all("/" in f for f in files)
        class_names = sorted(tops) if nested and len(tops) >= 2 else []
        super().__init__(spec, image_size, channels, split, class_names, root)
        chosen = [files[i] for i in split_indices(len(files), split, seed, val_fraction)]
        self.split_fraction = val_fraction
        _require_nonempty(chosen, split, spec, len(files), val_fraction)
        skipped: list[tuple[str, str]] = []
        if check:
            reasons = check_many([root / f for f in chosen], check_decodes)
            skipped = [(f, r) for f, r in zip(chosen, reasons) if r is not None]
            chosen = [f for f, r in zip(chosen, reasons) if r is None]
        self.files = chosen  # relative posix paths
        class_index = {c: i for i, c in enumerate(class_names)}
        self.labels = [class_index[f.split("/", 1)[0]] if class_names else -1 for f in chosen]
        self._set_skipped(skipped, len(chosen) + len(skipped))

    def __len__(self) -> int:
        return len(self.files)

    def label_of(self, index: int) -> int:
        return self.labels[index]

    def source_of(self, index: int) -> str:
        return self.files[index]

    def load_pil(self, index: int, min_size: int) -> Image.Image:
        assert self.root is not None
        return decode_image(self.root / self.files[index], self.channels, min_size)


def _scan_folder(root: Path) -> list[str]:
    """Image files under ``root`` (recursive, hidden entries skipped) as sorted relative
    posix paths."""
    found: list[str] = []
    seen: set[str] = set()  # real paths of visited folders: symlink cycles are walked once
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root)
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append((rel / name).as_posix())
    return sorted(found)


# --------------------------------------------------------------------------- entry point


def _require_nonempty(items: Sequence[Any], split: str, spec: str, total: int,
                      val_fraction: float) -> None:
    if not items:
        hint = " (raise val_fraction)" if split == "validation" else ""
        raise ValueError(f"the {split} split of {spec} has no images ({total} in all, "
                         f"val_fraction={val_fraction}){hint}")


BUNDLED = ("digits", "photos")


def canonical_spec(spec: str | os.PathLike) -> str:
    """``--data`` as recorded in saved folders: bundled names and ``hf:`` names as given, folders as
    resolved absolute paths (so ``./shapes`` and ``/home/me/shapes`` are the same source)."""
    text = str(spec).strip()
    if text in BUNDLED or text.startswith("hf:"):
        return text
    return str(Path(text).expanduser().resolve())


def default_split(spec: str | os.PathLike, trained_on: str, split_seed: int = 0,
                  val_fraction: float | None = None) -> tuple[str, int, float]:
    """Which images of ``spec`` an evaluation scores by default: the validation split (with the
    recorded seed and share) when the models were trained on this very source, else all of it.
    Returns (split, seed, val_fraction)."""
    if trained_on and canonical_spec(spec) == trained_on:
        return "validation", split_seed, 0.1 if val_fraction is None else val_fraction
    return "all", split_seed, 0.1 if val_fraction is None else val_fraction


def load_images(spec: str, image_size: int, channels: int, split: str = "train", seed: int = 0,
                val_fraction: float = 0.1, *, check: bool = True,
                crops_per_photo: int = 256) -> ImageSource:
    """Turn ``--data`` into a torch Dataset of images (see the module docstring).

    Args:
        spec: an image folder, a ``save_to_disk`` folder, ``digits``, ``photos`` or
            ``hf:owner/name``. The bundled names win over a folder of the same name
            (write ``./digits`` for the folder).
        image_size: side ``S`` of the square images returned (≥ 8).
        channels: 3 → RGB, 1 → grey; the tokenizer's ``channels`` decides.
        split: "train", "validation" or "all".
        seed, val_fraction: the deterministic split for sources without one of their own
            (unused by ``photos``, whose validation photos are fixed).
        check: decode every file once up front so undecodable ones are skipped and
            counted (recommended; turn off only for data known to be clean).
        crops_per_photo: ``photos`` only — crops drawn from each photograph.

    Returns:
        An ``ImageSource``: ``source[i] = {"image": FloatTensor[C, S, S] in [-1, 1],
        "label": int (-1 when no classes), "source": str}``.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: unknown spec, bad size/channels/split, no images, all undecodable,
            an empty split, or the hub cannot be reached.
    """
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer ≥ 8, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if crops_per_photo < 1:
        raise ValueError(f"crops_per_photo must be ≥ 1, got {crops_per_photo!r}")
    spec = str(spec).strip()
    if not spec:
        raise ValueError("the data source is empty: give a folder, digits, photos or hf:owner/name")

    from .bundled import DigitsSource, PhotoSource

    if spec == "digits":
        return DigitsSource(image_size, channels, split, seed, val_fraction)
    if spec == "photos":
        return PhotoSource(image_size, channels, split, seed, crops_per_photo)
    if spec.startswith("hf:"):
        name = spec[3:].strip()
        if not name:
            raise ValueError("hf: needs a dataset name, e.g. hf:owner/name")
        from .hf_sources import hf_source, load_hub

        return hf_source(load_hub(name), spec, None, image_size, channels, split, seed,
                          val_fraction, check)

    path = Path(spec).expanduser()
    if not path.exists():
        if os.sep in spec or "/" in spec or spec.startswith((".", "~")):
            raise FileNotFoundError(f"data folder {path} does not exist")
        raise ValueError(f"unknown data source {spec!r}: expected an image folder, a save_to_disk "
                         f"folder, 'digits', 'photos' or 'hf:owner/name'")
    if not path.is_dir():
        raise ValueError(f"data source {path} is a file; give a folder of images or a "
                         f"save_to_disk folder")
    from .hf_sources import hf_source, is_saved_dataset

    if is_saved_dataset(path):
        import datasets

        try:
            data = datasets.load_from_disk(str(path))
        except Exception as err:  # corrupt or foreign save folders raise assorted errors
            raise ValueError(f"could not open the saved dataset {path}: "
                             f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        return hf_source(data, spec, path, image_size, channels, split, seed, val_fraction, check)
    return _FolderSource(spec, path, image_size, channels, split, seed, val_fraction, check)

