"""Atomic writes of files and folders: a reader (or a run killed part-way) sees the old version or
the complete new one, never a half-written one.

Every saved artefact goes through here: token datasets and priors (``write_folder``), training
checkpoints (``replace_dir``, ``discard_dir``), the tokenize manifest and shard markers
(``write_json``). Imports no stage: it knows files, not models.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

__all__ = ["write_file", "write_json", "write_text", "replace_dir", "discard_dir", "write_folder", "link_tree", "publish_files", "exclusive"]


def write_file(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` fills a temporary sibling of ``path`` (same suffix), which then replaces ``path``
    in one rename: a reader sees the old file or the complete new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        with _named_as(tmp, path):
            write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextmanager
def _named_as(tmp: Path, path: Path) -> Iterator[None]:
    """An OSError about the temporary ``tmp`` (a full disk, say) names ``path``, what the user asked for."""
    try:
        yield
    except OSError as err:
        if err.filename is not None and str(err.filename).startswith(str(tmp)):
            raise type(err)(err.errno, err.strerror, str(path)) from err
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (``write_file``)."""
    return write_file(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented JSON at ``path``, written atomically."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or file system does not offer it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_dir(new: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put the finished folder ``new`` at ``path``, replacing what is there, so that ``path`` always
    holds the old folder or the new one: one atomic exchange where the system offers it (Linux), else
    the old folder moved aside first and removed last."""
    new, path = Path(new), Path(path)
    if path.exists() and _exchange(new, path):
        shutil.rmtree(new, ignore_errors=True)  # `new` now names the old folder
    elif path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, path)


def link_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``dst`` as a copy of the file or folder ``src`` made of hard links (no data copied; a file
    system without them gets real copies), so both names hold the same files until one is removed."""
    src, dst = Path(src), Path(dst)
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(src, dst)


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def discard_dir(path: str | os.PathLike) -> None:
    """Remove a folder so that a kill part-way never leaves it half-deleted under its own name:
    rename it to a hidden name (atomic) first, then delete."""
    path = Path(path)
    aside = path.with_name(f".old_{path.name}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def write_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Fill a hidden temporary sibling of ``path`` inside the ``with`` block; on success it replaces
    ``path`` in one rename (``replace_dir``), on an error it is removed and ``path`` is untouched.

    >>> with write_folder("runs/prior") as tmp:
    ...     model.save_pretrained(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with _named_as(tmp, path):
            yield tmp
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish_files(folder: str | os.PathLike, write: Callable[[Path], None], replaced: Iterable[str] = ()) -> None:
    """Replace some files of ``folder`` (a trainer's output: the model beside logs, checkpoints and
    maybe a user's files) so that it always holds the old set or the new one: a new folder is built
    beside it — ``write(new_folder)`` writes the new files, every other entry is hard-linked over
    (``link_tree``), entries named in ``replaced`` are dropped — and swapped in whole (``replace_dir``)."""
    folder = Path(folder)
    with write_folder(folder) as tmp:
        write(tmp)
        new = {p.name for p in tmp.iterdir()}
        drop = set(replaced) | new
        for entry in folder.iterdir() if folder.is_dir() else []:
            if entry.name not in drop:
                link_tree(entry, tmp / entry.name)


@contextmanager
def exclusive(target: str | os.PathLike, what: str) -> Iterator[None]:
    """Only one writer of ``target`` at a time: a second ``what`` started on the same output while the
    first runs is one FileExistsError, not a clash half-way (an advisory lock beside ``target``)."""
    import fcntl

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.lock"
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FileExistsError(f"another {what} is writing {target}; wait for it to finish or choose another "
                                  "output folder") from None
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)
