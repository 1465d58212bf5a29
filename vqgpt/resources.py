"""Memory. Will it fit? A request that cannot fit in memory is refused with what it would need, before
anything is allocated (a tokenizer config edited to absurd sizes, ``--set model.hidden_size=1000000``,
``sample --num 100000000000``), instead of failing deep inside an allocation. And how the process
keeps the memory it frees (``keep_freed_memory``). Imports no stage."""

from __future__ import annotations

import ctypes
import os

import torch

__all__ = ["available_bytes", "require_memory", "format_bytes", "keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters (malloc.h)
_KEPT: bool | None = None


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a freed tensor held instead of handing it back to the
    kernel, so the next tensor of that size does not fault its pages in again (``mallopt``: blocks
    up to 64 MiB from the heap — glibc's own threshold never passes 32 MiB —, up to 256 MiB of free
    heap kept, 64 MiB more taken per growth).
    On the CPU every layer allocates and frees activations of a few MiB; with glibc's defaults
    most of those go back to the kernel at once, and here a third of a tokenizer's encoding time
    was the kernel zeroing pages (sys time 2.5 s against 5.7 s of user time for 6,400 images;
    with this, 0.05 s and 68-104 % more images per second in scripts/bench_tokenize.py, the same codes). Peak memory does not
    change; an idle process may keep up to 256 MiB it no longer uses. The ``vqgpt`` command calls
    it once at start (DataLoader workers inherit it); in Python, call it yourself. Does nothing
    (False) off glibc, when ``MALLOC_TRIM_THRESHOLD_``/``MALLOC_MMAP_THRESHOLD_`` are set (the
    user's choice wins) or when ``VQGPT_MALLOC=default``."""
    global _KEPT
    if _KEPT is not None:
        return _KEPT
    _KEPT = False
    if os.environ.get("VQGPT_MALLOC", "").lower() == "default" or any(
            os.environ.get(var) for var in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        libc = ctypes.CDLL(None)  # the C library this process already uses
        _KEPT = all(libc.mallopt(param, value) == 1 for param, value in (
            (_M_MMAP_THRESHOLD, 64 << 20), (_M_TRIM_THRESHOLD, 256 << 20), (_M_TOP_PAD, 64 << 20)))
    except (ValueError, OSError, AttributeError):  # not glibc, or no mallopt: leave the allocator alone
        _KEPT = False
    return _KEPT


def available_bytes(device: str | torch.device = "cpu") -> int:
    """Memory free for new tensors on ``device``: the GPU's free memory, else the host's available RAM."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil  # an accelerate dependency

    return int(psutil.virtual_memory().available)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def require_memory(needed: float, what: str, device: str | torch.device = "cpu") -> None:
    """A one-line ValueError when ``needed`` bytes for ``what`` exceed the memory ``device`` has free."""
    free = available_bytes(device)
    if needed > free:
        raise ValueError(f"{what} would need about {format_bytes(needed)}, but {torch.device(device).type} memory "
                         f"has {format_bytes(free)} free; use smaller settings")
