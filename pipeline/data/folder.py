"""An image folder as a data source: images found recursively; when every image sits inside a
first-level sub-folder and there are at least two of them, the sub-folder names are the classes
(as torchvision's ``ImageFolder``). Hidden files and folders (``.name``) are ignored."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from .images import check_decodes, check_many, decode_image
from .source import ImageSource, require_nonempty, split_indices

__all__ = ["IMAGE_EXTENSIONS", "FolderSource", "scan_folder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class FolderSource(ImageSource):
    def __init__(self, spec: str, root: Path, image_size: int, channels: int, split: str,
                 seed: int, val_fraction: float, check: bool) -> None:
        files = scan_folder(root)
        if not files:
            exts = "/".join(e[1:] for e in IMAGE_EXTENSIONS)
            raise ValueError(f"no images ({exts}) found under {root}")
        tops = {f.split("/", 1)[0] for f in files}
        nested = all("/" in f for f in files)
        class_names = sorted(tops) if nested and len(tops) >= 2 else []
        super().__init__(spec, image_size, channels, split, class_names, root)
        chosen = [files[i] for i in split_indices(len(files), split, seed, val_fraction)]
        self.split_fraction = val_fraction
        require_nonempty(chosen, split, spec, len(files), val_fraction)
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


def scan_folder(root: Path) -> list[str]:
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
