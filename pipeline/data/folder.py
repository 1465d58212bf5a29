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

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")  # GIF, TIFF: first frame


class FolderSource(ImageSource):
    def __init__(self, spec: str, root: Path, image_size: int, channels: int, split: str,
                 seed: int, val_fraction: float, check: bool,
                 listing: tuple[list[str], list[tuple[str, str]]] | None = None) -> None:
        files, left_out = listing if listing is not None else scan_folder(root)  # the other split's scan
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
            reasons = check_many([os.path.join(root, f) for f in chosen], check_decodes)
            skipped = [(f, r) for f, r in zip(chosen, reasons) if r is not None]
            chosen = [f for f, r in zip(chosen, reasons) if r is None]
        self.files = chosen  # relative posix paths
        class_index = {c: i for i, c in enumerate(class_names)}
        self.labels = [class_index[f.split("/", 1)[0]] if class_names else -1 for f in chosen]
        self.left_out = left_out
        self._set_skipped(skipped, len(chosen) + len(skipped))

    def __len__(self) -> int:
        return len(self.files)

    def label_of(self, index: int) -> int:
        return self.labels[index]

    def source_of(self, index: int) -> str:
        return self.files[index]

    def file_at(self, index: int) -> str:
        assert self.root is not None
        return os.path.join(self.root, self.files[index])  # not Path's `/`: 7 µs

    def load_pil(self, index: int, min_size: int) -> Image.Image:
        return decode_image(self.file_at(index), self.channels, min_size)


def _is_dir(entry: os.DirEntry) -> bool:
    """A folder, or a link to one (as ``os.walk`` with ``followlinks=True`` sorts entries)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def scan_folder(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Image files under ``root`` (recursive) as sorted relative posix paths, and what was left out
    and why (hidden entries, other files, links leaving the data folder), as (path, reason) pairs.

    Links are followed only inside ``root``; a link from one class folder into another class's
    folder (or onto the data folder itself) would file images under the wrong class, so it is a
    ValueError, never silently accepted."""
    found: list[str] = []
    left_out: list[tuple[str, str]] = []
    root_real = os.path.realpath(root)
    seen: set[str] = set()  # real paths of visited folders: symlink cycles are walked once

    def inside(target: str) -> bool:
        return target == root_real or target.startswith(root_real + os.sep)

    def check_link(path: Path, rel: Path) -> bool:
        """True to follow the link at ``path`` (``rel`` below root); False when it leaves the folder."""
        target = os.path.realpath(path)
        if not inside(target):
            left_out.append((rel.as_posix(), f"a link to {target}, outside the data folder"))
            return False
        target_rel = Path(os.path.relpath(target, root_real))
        if target_rel == Path(".") or (len(rel.parts) > 1 and target_rel.parts[0] != rel.parts[0]):
            raise ValueError(f"{path} links to {target}, another class's folder or the data folder itself: its "
                             "images would be read under the wrong class; remove the link or copy the images")
        return True

    def walk(folder: str, rel: str) -> None:  # os.walk(followlinks=True) order, on DirEntry's cached types
        real = os.path.realpath(folder)
        if real in seen:
            return
        seen.add(real)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            left_out.append((rel + "/" if rel else ".", f"a folder that could not be listed ({err.strerror})"))
            return
        folders = [e for e in entries if _is_dir(e)]
        kept = []
        for e in folders:
            rel_e = f"{rel}/{e.name}" if rel else e.name
            if e.name.startswith("."):
                left_out.append((rel_e + "/", "a hidden folder"))
            elif not e.is_symlink() or check_link(Path(e.path), Path(rel_e)):
                kept.append((e.path, rel_e))
        for e in entries:
            if _is_dir(e):
                continue
            name, rel_e = e.name, (f"{rel}/{e.name}" if rel else e.name)
            if name.startswith("."):
                left_out.append((rel_e, "a hidden file"))
            elif not name.lower().endswith(IMAGE_EXTENSIONS):
                left_out.append((rel_e, f"not an image file ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)})"))
            elif not e.is_symlink() or check_link(Path(e.path), Path(rel_e)):
                found.append(rel_e)
        for path, rel_e in kept:
            walk(path, rel_e)

    walk(os.fspath(root), "")
    return sorted(found), left_out
