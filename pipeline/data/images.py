"""Images at the edges of vqgpt: PIL images in, PIL images out, model tensors in between.

Every data source, ``complete --image`` and the sample writers prepare images here, so an image
is read the same way wherever it enters: its EXIF orientation applied (a phone photo stored
sideways with an orientation tag stands upright), 16/32-bit grey scaled to 8 bits, transparency
composited on white, ``channels=1`` → "L" and ``channels=3`` → "RGB", the shorter side resized
(bicubic, antialiased) and centre-cropped. Inside, images are FloatTensor[C, H, W] in [-1, 1].
"""

from __future__ import annotations

import collections
import functools
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from .png import plain_png_pixels

__all__ = ["to_mode", "upright", "resize_center_crop", "pil_to_pixels", "pil_to_model", "to_model", "decode_image",
           "read_pixels", "read_pixels_at", "read_pixels_many", "resize_together",
           "check_decodes", "check_many", "to_uint8", "to_pil", "from_pil", "fit_image", "load_image_file"]


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL image to "RGB" (channels=3) or "L" (channels=1); transparency is
    composited on white, 16/32-bit grey is scaled to 8 bits."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.float32) / 257.0
        img = Image.fromarray(np.clip(arr.round(), 0, 255).astype(np.uint8), mode="L")
    elif img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        if arr.max(initial=0) > 255:  # 16-bit values stored as 32-bit
            arr = arr / 257.0
        img = Image.fromarray(np.clip(arr.round(), 0, 255).astype(np.uint8), mode="L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    target = "RGB" if channels == 3 else "L"
    return img if img.mode == target else img.convert(target)


def _resized_shape(w: int, h: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``size`` and the aspect kept (``resize_center_crop``)."""
    scale = size / min(w, h)
    return max(size, round(w * scale)), max(size, round(h * scale))


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (bicubic, antialiased), then center-crop
    to ``size × size``."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    nw, nh = _resized_shape(w, h, size)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    if (nw, nh) == (size, size):
        return img
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def pil_to_pixels(img: Image.Image) -> torch.Tensor:
    """An 8-bit "L" or "RGB" PIL image → ByteTensor[C, H, W] (torchvision's ``pil_to_tensor``: the
    same tensor, a view of one copy of the pixels, without its per-call checks: ~10 µs less an image)."""
    pixels = torch.from_numpy(np.array(img))  # (H, W) or (H, W, C)
    return pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)


def pil_to_model(img: Image.Image) -> torch.Tensor:
    """An 8-bit "L" or "RGB" PIL image → FloatTensor[C, H, W] in [-1, 1]."""
    return to_model(pil_to_pixels(img)).contiguous()  # (C, H, W)


def to_model(pixels: torch.Tensor) -> torch.Tensor:
    """ByteTensor[..., C, H, W] in 0..255 → FloatTensor in [-1, 1] (x / 127.5 - 1, the same numbers
    for one image or a batch); a float tensor is already in [-1, 1] and is returned as it is."""
    if pixels.dtype != torch.uint8:
        return pixels
    return pixels.float().div_(127.5).sub_(1.0)


def _open(data: str | Path | bytes) -> Image.Image:
    """Open without Pillow's decompression-bomb *warning* (images up to twice its pixel limit are read
    like any other; beyond that Pillow refuses, and the file is skipped and counted as unreadable)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation tag says (phones store photos sideways and tag them);
    an image without the tag comes back as it is."""
    return ImageOps.exif_transpose(img)


def _file_bytes(data: str | Path | bytes) -> bytes:
    """A file's bytes, read whole (Pillow then parses memory: ~10 µs less a small PNG); bytes as they are."""
    if isinstance(data, (bytes, bytearray)):
        return data
    with open(data, "rb") as f:
        return f.read()


def decode_image(data: str | Path | bytes, channels: int, min_size: int) -> Image.Image:
    """Decode fully and turn upright (EXIF orientation); JPEGs are DCT-scaled to the smallest size
    whose shorter side is still ≥ ``min_size`` (a large speed-up for big photos, no visible loss).

    This runs once per image of every data source, so it avoids what costs without changing a pixel:
    a file is read whole first (``_file_bytes``), and the image, its own, is turned in place (``upright`` copies even an image with nothing to turn)."""
    data = _file_bytes(data)
    with _open(data) as img:
        img.draft("RGB" if channels == 3 else "L", (min_size, min_size))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        return to_mode(img, channels)


def read_pixels(data: str | Path | bytes, channels: int, size: int) -> torch.Tensor:
    """An image file or its bytes → ByteTensor[C, size, size]: decoded, upright, in its mode, shorter
    side resized and centre-cropped (what every file-based source's ``pixels_at`` gives)."""
    return read_pixels_at(data, channels, (size,))[0]


def read_pixels_at(data: str | Path | bytes, channels: int, sizes: Sequence[int]) -> list[torch.Tensor]:
    """``read_pixels`` at each of ``sizes``, the file read once and decoded once — but a JPEG, whose
    DCT scaling depends on the size asked, is decoded at each size, so every size gets exactly what
    a read at that size alone gives (the other formats decode alike whatever the size). A plain PNG
    is decoded by libspng (``png.plain_png_pixels``: the same pixels, faster), any other by Pillow."""
    data = _file_bytes(data)
    pixels = plain_png_pixels(data, channels)
    if pixels is not None:
        return [_array_pixels(pixels, size) for size in sizes]
    return _read_with_pillow(data, channels, sizes)


def _read_with_pillow(data: bytes, channels: int, sizes: Sequence[int]) -> list[torch.Tensor]:
    if len(sizes) > 1 and data[:3] == b"\xff\xd8\xff":  # a JPEG: decoded at each size
        return [_read_with_pillow(data, channels, (size,))[0] for size in sizes]
    img = decode_image(data, channels, max(sizes))
    return [pil_to_pixels(resize_center_crop(img, size)) for size in sizes]


_RESIZE_TOGETHER_PIXELS = 256 * 256  # larger images are resized one by one (their stack would be big)


def read_pixels_many(files: Sequence[str | Path | bytes], channels: int,
                     sizes: Sequence[int]) -> list[list[torch.Tensor] | Exception]:
    """``read_pixels_at`` for each of ``files``: its pixels at each of ``sizes``, or the exception
    reading it raised. The same pixels, with less work per image: plain PNGs (``png.plain_png_pixels``)
    of one shape are resized together, two Pillow calls for the whole group (``resize_together``)
    instead of a PIL image and a resize for each, which costs more than decoding a small one."""
    out: list[list[torch.Tensor] | Exception | None] = [None] * len(files)
    groups: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
    for k, data in enumerate(files):
        try:
            data = _file_bytes(data)
            pixels = plain_png_pixels(data, channels)
            if pixels is None:
                out[k] = _read_with_pillow(data, channels, sizes)
            elif pixels.shape[0] * pixels.shape[1] > _RESIZE_TOGETHER_PIXELS:  # decoding outweighs the rest
                out[k] = [_array_pixels(pixels, size) for size in sizes]
            else:
                groups.setdefault(pixels.shape, []).append((k, pixels))
        except Exception as err:  # noqa: BLE001  (handed back: the caller counts the file as unreadable)
            out[k] = err
    for members in groups.values():
        if len(members) == 1:
            k, pixels = members[0]
            out[k] = [_array_pixels(pixels, size) for size in sizes]
            continue
        together = [resize_together([p for _, p in members], size) for size in sizes]  # each (N, C, S, S)
        for j, (k, _) in enumerate(members):
            out[k] = [t[j] for t in together]
    return out  # type: ignore[return-value]


def resize_together(arrays: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """uint8 ndarrays of one shape, (H, W) or (H, W, 3) → ByteTensor[N, C, size, size], each exactly
    ``resize_center_crop`` of it (Pillow's bicubic). Pillow resamples in two separable passes, each
    rounded to 8 bits; a pass along one axis never mixes pixels across the other, so the images
    stacked one above the other are resized across in one call, and side by side down in another.
    Which pass Pillow runs first depends on the shapes (and the Pillow version): ``_pass_order``
    asks Pillow once per shape, on a random probe; where neither order gives Pillow's pixels, each
    image is resized alone."""
    stack = np.stack(arrays)  # (N, H, W) or (N, H, W, 3)
    n, h, w = stack.shape[:3]
    nw, nh = _resized_shape(w, h, size)
    order = _pass_order(h, w, nh, nw, stack.shape[3:])
    if order is None:
        return torch.stack([_array_pixels(a, size) for a in arrays])
    for axis in order:
        if axis == "h" and nw != w:  # across: images one above the other, (N·H, W) → (N·H, nw)
            stack = _pillow_resize(stack.reshape(n * h, w, *stack.shape[3:]), nw, n * h).reshape(n, h, nw, *stack.shape[3:])
            w = nw
        elif axis == "v" and nh != h:  # down: images side by side, (H, N·W) → (nh, N·W)
            wide = stack.swapaxes(0, 1).reshape(h, n * w, *stack.shape[3:])
            stack = _pillow_resize(wide, n * w, nh).reshape(nh, n, w, *stack.shape[3:]).swapaxes(0, 1)
            h = nh
    top, left = (nh - size) // 2, (nw - size) // 2
    out = torch.from_numpy(np.ascontiguousarray(stack[:, top:top + size, left:left + size]))
    return out[:, None] if out.ndim == 3 else out.permute(0, 3, 1, 2)


def _pillow_resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BICUBIC))


@functools.lru_cache(maxsize=4096)
def _pass_order(h: int, w: int, nh: int, nw: int, bands: tuple[int, ...]) -> str | None:
    """"hv" or "vh": the order of the passes in which Pillow's own resize of an (h, w) image to
    (nh, nw) gives its pixels, found on a random probe of that shape; None if neither does."""
    if nh == h or nw == w:
        return "hv"  # one pass, or none: no order to match
    probe = np.random.default_rng(h * 100003 + w).integers(0, 256, (h, w, *bands), dtype=np.uint8)
    want = _pillow_resize(probe, nw, nh)
    across, down = _pillow_resize(probe, nw, h), _pillow_resize(probe, w, nh)
    if np.array_equal(_pillow_resize(across, nw, nh), want):
        return "hv"
    if np.array_equal(_pillow_resize(down, nw, nh), want):
        return "vh"
    return None


def _array_pixels(pixels: np.ndarray, size: int) -> torch.Tensor:
    """uint8 ndarray (H, W) or (H, W, C) → ByteTensor[C, size, size], resized and cropped as
    ``resize_center_crop`` does (by Pillow, unless it already has that size)."""
    if pixels.shape[:2] != (size, size):
        return pil_to_pixels(resize_center_crop(Image.fromarray(pixels), size))
    out = torch.from_numpy(pixels)
    return out[None] if out.ndim == 2 else out.permute(2, 0, 1)


def check_decodes(data: str | Path | bytes) -> str | None:
    """None when the file decodes, else a short reason. JPEGs are decoded at 1/8 scale,
    which still reads (and checks) the whole entropy-coded stream."""
    try:
        with _open(data) as img:
            img.draft(None, (1, 1))
            img.load()
        return None
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
        return f"{type(err).__name__}: {err}".splitlines()[0][:200]


def check_many(items: Sequence[Any], check: Callable[[Any], str | None]) -> list[str | None]:
    """Run ``check`` over ``items`` in a few threads (PIL decodes without the GIL), in order.

    At most ``64 × threads`` checks are queued at a time: ``Executor.map`` would submit one Future
    (about 1.8 KB with its lock and condition) per item up front — 37 MiB of peak memory for a
    folder of 20,000 images, 1.8 GiB for a million."""
    if len(items) < 64:
        return [check(x) for x in items]
    workers = min(8, os.cpu_count() or 1)
    ahead = 64 * workers
    reasons: list[str | None] = []
    pending: collections.deque = collections.deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for item in items:
            if len(pending) >= ahead:
                reasons.append(pending.popleft().result())
            pending.append(pool.submit(check, item))
        reasons += (future.result() for future in pending)
    return reasons


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """FloatTensor[B, C, H, W] in [-1, 1] → ByteTensor[B, C, H, W] in 0..255 (rounded), the
    8-bit image a PNG would hold. Samples, reconstructions and real images are quantised here
    alike (saved files and the FID protocol both go through it). float64 images are rounded in float64."""
    images = images if images.dtype == torch.float64 else images.float()
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """FloatTensor[B, C, H, W] in [-1, 1] → PIL images (mode L for 1 channel, RGB for 3)."""
    arr = to_uint8(images).cpu()  # (B, C, H, W)
    out = []
    for img in arr:
        if img.shape[0] == 1:
            out.append(Image.fromarray(img[0].numpy()))  # uint8 (H, W) → mode L
        else:
            out.append(Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()))  # uint8 (H, W, 3) → RGB
    return out


def from_pil(images: Sequence[Image.Image]) -> torch.Tensor:
    """8-bit "L"/"RGB" PIL images of one size → FloatTensor[B, C, H, W] in [-1, 1]."""
    return torch.stack([pil_to_model(img) for img in images])


def fit_image(img: Image.Image, image_size: int, channels: int) -> Image.Image:
    """Prepare an image exactly as the data sources do: upright (EXIF orientation), mode (16-bit
    grey scaled, alpha on white), shorter side resized to ``image_size``, centre crop."""
    return resize_center_crop(to_mode(upright(img), channels), image_size)


def load_image_file(path: str | Path, image_size: int, channels: int) -> Image.Image:
    """Open one image for ``complete`` and prepare it like the training data."""
    from PIL import UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give one image file")
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with _open(path) as im:
            im.load()
            img = im.copy()  # turned upright by fit_image
    except Image.DecompressionBombError:
        raise ValueError(f"{path} is too large to decode safely (over {2 * Image.MAX_IMAGE_PIXELS:,} pixels, "
                         "PIL's decompression-bomb limit)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path} is not an image this tool can read ({err.__class__.__name__})") from None
    return fit_image(img, image_size, channels)
