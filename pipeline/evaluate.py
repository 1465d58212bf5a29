"""``vqgpt evaluate``: tokenizer and prior metrics on held-out data.

- tokenizer: PSNR, SSIM, codebook usage and perplexity on the data source's validation split;
- prior: held-out (and training) loss in bits per code on the token dataset;
- samples: distinct codes used by sampled grids, and for digits the independent classifier
  check (accuracy of class-conditional samples, class balance, near-copies).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from vqgpt import prior as pr
from vqgpt import tokenizer as tk

from .sources import load_images

__all__ = ["evaluate_run"]

logger = logging.getLogger(__name__)


def _resolve(run: str | None, tokenizer: str | None, prior: str | None, tokens: str | None):
    if run:
        root = Path(run)
        if not root.is_dir():
            raise FileNotFoundError(f"run folder {root} does not exist")
        tokenizer = tokenizer or (str(root / "tokenizer") if (root / "tokenizer").is_dir() else None)
        prior = prior or (str(root / "prior") if (root / "prior").is_dir() else None)
        tokens = tokens or (str(root / "tokens") if (root / "tokens").is_dir() else None)
    if not tokenizer and not prior:
        raise ValueError("evaluate needs --run DIR, or --tokenizer DIR and/or --prior DIR")
    return tokenizer, prior, tokens


def prior_bits_per_code(model: torch.nn.Module, spec: pr.PriorSpec, data: pr.TokenData, device: str = "cpu",
                        batch_size: int = 128, max_train_batches: int = 50) -> dict:
    """Held-out loss of ``model`` on a loaded token dataset in bits per code, and the same on
    (the first ``max_train_batches`` batches of) the training split to show the generalisation gap."""
    tokens_dir = data.path
    if data.spec.codebook_size != spec.codebook_size or data.spec.grid != spec.grid:
        raise ValueError(f"token dataset {tokens_dir} (K={data.spec.codebook_size}, grid {data.spec.grid}) does not fit "
                         f"the prior (K={spec.codebook_size}, grid {spec.grid})")
    if spec.tokenizer_fingerprint and data.spec.tokenizer_fingerprint != spec.tokenizer_fingerprint:
        raise ValueError(f"token dataset {tokens_dir} was made by tokenizer {data.spec.tokenizer_fingerprint}, "
                         f"the prior was trained on {spec.tokenizer_fingerprint}")
    accelerator = Accelerator(cpu=torch.device(device).type == "cpu")
    figures = {}
    for split, cap in (("validation", None), ("train", max_train_batches)):
        loader = accelerator.prepare_data_loader(DataLoader(getattr(data, split), batch_size=batch_size, shuffle=False))
        result = pr.evaluate(model, loader, spec, accelerator, max_batches=cap)
        figures[f"{split}_bits_per_code"] = result["val_bits_per_code"]
    return figures


def evaluate_run(run: str | None = None, tokenizer: str | None = None, prior: str | None = None,
                 data: str | None = None, tokens: str | None = None, num_samples: int = 200, seed: int = 0,
                 device: str = "cpu") -> dict[str, dict]:
    """Every metric the given stages allow; returns {section: {metric: value}}."""
    tokenizer, prior, tokens = _resolve(run, tokenizer, prior, tokens)
    if num_samples < 10:
        raise ValueError(f"--num-samples must be at least 10, got {num_samples}")
    report: dict[str, dict] = {}
    token_data = pr.load_token_dataset(tokens) if tokens else None
    data = data or (token_data.meta.get("data") if token_data else None)

    vq = None
    if tokenizer:
        vq = tk.VQGAN.from_pretrained(tokenizer, device=device)
        if data:
            split = (token_data.meta.get("split") or {}) if token_data else {}
            val = load_images(data, vq.config.image_size, vq.config.channels, split="validation",
                              seed=split.get("seed", 0), val_fraction=split.get("val_fraction") or 0.1)
            report["tokenizer"] = tk.evaluate(vq, val)
        else:
            logger.warning("no --data (and no token dataset naming one): tokenizer metrics skipped")

    if prior:
        model, spec = pr.load_prior(prior, device=device)
        if token_data is not None:
            report["prior"] = prior_bits_per_code(model, spec, token_data, device=device)
        else:
            logger.warning("no --tokens: held-out prior loss skipped")
        if vq is not None:
            from .generate import Pipeline

            pipe = Pipeline(vq, model, spec, device=device)
            codes = pipe.sample_codes(num_samples, None, seed=seed)
            report["samples"] = {"distinct_codes": int(codes.unique().numel()), "codebook_size": spec.codebook_size}
            if data == "digits" and spec.num_classes == 10:
                from .demo import DEMO_SETTINGS
                from .digits_check import check_digit_samples

                report["digits"] = check_digit_samples(pipe, num_samples=num_samples, seed=seed,
                                                       guidance_scale=DEMO_SETTINGS["guidance"],
                                                       temperature=DEMO_SETTINGS["temperature"])
    return report
