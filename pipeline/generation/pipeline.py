"""The two stages chained: sample code grids from the prior, decode them into images.

``Pipeline`` holds a tokenizer and the prior trained on its codes. One ``__call__`` draws images
(diffusers' manner: settings as keywords, a ``torch.Generator`` for reproducibility);
``complete`` continues the top code rows of a given image; ``compress`` / ``decompress`` use the
prior as an image codec (``vqgpt.pipeline.codec``). Sampling and completion take their sampling settings as a
:class:`SampleConfig` (or its fields as keywords), and both draw through ``sample_codes``, the one
path from settings and randomness to codes. What the ``sample``/``complete`` verbs write to disk
lives in ``files.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from PIL import Image

from vqgpt import prior as pr
from vqgpt import tokenizer as tk
from vqgpt.resources import require_memory

from ..codec import CodecModels, compress_images, decode_archive, decode_pixels, pixel_decoder
from ..data import fit_image, from_pil, load_image_file, to_pil
from ..settings import SampleConfig

__all__ = ["Pipeline", "OutputType"]

OutputType = Literal["pil", "pt", "codes"]  # PIL images, FloatTensor[B, C, H, W] in [-1, 1], LongTensor[B, h, w]


class Pipeline:
    """A tokenizer and a prior trained on its codes, checked to belong together.

    >>> pipe = Pipeline.from_pretrained("demo-run")
    >>> images = pipe(num=8, class_labels=(3,), guidance=2.0)              # 8 PIL images of class 3
    >>> codes = pipe(SampleConfig(num=4), output_type="codes")              # LongTensor[4, h, w]
    >>> more = pipe(num=8, generator=torch.Generator().manual_seed(1))

    Randomness has one path: an integer seed — ``SampleConfig.seed`` (``vqgpt sample --seed``), or
    one drawn from ``generator`` when one is given — from which every image gets its own seed, a
    function of (seed, class, k) alone. So the k-th image of class c is the same whatever the number
    of images, the batch size or the other classes drawn with it, and the same generator state
    gives the same images. ``sampler`` only changes the speed, except "sjd" (other images for a
    seed, from the same distribution); ``precision`` is the number format of the passes (see
    :func:`vqgpt.prior.sample`).
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

    # ------------------------------------------------------------------------------- settings

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    def resolve_classes(self, labels: Sequence[str | int] | None) -> tuple[int, ...]:
        """Class names or indices (as a user writes them) → class indices."""
        out = []
        for label in labels or []:
            text = str(label)
            if text in self.class_names:
                out.append(self.class_names.index(text))
            elif text.lstrip("-").isdigit() and 0 <= int(text) < self.spec.num_classes:
                out.append(int(text))
            elif self.spec.num_classes == 0:
                raise ValueError(f"this prior has no classes, so class {text!r} cannot be asked for")
            else:
                names = ", ".join(self.class_names[:20]) + (" …" if len(self.class_names) > 20 else "")
                raise ValueError(f"unknown class {text!r}; classes are: {names} (or 0..{self.spec.num_classes - 1})")
        return tuple(out)

    def resolve(self, settings: SampleConfig, conditional: bool | None = None) -> SampleConfig:
        """``settings`` with the prior's defaults where guidance/temperature are None: for
        class-conditional draws what `train-prior` chose on held-out data and recorded in the prior's
        folder; otherwise (and for priors without a record) plain sampling, 1 and 1."""
        conditional = bool(settings.class_labels) if conditional is None else conditional
        recorded = self.spec.sampling or {}
        guidance, temperature = ((float(recorded["guidance"]), float(recorded["temperature"]))
                                 if conditional and recorded else (1.0, 1.0))
        return dataclasses.replace(settings, guidance=guidance if settings.guidance is None else settings.guidance,
                                   temperature=temperature if settings.temperature is None else settings.temperature)

    @staticmethod
    def settings_from(settings: SampleConfig | None = None, **fields: Any) -> SampleConfig:
        """A :class:`SampleConfig` from a base one (default: all defaults) and field keywords."""
        settings = settings or SampleConfig()
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(SampleConfig)})
        if unknown:
            raise ValueError(f"unknown sampling setting(s) {', '.join(unknown)}; the settings are "
                             f"{', '.join(f.name for f in dataclasses.fields(SampleConfig))}")
        if "class_labels" in fields and fields["class_labels"] is not None:
            labels = fields["class_labels"]
            fields["class_labels"] = (int(labels),) if isinstance(labels, int) else tuple(int(c) for c in labels)
        return dataclasses.replace(settings, **fields) if fields else settings

    # ------------------------------------------------------------------------------- sampling

    @torch.inference_mode()
    def sample_codes(self, settings: SampleConfig, *, labels: torch.Tensor | Sequence[int] | None = None,
                     prefix_codes: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """The one sampling path: code grids LongTensor[B, h, w] for ``settings``.

        B is ``settings.num`` per class of ``settings.class_labels`` (class by class), or ``num``
        unconditional grids; ``labels`` (one class index per image, -1 = none) replaces that
        layout. ``prefix_codes`` LongTensor[B, n] (or [n]) are the first raster codes, kept.
        The seed is ``settings.seed``, or one drawn from ``generator`` when given."""
        if labels is not None:
            label_tensor = torch.as_tensor(labels, dtype=torch.long).flatten()
            num = label_tensor.numel()
        else:
            per_image = settings.labels_per_image
            label_tensor = torch.tensor(per_image, dtype=torch.long) if per_image else None
            num = len(per_image) if per_image else settings.num
        # the grids themselves, and the images decoded from them
        c, side = self.tokenizer.config.channels, self.tokenizer.config.image_size
        require_memory(num * (8 * self.spec.num_codes + 4 * c * side * side), f"{num:,} images", "cpu")
        settings = self.resolve(settings, conditional=label_tensor is not None)
        seed = settings.seed if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))
        return pr.sample(
            self.prior, self.spec, num,
            class_labels=None if label_tensor is None else label_tensor.to(self.device),
            guidance_scale=settings.guidance, temperature=settings.temperature, top_k=settings.top_k,
            top_p=settings.top_p, prefix_codes=prefix_codes, batch_size=settings.batch_size,
            seeds=pr.image_seeds(seed, label_tensor, num), sampler=settings.sampler, precision=settings.precision,
        )

    @torch.inference_mode()
    def encode(self, image: Image.Image | str | Path) -> torch.Tensor:
        """One image (PIL, or a file), prepared exactly like the training data → its codes LongTensor[h, w]."""
        return self.tokenizer.encode(self._prepare([image]).to(self.device))[0].cpu()  # (h, w)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """LongTensor[B, h, w] → FloatTensor[B, C, H, W] in [-1, 1], decoded in batches."""
        parts = [self.tokenizer.decode(chunk.to(self.device)).float().cpu() for chunk in codes.split(batch_size)]
        return torch.cat(parts)

    def _output(self, codes: torch.Tensor, output_type: OutputType, batch_size: int = 64,
                decoder: tuple[tk.VQGAN, torch.device] | None = None):
        """Codes as asked for; ``decoder``: decode the pixels with ``codec.decode_pixels`` (fixed pass shape)."""
        if output_type == "codes":
            return codes
        if output_type not in ("pil", "pt"):
            raise ValueError(f"output_type must be 'pil', 'pt' or 'codes', got {output_type!r}")
        images = self.decode(codes, batch_size) if decoder is None else decode_pixels(codes, decoder)
        if output_type == "pil":
            return to_pil(images)
        # an exact (float64) decode stays float64: to_uint8 of it is then the PNG to the last level, where a
        # float32 copy can land on the other side of a rounding boundary (seen on an AMD EPYC machine)
        return images if images.dtype == torch.float64 else images.float()

    def __call__(self, settings: SampleConfig | None = None, *, generator: torch.Generator | None = None,
                 output_type: OutputType = "pil", **fields: Any):
        """Draw images: ``settings.num`` of each class in ``settings.class_labels`` (class by class), or
        ``num`` unconditional ones. ``fields`` are :class:`SampleConfig` fields replacing those of
        ``settings`` (``num=8, class_labels=(3,), guidance=2.0, temperature=0.7, seed=1, …``).
        Returns PIL images (``output_type="pil"``), FloatTensor[B, C, H, W] in [-1, 1] ("pt") or the
        codes LongTensor[B, h, w] ("codes")."""
        settings = self.settings_from(settings, **fields)
        return self._output(self.sample_codes(settings, generator=generator), output_type, settings.batch_size)

    def complete(self, image: Image.Image | str | Path | torch.Tensor, keep_rows: int, settings: SampleConfig | None = None,
                 *, generator: torch.Generator | None = None, output_type: OutputType = "pil", **fields: Any):
        """Keep the top ``keep_rows`` code rows of ``image`` (a PIL image, a file, or its codes
        LongTensor[h, w] from ``encode``) and let the prior draw the rest, ``num`` times (conditioned
        on the first of ``class_labels``, if any). Returns the completions as ``__call__`` does."""
        settings = self.settings_from(settings, **fields)
        h, _ = self.tokenizer.config.grid_size
        if not 0 <= keep_rows <= h:
            raise ValueError(f"`keep_rows` must be between 0 and {h} (the code grid has {h} rows), got {keep_rows}")
        if len(settings.class_labels) > 1:
            raise ValueError("a completion takes at most one class")
        codes = image if isinstance(image, torch.Tensor) else self.encode(image)  # (h, w)
        prefix = codes[:keep_rows].reshape(1, -1).expand(settings.num, -1).to(self.device)  # (B, keep_rows * w)
        labels = [settings.class_labels[0]] * settings.num if settings.class_labels else None
        completions = self.sample_codes(settings, labels=labels, prefix_codes=prefix, generator=generator)
        return self._output(completions, output_type, settings.batch_size)

    # ------------------------------------------------------------------------------- codec

    def codec_models(self) -> CodecModels:
        """The tokenizer and prior with their fingerprints, as an archive records them (hashed once)."""
        if getattr(self, "_codec_models", None) is None:
            self._codec_models = CodecModels(self.tokenizer, self.prior, self.spec, self.tokenizer_fingerprint,
                                             pr.prior_fingerprint(self.prior, self.spec), self.device)
        return self._codec_models

    def _prepare(self, images: Sequence[Image.Image | str | Path] | torch.Tensor) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            return images
        size, channels = self.tokenizer.config.image_size, self.tokenizer.config.channels
        return from_pil([fit_image(im, size, channels) if isinstance(im, Image.Image) else load_image_file(im, size, channels)
                         for im in images])

    def compress(self, images: Sequence[Image.Image | str | Path] | torch.Tensor,
                 class_labels: Sequence[int | str] | None = None, names: Sequence[str] = (),
                 rate_weight: float = 0.0) -> bytes:
        """Images (PIL, files, or FloatTensor[N, C, S, S] in [-1, 1]) → one archive (bytes): their codes,
        range-coded under the prior, each under its class (names or indices; None: the "no class" token).
        ``rate_weight`` λ > 0 trades quality for size: each code minimises its squared distance to the
        encoder's vector + λ × its bits (0: the tokenizer's own codes)."""
        labels = None if class_labels is None else [c if isinstance(c, int) and c < 0 else self.resolve_classes([c])[0]
                                                    for c in class_labels]
        data, _ = compress_images(self.codec_models(), self._prepare(images), labels, names, rate_weight=rate_weight)
        return data

    def decompress(self, data: bytes, indices: Sequence[int] | None = None,
                   output_type: Literal["pil", "pt", "codes"] = "pil", exact_pixels: bool = False):
        """An archive from ``compress`` → its images (``indices``: only those), as ``__call__`` returns them.
        A damaged or truncated image is a ValueError naming the first one (``decode_archive`` gives the rest).
        An image's pixels do not depend on which others are asked for; ``exact_pixels``: the tokenizer
        decodes in float64, so they are the same on any machine too (``codec.pixel_decoder``), and
        ``output_type="pt"`` returns them as float64 (``to_uint8`` of them gives the PNGs' values)."""
        models = self.codec_models()
        decoded = decode_archive(data, models, indices)
        if decoded.errors:
            raise ValueError(decoded.first_error("the archive"))
        decoder = None if output_type == "codes" else pixel_decoder(models, exact_pixels)
        return self._output(decoded.grids, output_type, decoder=decoder)
