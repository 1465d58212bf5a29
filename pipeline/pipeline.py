"""The two stages chained: sample code grids from the prior, decode them into images."""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision.utils import make_grid, save_image

import prior as pr
import tokenizer as tk

from .data import pil_to_model, resize_center_crop, to_mode
from .tokenize import read_token_meta

__all__ = ["Pipeline", "SampleConfig", "write_samples", "sample_grid_writer", "to_pil", "fit_image", "load_image_file", "prepare_out"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleConfig:
    """Settings of one sampling call; the CLI's ``sample``/``complete`` flags are these fields."""

    num: int = field(default=16, metadata={"help": "images to draw (per class when classes are given)"})
    class_labels: tuple[int, ...] = ()  # class indices; empty = unconditional
    guidance: float = field(default=1.0, metadata={"help": "classifier-free guidance scale (1 = none)"})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature (> 0)"})
    top_k: int | None = field(default=None, metadata={"help": "keep the K most likely codes"})
    top_p: float | None = field(default=None, metadata={"help": "nucleus sampling: keep codes up to mass P"})
    seed: int = field(default=0, metadata={"help": "random seed; the same seed gives the same images"})
    batch_size: int = field(default=64, metadata={"help": "images sampled per forward batch"})

    def __post_init__(self) -> None:
        if self.num < 1:
            raise ValueError(f"--num must be at least 1, got {self.num}")
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"--top-k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.guidance < 0:
            raise ValueError(f"--guidance must be >= 0, got {self.guidance}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")

    @property
    def labels_per_image(self) -> list[int] | None:
        """One label per image: ``num`` images of each class, class by class."""
        if not self.class_labels:
            return None
        return [c for c in self.class_labels for _ in range(self.num)]


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """FloatTensor[B, C, H, W] in [-1, 1] → PIL images (mode L for 1 channel, RGB for 3)."""
    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()  # (B, C, H, W)
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
    """Prepare an image exactly as the data sources do: mode (16-bit grey scaled, alpha on
    white), shorter side resized to ``image_size``, centre crop."""
    return resize_center_crop(to_mode(img, channels), image_size)


def load_image_file(path: str | Path, image_size: int, channels: int) -> Image.Image:
    """Open one image for ``complete`` and prepare it like the training data."""
    from PIL import UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            img = im.copy()
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path} is not an image this tool can read ({err.__class__.__name__})") from None
    return fit_image(img, image_size, channels)


def _safe_name(text: str) -> str:
    """A class name as a file-name part ("T-shirt / top" → "T-shirt_top")."""
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "class"


RESULT_FILES = ("sample_*.png", "completion_*.png", "grid.png", "settings.json")  # what sample/complete write


def prepare_out(out: str | Path, overwrite: bool = False, patterns: tuple[str, ...] = RESULT_FILES) -> Path:
    """Make the output folder; refuse one that already holds results unless ``overwrite``
    (then those results — and only files named like them — are removed, so no stale image
    is left beside new settings)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    old = [p for pattern in patterns for p in out.glob(pattern)] if out.is_dir() else []
    if old and not overwrite:
        raise FileExistsError(f"--out {out} already holds {len(old)} result file(s); pass --overwrite or choose another folder")
    for p in old:
        p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


class Pipeline:
    """A tokenizer and a prior trained on its codes, checked to belong together.

    >>> pipe = Pipeline.from_pretrained("demo-run")
    >>> images = pipe(8, class_labels=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    """

    def __init__(self, tokenizer: tk.VQGAN, prior_model: torch.nn.Module, prior_spec: pr.PriorSpec, device: str = "cpu"):
        grid = tuple(tokenizer.config.grid_size)
        fingerprint = tokenizer.fingerprint()  # hashes every weight: computed once
        if prior_spec.tokenizer_fingerprint and prior_spec.tokenizer_fingerprint != fingerprint:
            raise ValueError(
                f"the prior was trained on tokenizer {prior_spec.tokenizer_fingerprint}, "
                f"but this tokenizer is {fingerprint}; pair it with the tokenizer it was trained on"
            )
        if prior_spec.codebook_size != tokenizer.config.codebook_size:
            raise ValueError(
                f"codebook sizes differ: prior {prior_spec.codebook_size}, tokenizer {tokenizer.config.codebook_size}"
            )
        if tuple(prior_spec.grid) != grid:
            raise ValueError(f"grids differ: prior {tuple(prior_spec.grid)}, tokenizer {grid}")
        self.tokenizer = tokenizer.to(device).eval()
        self.tokenizer_fingerprint = fingerprint
        self.prior = prior_model.to(device).eval()
        self.spec = prior_spec
        self.device = device

    @classmethod
    def from_pretrained(cls, run_or_tokenizer: str | Path, prior_dir: str | Path | None = None, device: str = "cpu") -> "Pipeline":
        """Load from a run folder (``tokenizer/`` and ``prior/`` inside) or from two folders."""
        if prior_dir is None:
            run = Path(run_or_tokenizer)
            if not run.is_dir():
                raise FileNotFoundError(f"run folder {run} does not exist")
            for stage, verb in (("tokenizer", "train-tokenizer"), ("prior", "train-prior")):
                if not (run / stage).is_dir():
                    raise FileNotFoundError(f"run folder {run} has no {stage}/ (run `vqgpt {verb}` or `vqgpt demo` first)")
            tokenizer_dir, prior_dir = run / "tokenizer", run / "prior"
        else:
            tokenizer_dir = Path(run_or_tokenizer)
        tokenizer = tk.VQGAN.from_pretrained(tokenizer_dir, device=device)
        model, spec = pr.load_prior(prior_dir, device=device)
        return cls(tokenizer, model, spec, device=device)

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    def resolve_classes(self, labels: Sequence[str | int] | None) -> tuple[int, ...]:
        """Class names or indices (as given on the command line) → class indices."""
        out = []
        for label in labels or []:
            text = str(label)
            if text in self.class_names:
                out.append(self.class_names.index(text))
            elif text.lstrip("-").isdigit() and 0 <= int(text) < self.spec.num_classes:
                out.append(int(text))
            elif self.spec.num_classes == 0:
                raise ValueError(f"this prior has no classes, so --class {text!r} cannot be used")
            else:
                names = ", ".join(self.class_names[:20]) + (" …" if len(self.class_names) > 20 else "")
                raise ValueError(f"unknown class {text!r}; classes are: {names} (or 0..{self.spec.num_classes - 1})")
        return tuple(out)

    def _labels_tensor(self, num_images: int, class_labels: int | Sequence[int] | torch.Tensor | None) -> torch.Tensor | None:
        if class_labels is None:
            return None
        labels = torch.as_tensor(class_labels, dtype=torch.long).flatten()
        if labels.numel() == 1:
            labels = labels.expand(num_images)
        if labels.numel() != num_images:
            raise ValueError(f"got {labels.numel()} class labels for {num_images} images")
        return labels.to(self.device)

    @torch.inference_mode()
    def sample_codes(
        self,
        num_images: int,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        prefix_codes: torch.Tensor | None = None,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """Draw code grids: LongTensor[num_images, h, w]."""
        return pr.sample(
            self.prior, self.spec, num_images,
            class_labels=self._labels_tensor(num_images, class_labels),
            guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p,
            generator=generator, prefix_codes=prefix_codes, batch_size=batch_size,
        )

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """LongTensor[B, h, w] → FloatTensor[B, C, H, W] in [-1, 1], decoded in batches."""
        parts = [self.tokenizer.decode(chunk.to(self.device)).float().cpu() for chunk in codes.split(batch_size)]
        return torch.cat(parts)

    def __call__(
        self,
        num_images: int,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 64,
    ) -> list[Image.Image]:
        """Generate ``num_images`` images (class-conditional when ``class_labels`` is given:
        one label for all, or one per image)."""
        codes = self.sample_codes(num_images, class_labels, guidance_scale, temperature, top_k, top_p,
                                  generator=generator, batch_size=batch_size)
        return to_pil(self.decode(codes, batch_size))

    def generate(self, settings: SampleConfig) -> list[Image.Image]:
        """Images for a :class:`SampleConfig` (``num`` per class, class by class)."""
        labels = settings.labels_per_image
        total = len(labels) if labels else settings.num
        return self(total, labels, settings.guidance, settings.temperature, settings.top_k, settings.top_p,
                    generator=self.generator(settings.seed), batch_size=settings.batch_size)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    @torch.inference_mode()
    def complete(
        self,
        image: Image.Image | str | Path,
        keep_rows: int,
        num_images: int,
        class_label: int | None = None,
        guidance_scale: float = 1.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 64,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the top ``keep_rows`` code rows of ``image`` and sample the rest.

        Returns (original image codes LongTensor[h, w], completions LongTensor[num_images, h, w]).
        """
        h, w = self.tokenizer.config.grid_size
        if not 0 <= keep_rows <= h:
            raise ValueError(f"--keep-rows must be between 0 and {h} (the code grid has {h} rows), got {keep_rows}")
        size, channels = self.tokenizer.config.image_size, self.tokenizer.config.channels
        if isinstance(image, Image.Image):
            image = fit_image(image, size, channels)
        else:
            image = load_image_file(image, size, channels)
        pixels = from_pil([image]).to(self.device)
        codes = self.tokenizer.encode(pixels)[0]  # (h, w)
        prefix = codes[:keep_rows].reshape(1, -1).expand(num_images, -1)  # (B, keep_rows * w)
        completions = self.sample_codes(
            num_images, class_label, guidance_scale, temperature, top_k, top_p,
            generator=generator, prefix_codes=prefix, batch_size=batch_size,
        )
        return codes.cpu(), completions.cpu()

    def complete_to_files(self, image_path: str | Path, keep_rows: int, settings: SampleConfig, out: str | Path,
                          overwrite: bool = False) -> dict[str, Path]:
        """``vqgpt complete``: write the completions, and a grid with the original first."""
        out = prepare_out(out, overwrite)
        label = settings.class_labels[0] if settings.class_labels else None
        image = load_image_file(image_path, self.tokenizer.config.image_size, self.tokenizer.config.channels)
        codes, completions = self.complete(
            image, keep_rows, settings.num, label, settings.guidance, settings.temperature, settings.top_k,
            settings.top_p, generator=self.generator(settings.seed), batch_size=settings.batch_size,
        )
        h, w = codes.shape
        original = from_pil([image])
        reconstruction = self.decode(codes[None])
        kept = reconstruction.clone()
        rows_px = keep_rows * self.tokenizer.config.image_size // h
        kept[:, :, rows_px:] = -1.0  # the part the prior sees, the rest blacked out
        decoded = self.decode(completions, settings.batch_size)
        images = to_pil(decoded)
        for i, img in enumerate(images):
            img.save(out / f"completion_{i:04d}.png")
        grid_path = out / "grid.png"
        tiles = torch.cat([original, reconstruction, kept, decoded])
        save_image(make_grid((tiles + 1) / 2, nrow=min(len(tiles), 8), padding=2, pad_value=1.0), grid_path)
        settings_path = self._write_settings(out, settings, {"image": str(image_path), "keep_rows": keep_rows,
                                                              "grid_layout": "original, reconstruction, kept rows, completions…"})
        return {"grid": grid_path, "settings": settings_path}

    def _write_settings(self, out: Path, settings: SampleConfig, extra: dict) -> Path:
        record = {
            **asdict(settings),
            "class_names": [self.class_names[c] for c in settings.class_labels] if settings.class_labels else [],
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "prior": self.spec.path,
            **extra,
        }
        path = out / "settings.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        return path


def write_samples(images: list[Image.Image], settings: SampleConfig, pipe: Pipeline, out: str | Path) -> dict[str, Path]:
    """``vqgpt sample``: one PNG per image, a grid (one row per class when classes are
    asked for) and ``settings.json`` with every setting and the seed. ``out`` should come
    from :func:`prepare_out`, called before sampling."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = settings.labels_per_image
    for i, img in enumerate(images):
        suffix = f"_class-{_safe_name(pipe.class_names[labels[i]])}" if labels else ""
        img.save(out / f"sample_{i:04d}{suffix}.png")
    tensor = from_pil(images)
    nrow = settings.num if labels else min(len(images), max(1, math.ceil(math.sqrt(len(images)))))
    grid_path = out / "grid.png"
    save_image(make_grid((tensor + 1) / 2, nrow=nrow, padding=2, pad_value=1.0), grid_path)
    settings_path = pipe._write_settings(out, settings, {"num_images": len(images)})
    return {"grid": grid_path, "settings": settings_path}


def sample_grid_writer(tokenizer_dir: str | Path, out_dir: str | Path, tokens_dir: str | Path | None = None,
                       device: str = "cpu") -> Callable[[torch.Tensor, int], None]:
    """A ``sample_callback`` for prior training: decode the sampled grids and write
    ``out_dir/step_XXXXXX.png`` (a square-ish grid)."""
    tokenizer = tk.VQGAN.from_pretrained(tokenizer_dir, device=device).eval()
    if tokens_dir is not None:
        made_by, fingerprint = read_token_meta(tokens_dir).get("tokenizer_fingerprint"), tokenizer.fingerprint()
        if made_by != fingerprint:
            raise ValueError(
                f"--tokenizer {tokenizer_dir} is not the tokenizer that made {tokens_dir} "
                f"(fingerprints {fingerprint} vs {made_by})"
            )
    out_dir = Path(out_dir)

    @torch.inference_mode()
    def write(codes: torch.Tensor, step: int) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        images = tokenizer.decode(codes.to(device)).float().cpu()
        nrow = max(1, math.ceil(math.sqrt(len(images))))
        save_image(make_grid((images + 1) / 2, nrow=nrow, padding=2, pad_value=1.0), out_dir / f"step_{step:06d}.png")

    return write
