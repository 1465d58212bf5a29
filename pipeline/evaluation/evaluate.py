"""``vqgpt evaluate``: the figures of a tokenizer and a prior, under one protocol.

- tokenizer (``evaluate_tokenizer``): PSNR, SSIM, LPIPS (when VGG16 weights are given), codebook
  usage and perplexity, rFID (reconstructions against the same real images) and a pixel-space
  Fréchet distance for small images, on a split of a data source;
- prior (``evaluate_prior``): held-out bits per code on the token dataset, gFID of decoded
  samples against the real images of a split, the codes the samples use, per-class figures for
  class-conditional priors, and for digits runs the independent classifier check.

``evaluate`` resolves folders, the split and the weights and returns one report: the figures,
the FID protocol and the machine (schema and table in ``report.py``). FID is computed as
``fid.py`` pins it; without the Inception weights file the FID fields say why they are absent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset, Subset

from vqgpt import prior as pr
from vqgpt import tokenizer as tk

from ..data import held_out_split, load_images
from ..generation import Pipeline
from ..settings import SampleConfig
from . import fid
from .report import SCHEMA, machine_info, protocol_line

__all__ = ["EVAL_TARGETS", "Evaluator", "Images", "evaluate", "evaluate_tokenizer", "evaluate_prior",
           "prior_bits_per_code"]

logger = logging.getLogger(__name__)

EVAL_TARGETS = ("tokenizer", "prior", "all")


class Images(Dataset):
    """The real images of one split (optionally a seeded subset of them), with what identifies
    them: data spec, split, seed, validation fraction."""

    def __init__(self, source: Any, split: str, seed: int, val_fraction: float | None,
                 limit: int | None = None, subset_seed: int = 0) -> None:
        self.source, self.split, self.seed, self.val_fraction = source, split, seed, val_fraction
        self.indices = list(range(len(source)))
        if limit is not None and limit < len(source):  # a seeded subset, not the first N (classes are sorted)
            perm = torch.randperm(len(source), generator=torch.Generator().manual_seed(subset_seed))
            self.indices = sorted(perm[:limit].tolist())

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.source[self.indices[i]]

    def label_of(self, i: int) -> int:
        return self.source.label_of(self.indices[i])

    def describe(self) -> dict[str, Any]:
        return {"data": self.source.spec, "split": self.split, "seed": self.seed,
                "val_fraction": self.val_fraction, "num_images": len(self)}

    def digest(self) -> str:
        """Hash of the images' names (and, for files, sizes and modification times)."""
        h = hashlib.sha256()
        root = Path(self.source.root) if getattr(self.source, "root", None) else None
        for i in self.indices:
            name = self.source.source_of(i)
            h.update(name.encode())
            file = root / name if root is not None else None
            if file is not None and file.is_file():
                st = file.stat()
                h.update(f":{st.st_size}:{st.st_mtime_ns}".encode())
            h.update(b"\n")
        return h.hexdigest()[:16]


@dataclass
class Evaluator:
    """What one evaluation shares: the FID features (or why there are none), LPIPS (or why
    not), where reference statistics are cached, device and batch size."""

    inception: fid.InceptionFeatures | None
    fid_absent: str | None
    lpips: torch.nn.Module | None = None
    lpips_absent: str | None = None
    cache_dir: Path | None = None
    device: str = "cpu"
    batch_size: int = 64

    @classmethod
    def create(cls, inception_weights: str | None = None, vgg_weights: str | None = None, lpips: bool = False,
               cache_dir: str | Path | None = None, device: str = "cpu", batch_size: int = 64) -> "Evaluator":
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1, got {batch_size}")
        weights, absent = fid.find_inception_weights(inception_weights)
        inception = fid.InceptionFeatures(weights, device, batch_size) if weights else None
        lpips_module, lpips_absent = None, None
        if lpips:
            vgg = Path(vgg_weights).expanduser() if vgg_weights else tk.losses.default_vgg_path()
            if vgg_weights and not vgg.is_file():
                raise FileNotFoundError(f"`vgg_weights` {vgg} does not exist")
            if vgg.is_file():
                lpips_module = tk.LPIPS(vgg_path=vgg).to(device)
            else:
                lpips_absent = f"no VGG16 weights: {vgg.name} is not in {vgg.parent} and no `vgg_weights` file was given"
        return cls(inception, absent, lpips_module, lpips_absent, Path(cache_dir) if cache_dir else None, device, batch_size)

    def collector(self, images: Images | None = None, channels: int = 0, image_size: int = 0) -> fid.FeatureCollector:
        if images is not None:
            channels, image_size = images.source.channels, images.source.image_size
        return fid.FeatureCollector(self.inception, pixels=fid.pixel_fd_absent(channels, image_size) is None)

    def reference(self, images: Images, cache_dir: Path | None = None) -> tuple[dict[str, fid.FrechetStats], dict]:
        """Statistics of the real ``images`` (from the cache when made under the same key) and a
        record of them for the report. Only statistics with Inception features are cached."""
        collector = self.collector(images)
        root = getattr(images.source, "root", None)
        key = {"format": "vqgpt-reference-stats", "version": 1, **images.describe(),
               "data": str(Path(root).resolve()) if root else images.source.spec,  # a folder however it was named
               "image_size": images.source.image_size, "channels": images.source.channels, "digest": images.digest(),
               "inception": {k: v for k, v in self.inception.describe().items() if k not in ("weights", "resize")}
               if self.inception else None, "pixel": collector.pixels}
        path = fid.cache_file(self.cache_dir or cache_dir or fid.default_cache_dir(), key) if self.inception else None
        stats = fid.load_stats(path, key) if path else None
        record = {**images.describe(), "statistics": str(path) if path else None, "reused": stats is not None}
        if stats is None:
            for batch in DataLoader(images, batch_size=self.batch_size):
                collector.add(batch["image"], batch["label"])
            stats = collector.stats()
            if path is not None:
                fid.save_stats(path, key, stats)
                logger.info("reference statistics of %s (%s, %d images) cached in %s", images.source.spec,
                            images.split, len(images), path)
        return stats, record

    def distances(self, reference: dict[str, fid.FrechetStats], produced: dict[str, fid.FrechetStats],
                  name: str) -> dict[str, Any]:
        """``{name: FID or None, name_absent: why or None, pixel_fd: …, pixel_fd_absent: …}``."""
        out: dict[str, Any] = {}
        if "inception" in reference and "inception" in produced:
            out[name], out[f"{name}_absent"] = fid.frechet_distance(reference["inception"], produced["inception"]), None
        else:
            out[name], out[f"{name}_absent"] = None, self.fid_absent or "no Inception features"
        return out

    @staticmethod
    def pixel_distance(reference: dict[str, fid.FrechetStats], produced: dict[str, fid.FrechetStats],
                       why_not: str | None) -> dict[str, Any]:
        if "pixel" in reference and "pixel" in produced:
            return {"pixel_fd": fid.frechet_distance(reference["pixel"], produced["pixel"]), "pixel_fd_absent": None}
        return {"pixel_fd": None, "pixel_fd_absent": why_not or "no pixel statistics"}


# --------------------------------------------------------------------------- tokenizer


def evaluate_tokenizer(model: tk.VQGAN, images: Images, evaluator: Evaluator, cache_dir: Path | None = None) -> dict:
    """PSNR, SSIM, LPIPS, codebook usage/perplexity, rFID and pixel FD of ``model`` on ``images``."""
    reference, record = evaluator.reference(images, cache_dir)
    collector = evaluator.collector(images)
    figures = tk.evaluate_reconstruction(model, images, batch_size=evaluator.batch_size, device=evaluator.device,
                          lpips=evaluator.lpips, on_batch=lambda real, recon: collector.add(recon))
    section: dict[str, Any] = {
        "psnr": figures["psnr"], "ssim": figures["ssim"],
        "lpips": figures.get("lpips"), "lpips_absent": None if "lpips" in figures else evaluator.lpips_absent,
        "codebook_usage": figures["codebook_usage"], "perplexity": figures["perplexity"],
        "num_images": figures["num_images"],
    }
    produced = collector.stats()
    section.update(evaluator.distances(reference, produced, "rfid"))
    section.update(evaluator.pixel_distance(reference, produced, fid.pixel_fd_absent(model.config.channels,
                                                                                     model.config.image_size)))
    section["reference"] = record
    section["protocol"] = protocol_line(evaluator.inception, evaluator.fid_absent, record,
                                        f"{figures['num_images']} reconstructions", model.config)
    return section


# --------------------------------------------------------------------------- prior


def prior_bits_per_code(model: torch.nn.Module, spec: pr.PriorSpec, data: pr.TokenData, device: str = "cpu",
                        batch_size: int = 128, max_train_batches: int = 50) -> dict:
    """Held-out loss of ``model`` on a loaded token dataset in bits per code, the same on (the
    first ``max_train_batches`` batches of) the training split to show the generalisation gap,
    and for class-conditional priors the held-out figure of every class: ``per_class`` =
    {class index: (bits per code, rows)}."""
    tokens_dir = data.path
    if data.spec.codebook_size != spec.codebook_size or data.spec.grid != spec.grid:
        raise ValueError(f"token dataset {tokens_dir} (K={data.spec.codebook_size}, grid {data.spec.grid}) does not fit "
                         f"the prior (K={spec.codebook_size}, grid {spec.grid})")
    if spec.tokenizer_fingerprint and data.spec.tokenizer_fingerprint != spec.tokenizer_fingerprint:
        raise ValueError(f"token dataset {tokens_dir} was made by tokenizer {data.spec.tokenizer_fingerprint}, "
                         f"the prior was trained on {spec.tokenizer_fingerprint}")
    accelerator = Accelerator(cpu=torch.device(device).type == "cpu")

    def bits(dataset: Dataset, cap: int | None = None) -> float:
        loader = accelerator.prepare_data_loader(DataLoader(dataset, batch_size=batch_size, shuffle=False))
        return pr.evaluate_bits_per_code(model, loader, spec, accelerator, max_batches=cap)["val_bits_per_code"]

    figures: dict[str, Any] = {"validation_bits_per_code": bits(data.validation),
                               "train_bits_per_code": bits(data.train, max_train_batches), "per_class": {}}
    if spec.num_classes:
        labels = np.asarray(data.validation.table["label"])
        for c in range(spec.num_classes):
            rows = np.flatnonzero(labels == c).tolist()
            if rows:
                figures["per_class"][c] = (bits(Subset(data.validation, rows)), len(rows))
    return figures


def _sample_labels(spec: pr.PriorSpec, real: Images | None, n: int, seed: int) -> torch.Tensor | None:
    """Class labels of the samples: none for an unconditional prior; else the real split's own
    class mix (its labels in a seeded order, repeated as needed), or every class in turn."""
    if not spec.num_classes:
        return None
    if real is not None and list(real.source.class_names) == list(spec.class_names):
        labels = torch.tensor([real.label_of(i) for i in range(len(real))])
        if len(labels) and int(labels.min()) >= 0:
            order = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
            return order[torch.arange(n) % len(order)]
    return torch.arange(n) % spec.num_classes


def evaluate_prior(model: torch.nn.Module, spec: pr.PriorSpec, pipe: Any | None, images: Images | None,
                   evaluator: Evaluator, sampling: SampleConfig, num_samples: int | None, seed: int,
                   token_data: pr.TokenData | None = None, cache_dir: Path | None = None) -> dict:
    """Held-out bits per code (with ``token_data``), and gFID, pixel FD and sample code usage of
    ``num_samples`` samples (default: as many as ``images``, the real split) drawn with
    ``sampling`` and ``seed`` by ``pipe`` (a ``Pipeline`` of this prior; None: no samples)."""
    section: dict[str, Any] = {}
    per_class: dict[int, dict[str, Any]] = {c: {"class": name} for c, name in enumerate(spec.class_names)}
    if token_data is not None:
        bits = prior_bits_per_code(model, spec, token_data, device=evaluator.device)
        section.update({k: bits[k] for k in ("validation_bits_per_code", "train_bits_per_code")})
        for c, (value, rows) in bits["per_class"].items():
            per_class[c].update(validation_bits_per_code=value, held_out_rows=rows)
    if pipe is None:
        section["gfid"], section["gfid_absent"] = None, "no tokenizer to decode samples (give `run` or `tokenizer`)"
    else:
        n = num_samples or (len(images) if images is not None else 0)
        if n < 2:
            raise ValueError(f"`num_samples` must be at least 2 for sample statistics, got {n}")
        labels = _sample_labels(spec, images, n, seed)
        collector = evaluator.collector(channels=pipe.tokenizer.config.channels,
                                        image_size=pipe.tokenizer.config.image_size)
        settings = dataclasses.replace(sampling, seed=seed, num=n)
        # one call: every image's seed is a function of (seed, class, k), so the samples do not
        # depend on the batch size; decoded and measured batch by batch
        codes = pipe.sample_codes(settings, labels=labels)
        for start in range(0, n, sampling.batch_size):
            batch_labels = labels[start:start + sampling.batch_size] if labels is not None else None
            collector.add(pipe.decode(codes[start:start + sampling.batch_size]), batch_labels)
        usage, perplexity = tk.codebook_stats(tk.code_histogram(codes.cpu(), spec.codebook_size))
        section.update(num_samples=n, seed=seed, sample_codebook_usage=100.0 * usage, sample_perplexity=perplexity,
                       sampling={k: getattr(sampling, k) for k in ("guidance", "temperature", "top_k", "top_p")})
        if images is None:
            section.update(gfid=None, gfid_absent="no real images to compare with (the data source is unknown: give `data`)",
                           pixel_fd=None, pixel_fd_absent="no real images to compare with")
        else:
            reference, record = evaluator.reference(images, cache_dir)
            produced = collector.stats()
            section.update(evaluator.distances(reference, produced, "gfid"))
            why_not = fid.pixel_fd_absent(pipe.tokenizer.config.channels, pipe.tokenizer.config.image_size)
            section.update(evaluator.pixel_distance(reference, produced, why_not))
            section["reference"] = record
            section["protocol"] = protocol_line(evaluator.inception, evaluator.fid_absent, record, f"{n} samples",
                                                pipe.tokenizer.config)
            if labels is not None and why_not is None:
                _per_class_pixel_fd(per_class, images, collector, labels, evaluator.batch_size)
        for c, row in per_class.items():
            row["samples"] = int((labels == c).sum()) if labels is not None else 0
    if per_class:
        section["per_class"] = list(per_class.values())
    return section


def _per_class_pixel_fd(per_class: dict[int, dict], images: Images, samples: fid.FeatureCollector,
                        labels: torch.Tensor, batch_size: int) -> None:
    """The pixel FD of each class's samples against the real images of that class."""
    real = fid.FeatureCollector(None, pixels=True)
    for batch in DataLoader(images, batch_size=batch_size):
        real.add(batch["image"], batch["label"])
    real_pixels, real_labels = real.features("pixel"), real.features("label")
    fake_pixels = samples.features("pixel")
    for c, row in per_class.items():
        a, b = real_pixels[real_labels == c], fake_pixels[labels == c]
        row["pixel_fd"] = (fid.frechet_distance(fid.FrechetStats.of(a), fid.FrechetStats.of(b))
                           if len(a) >= 2 and len(b) >= 2 else None)


# --------------------------------------------------------------------------- the verb


def _resolve(what: str, run: str | None, tokenizer: str | None, prior: str | None, tokens: str | None):
    if what not in EVAL_TARGETS:
        raise ValueError(f"evaluate what? {what!r}; choose {', '.join(EVAL_TARGETS)}")
    if run:
        root = Path(run)
        if not root.is_dir():
            raise FileNotFoundError(f"run folder {root} does not exist")
        if tokenizer or prior:
            raise ValueError("give either `run` or `tokenizer` / `prior`, not both")
        tokenizer = str(root / "tokenizer") if (root / "tokenizer").is_dir() else None
        prior = str(root / "prior") if (root / "prior").is_dir() else None
        tokens = tokens or (str(root / "tokens") if (root / "tokens").is_dir() else None)
    if what == "tokenizer" and not tokenizer:
        raise ValueError("evaluate tokenizer needs `tokenizer` (or `run` holding tokenizer/)")
    if what == "prior" and not prior:
        raise ValueError("evaluate prior needs `prior` with `tokenizer`, or `run`")
    if what == "tokenizer":
        prior = None
    if not tokenizer and not prior:
        raise ValueError("evaluate needs `run`, or `tokenizer` and/or `prior`")
    return tokenizer, prior, tokens


def evaluate(what: str = "all", run: str | None = None, tokenizer: str | None = None, prior: str | None = None,
             data: str | None = None, tokens: str | None = None, split: str | None = None,
             num_samples: int | None = None, seed: int = 0, data_seed: int | None = None,
             inception_weights: str | None = None, vgg_weights: str | None = None, stats_cache: str | None = None,
             sampling: SampleConfig | None = None, batch_size: int = 64, device: str = "cpu") -> dict[str, Any]:
    """Evaluate the tokenizer, the prior or both ("all"); returns the report (``report.py``)."""
    tokenizer, prior, tokens = _resolve(what, run, tokenizer, prior, tokens)
    if num_samples is not None and num_samples < 2:
        raise ValueError(f"`num_samples` must be at least 2, got {num_samples}")
    sampling = sampling or SampleConfig()
    token_data = pr.load_token_dataset(tokens) if tokens and prior else None
    meta = token_data.meta if token_data else (pr.read_token_meta(tokens) if tokens else {})
    split_meta = meta.get("split") or {}
    if data_seed is not None and "seed" in split_meta and data_seed != split_meta["seed"]:
        raise ValueError(f"the token dataset {tokens} was split with seed {split_meta['seed']}; `data_seed` {data_seed} "
                         "would evaluate on images the prior was trained on")
    vq = tk.VQGAN.from_pretrained(tokenizer, device=device) if tokenizer else None
    # what the models recorded about their training data: the token dataset's record, else the tokenizer's
    if meta.get("data"):
        trained_on, recorded_seed, recorded_fraction = meta["data"], int(split_meta.get("seed", 0)), split_meta.get("val_fraction")
    elif vq is not None:
        trained_on = vq.config.trained_on
        recorded_seed, recorded_fraction = vq.config.trained_split_seed, vq.config.trained_val_fraction
    else:
        trained_on, recorded_seed, recorded_fraction = "", 0, None
    data = data or meta.get("data") or None
    held_out = held_out_split(data or "", trained_on, recorded_seed if data_seed is None else data_seed,
                              recorded_fraction, split=split)
    split, split_seed, val_fraction = held_out.split, held_out.seed, held_out.val_fraction
    stats_dir = Path(tokens) / "reference_stats" if tokens else None  # next to the token dataset's data

    evaluator = Evaluator.create(inception_weights, vgg_weights, lpips=tokenizer is not None and what != "prior",
                                 cache_dir=stats_cache, device=device, batch_size=batch_size)
    report: dict[str, Any] = {"schema": SCHEMA, "machine": machine_info(device),
                              "fid": {**(evaluator.inception.describe() if evaluator.inception else {}),
                                      "absent": evaluator.fid_absent}}

    sources: list = []  # the split is read (and its files checked) once for both sections

    def real_images(limit: int | None = None) -> Images | None:
        if vq is None or not data:
            return None
        if not sources:
            sources.append(load_images(data, vq.config.image_size, vq.config.channels, split=split, seed=split_seed,
                                       val_fraction=val_fraction))
        return Images(sources[0], split, split_seed, sources[0].split_fraction, limit=limit, subset_seed=seed)

    if vq is not None and what in ("tokenizer", "all"):
        if not data:
            if what == "tokenizer":
                raise ValueError("evaluate tokenizer needs `data` (or `tokens` naming its data source)")
            logger.warning("no data source (and no token dataset naming one): tokenizer metrics skipped")
        else:
            images = real_images(limit=num_samples)
            report["tokenizer"] = {"path": str(tokenizer), "fingerprint": vq.fingerprint(),
                                   **evaluate_tokenizer(vq, images, evaluator, stats_dir)}
    if prior and what in ("prior", "all"):
        model, spec = pr.load_prior(prior, device=device)
        pipe = None
        if vq is not None:
            pipe = Pipeline(vq, model, spec, device=device)
        elif what == "prior":
            logger.warning("no tokenizer: samples cannot be decoded, gFID skipped")
        if token_data is None:
            logger.warning("no token dataset: held-out prior loss skipped")
        images = real_images()
        report["prior"] = {"path": str(prior), "tokens": tokens,
                           **evaluate_prior(model, spec, pipe, images, evaluator, sampling, num_samples, seed, token_data, stats_dir)}
        if data == "digits" and spec.num_classes == 10 and vq is not None:
            report["digits"] = _digits_check(pipe, report["prior"].get("num_samples") or 200, seed, sampling)
    return report


def _digits_check(pipe: Any, num_samples: int, seed: int, sampling: SampleConfig) -> dict:
    from .digits import check_digit_samples

    if num_samples < 10:
        return {"absent": f"the digit check needs at least 10 samples, got {num_samples}"}
    return check_digit_samples(pipe, num_samples=num_samples, seed=seed, guidance_scale=sampling.guidance,
                               temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
