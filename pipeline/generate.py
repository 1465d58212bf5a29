"""The two stages chained: sample code grids from the prior, decode them into images.

``Pipeline`` holds a tokenizer and the prior trained on its codes; ``pipe(num_images, ...)``
returns PIL images, ``pipe.complete(image, keep_rows, ...)`` continues an image's top code rows.
What the ``sample``/``complete`` verbs write to disk lives in ``outputs.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from vqgpt import prior as pr
from vqgpt import tokenizer as tk

from .images import fit_image, from_pil, load_image_file, to_pil
from .settings import SampleConfig

__all__ = ["Pipeline"]


class Pipeline:
    """A tokenizer and a prior trained on its codes, checked to belong together.

    >>> pipe = Pipeline.from_pretrained("demo-run")
    >>> images = pipe(8, class_labels=3, guidance_scale=2.0, seed=0)

    Randomness: with ``seed=S`` the k-th image of class c is a function of (S, c, k) alone — the
    same whatever the number of images, the batch size or the other classes drawn with it (this
    is what ``vqgpt sample --seed`` does). With ``generator=`` one seed per image is drawn from it
    in order, so the same generator state gives the same images (diffusers' convention).
    ``sampler`` ("auto", "ar", "jacobi", "sjd") only changes the speed, except "sjd" (other
    images for a seed, from the same distribution); see :func:`vqgpt.prior.sample`. ``precision``
    ("auto": bf16 on a GPU, fp32 on a CPU; "fp32"; "bf16") is the number format of the passes.
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

    def sampling_defaults(self, conditional: bool) -> tuple[float, float]:
        """(guidance, temperature) used when none are given: for class-conditional draws, what
        `train-prior` chose on held-out data and recorded in the prior's folder; otherwise (and for
        priors without a record) plain sampling, 1 and 1."""
        recorded = self.spec.sampling or {}
        if conditional and recorded:
            return float(recorded["guidance"]), float(recorded["temperature"])
        return 1.0, 1.0

    def resolve(self, settings: SampleConfig) -> SampleConfig:
        """``settings`` with the prior's defaults filled in where guidance/temperature are None."""
        guidance, temperature = self.sampling_defaults(bool(settings.class_labels))
        return dataclasses.replace(settings, guidance=guidance if settings.guidance is None else settings.guidance,
                                   temperature=temperature if settings.temperature is None else settings.temperature)

    @torch.inference_mode()
    def sample_codes(
        self,
        num_images: int,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        prefix_codes: torch.Tensor | None = None,
        batch_size: int = 64,
        *,
        seed: int | None = None,
        sampler: str = "auto",
        precision: str = "auto",
    ) -> torch.Tensor:
        """Draw code grids: LongTensor[num_images, h, w]. Guidance and temperature default to the
        prior's recorded choice (``sampling_defaults``)."""
        guidance, temp = self.sampling_defaults(class_labels is not None)
        guidance_scale = guidance if guidance_scale is None else guidance_scale
        temperature = temp if temperature is None else temperature
        labels = self._labels_tensor(num_images, class_labels)
        if seed is not None and generator is not None:
            raise ValueError("give a seed or a generator, not both")
        seeds = None if seed is None else pr.image_seeds(seed, labels, num_images)
        return pr.sample(
            self.prior, self.spec, num_images,
            class_labels=labels,
            guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p,
            generator=generator, prefix_codes=prefix_codes, batch_size=batch_size, seeds=seeds, sampler=sampler,
            precision=precision,
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
        guidance_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 64,
        *,
        seed: int | None = None,
        sampler: str = "auto",
        precision: str = "auto",
    ) -> list[Image.Image]:
        """Generate ``num_images`` images (class-conditional when ``class_labels`` is given:
        one label for all, or one per image)."""
        codes = self.sample_codes(num_images, class_labels, guidance_scale, temperature, top_k, top_p,
                                  generator=generator, batch_size=batch_size, seed=seed, sampler=sampler,
                                  precision=precision)
        return to_pil(self.decode(codes, batch_size))

    def generate(self, settings: SampleConfig) -> list[Image.Image]:
        """Images for a :class:`SampleConfig` (``num`` per class, class by class)."""
        settings = self.resolve(settings)
        labels = settings.labels_per_image
        total = len(labels) if labels else settings.num
        return self(total, labels, settings.guidance, settings.temperature, settings.top_k, settings.top_p,
                    batch_size=settings.batch_size, seed=settings.seed, sampler=settings.sampler,
                    precision=settings.precision)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    @torch.inference_mode()
    def complete(
        self,
        image: Image.Image | str | Path,
        keep_rows: int,
        num_images: int,
        class_label: int | None = None,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 64,
        *,
        seed: int | None = None,
        sampler: str = "auto",
        precision: str = "auto",
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
            generator=generator, prefix_codes=prefix, batch_size=batch_size, seed=seed, sampler=sampler,
            precision=precision,
        )
        return codes.cpu(), completions.cpu()
