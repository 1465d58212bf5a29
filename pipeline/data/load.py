"""Data sources: one function, ``load_images``, turns a data source into a torch Dataset of images,
and one, ``held_out_split``, says which of its images a trained model never saw.

``load_images(spec, image_size, channels, split=...)`` accepts

- a folder of images (searched recursively; png/jpg/jpeg/webp/bmp/gif/tif/tiff, any case; GIF and TIFF: the first frame). When every
  image sits inside a first-level sub-folder and there are at least two of them, the
  sub-folder names are the classes (as torchvision's ``ImageFolder``); otherwise there
  are no classes. Hidden files and folders (``.name``) are ignored.
- a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset`` or ``DatasetDict``;
  read by ``hf.py``, as is the hub):
  the first ``datasets.Image`` column holds the images, the first ``ClassLabel`` column
  (else an integer ``label``/``labels`` column) the classes. Its own ``train`` and
  ``validation`` (or ``valid``/``val``/``test``) splits are used when present.
- WebDataset tar shards: a ``.tar`` file or a brace pattern of them,
  ``"shards/train-{00000..00099}.tar"`` (``tars.py``). Each sample's image is its
  ``jpg``/``jpeg``/``png``/``webp``/``bmp``/``gif``/``tif``/``tiff`` member; its class its ``cls`` (else ``class``/``label``)
  member, text holding a class index (classes "0" … "max") or a class name (classes sorted by
  name). Samples are sorted by key and split like a folder's files, then listed in the order the
  shards hold them. A pattern naming a missing file, or a tar without image members, is a
  ValueError. ``tokenize`` reads shards as a stream, each process its own shards.
- ``hf:owner/name``: a dataset on the Hugging Face hub, loaded with
  ``datasets.load_dataset`` (needs a network, or ``HF_HUB_OFFLINE=1`` and a cached copy).
  Without one it fails within a few seconds with a ValueError instead of hanging. Loaded here,
  it is downloaded whole; ``tokenize`` can read it as a stream instead (``stream.py``).
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

Images are read once with their EXIF orientation applied (phone photos stand upright).

Files (and shard members) that cannot be decoded are found when the source is built (a cheap decode:
JPEGs at 1/8 scale), left out so ``len()`` is right and DataLoader workers never meet
them, and reported: ``source.skipped`` lists ``(source, reason)`` pairs,
``source.skip_report()`` gives one line, and a warning is logged. Decoding is lazy, per
item, so memory does not grow with the size of the data set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .bundled import DigitsSource, PhotoSource
from .folder import FolderSource, scan_folder
from .hf import hf_source, is_saved_dataset, load_hub
from .source import SPLITS, ImageSource
from .tars import TarShardSource, expand_shards, index_shards, is_shard_spec

__all__ = ["BUNDLED", "HeldOut", "load_images", "load_splits", "canonical_spec", "held_out_split"]

BUNDLED = ("digits", "photos")


def canonical_spec(spec: str | os.PathLike) -> str:
    """``--data`` as recorded in saved folders: bundled names and ``hf:`` names as given, folders as
    resolved absolute paths (so ``./shapes`` and ``/home/me/shapes`` are the same source)."""
    text = str(spec).strip()
    if text in BUNDLED or text.startswith("hf:"):
        return text
    return str(Path(text).expanduser().resolve())


@dataclass(frozen=True)
class HeldOut:
    """Which images of a source an evaluation scores: ``split`` of ``load_images`` with ``seed`` and
    ``val_fraction``, and why (one phrase, for the printed report)."""

    split: str  # "validation" (the images the models never saw) or "all"
    seed: int
    val_fraction: float
    why: str


def held_out_split(spec: str | os.PathLike, trained_on: str = "", split_seed: int = 0,
                   val_fraction: float | None = None, split: str | None = None) -> HeldOut:
    """The one place that decides which images of ``spec`` an evaluation scores.

    ``trained_on``, ``split_seed`` and ``val_fraction`` are what the models recorded about their
    training data (a tokenizer's ``trained_*`` settings, a token dataset's ``data`` and ``split``):
    on that very source the default is its validation split under the recorded seed and share,
    on any other source all of it. ``split`` (asked for explicitly) wins over the default."""
    fraction = 0.1 if val_fraction is None else float(val_fraction)
    same = bool(trained_on) and canonical_spec(spec) == trained_on
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        return HeldOut(split, split_seed, fraction, "as asked")
    if same:
        return HeldOut("validation", split_seed, fraction, "the images the models never saw")
    return HeldOut("all", split_seed, fraction, "not the source the models were trained on")


def load_images(spec: str, image_size: int, channels: int, split: str = "train", seed: int = 0,
                val_fraction: float = 0.1, *, check: bool = True,
                crops_per_photo: int = 256) -> ImageSource:
    """Turn ``--data`` into a torch Dataset of images (see the module docstring).

    Args:
        spec: an image folder, a ``save_to_disk`` folder, tar shards (``a.tar``,
            ``train-{00000..00099}.tar``), ``digits``, ``photos`` or ``hf:owner/name``. The
            bundled names win over a folder of the same name (write ``./digits`` for the folder).
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
            an empty split, a shard pattern naming missing files or a tar that is not a
            WebDataset shard, or the hub cannot be reached.
    """
    return load_splits(spec, image_size, channels, (split,), seed, val_fraction, check=check,
                       crops_per_photo=crops_per_photo)[split]


def load_splits(spec: str, image_size: int, channels: int, splits: tuple[str, ...], seed: int = 0,
                val_fraction: float = 0.1, *, check: bool = True, crops_per_photo: int = 256) -> dict[str, ImageSource]:
    """``load_images`` for several splits of one source, which is listed once (a folder's files, the
    shards' headers) for all of them."""
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer ≥ 8, got {image_size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if crops_per_photo < 1:
        raise ValueError(f"crops_per_photo must be ≥ 1, got {crops_per_photo!r}")
    spec = str(spec).strip()
    if not spec:
        raise ValueError("the data source is empty: give a folder, tar shards, digits, photos or hf:owner/name")

    if spec == "digits":
        return {s: DigitsSource(image_size, channels, s, seed, val_fraction) for s in splits}
    if spec == "photos":
        return {s: PhotoSource(image_size, channels, s, seed, crops_per_photo) for s in splits}
    if spec.startswith("hf:"):
        name = spec[3:].strip()
        if not name:
            raise ValueError("hf: needs a dataset name, e.g. hf:owner/name")
        hub = load_hub(name)
        return {s: hf_source(hub, spec, None, image_size, channels, s, seed, val_fraction, check) for s in splits}
    if is_shard_spec(spec):
        paths = expand_shards(spec)
        index = index_shards(paths)
        return {s: TarShardSource(spec, paths, index, image_size, channels, s, seed, val_fraction, check)
                for s in splits}

    path = Path(spec).expanduser()
    if not path.exists():
        if os.sep in spec or "/" in spec or spec.startswith((".", "~")):
            raise FileNotFoundError(f"data folder {path} does not exist")
        raise ValueError(f"unknown data source {spec!r}: expected an image folder, a save_to_disk "
                         f"folder, tar shards (.tar), 'digits', 'photos' or 'hf:owner/name'")
    if not path.is_dir():
        raise ValueError(f"data source {path} is a file; give a folder of images or a "
                         f"save_to_disk folder")
    if is_saved_dataset(path):
        import datasets

        try:
            data = datasets.load_from_disk(str(path))
        except Exception as err:  # corrupt or foreign save folders raise assorted errors
            raise ValueError(f"could not open the saved dataset {path}: "
                             f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        return {s: hf_source(data, spec, path, image_size, channels, s, seed, val_fraction, check) for s in splits}
    listing = scan_folder(path)
    return {s: FolderSource(spec, path, image_size, channels, s, seed, val_fraction, check, listing) for s in splits}

