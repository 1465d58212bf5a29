"""Will it fit? A request that cannot fit in memory is refused with what it would need, before
anything is allocated (a tokenizer config edited to absurd sizes, ``--set model.hidden_size=1000000``,
``sample --num 100000000000``), instead of failing deep inside an allocation. Imports no stage."""

from __future__ import annotations

import torch

__all__ = ["available_bytes", "require_memory", "format_bytes"]


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
