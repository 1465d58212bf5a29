"""Atomic writes of files and folders: a reader (or a run killed part-way) sees the old version or
the complete new one, never a half-written one.

Every saved artefact goes through here: token datasets and priors (``write_folder``), training
checkpoints (``replace_dir``, ``discard_dir``), the tokenize manifest and shard markers
(``write_json``). Imports no stage: it knows files, not models.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["write_json", "write_text", "replace_dir", "discard_dir", "write_folder"]


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling file and one rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented JSON at ``path``, written atomically."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def replace_dir(new: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put the finished folder ``new`` at ``path``, replacing what is there: the old folder is moved
    aside first and removed last, so ``path`` is never half-written."""
    new, path = Path(new), Path(path)
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, path)


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
        yield tmp
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
