"""Drawing code grids from the prior.

`sample` is our own decoding loop rather than `model.generate()` for two reasons: `generate()`
cannot take a `torch.Generator` (its sampling draws from the global RNG, so a seed cannot be
passed explicitly and reproducibly), and it does not pair each conditional row with a
null-condition row for classifier-free guidance (logits = u + s·(c − u) needs both rows at every
step). The loop still uses transformers' pieces: `DynamicCache` for the KV cache and the
Temperature/TopK/TopP logits warpers.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Callable

import torch
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    PreTrainedModel,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .model import PriorSpec, code_logits

__all__ = ["sample", "logits_processors"]

logger = logging.getLogger(__name__)


def logits_processors(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> LogitsProcessorList:
    """Temperature, then top-k, then top-p (each optional, each usable alone)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (or None), got {top_p}")
    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k is not None:
        processors.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    return processors


def _sample_batch(
    model: PreTrainedModel,
    spec: PriorSpec,
    cond: torch.Tensor,  # (b,) condition tokens
    prefix: torch.Tensor,  # (b, n) given first codes
    *,
    cfg: bool,
    guidance_scale: float,
    processors: LogitsProcessorList,
    generator: torch.Generator | None,
    use_cache: bool,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Codes LongTensor[b, h·w] for one batch. `on_step(position, logits[b, K])` sees the guided
    logits before temperature/top-k/top-p (used by tests to compare cached and full passes)."""
    b, n = prefix.shape
    rows = torch.cat([cond, torch.full_like(cond, spec.null_token_id)]) if cfg else cond  # (R,) R = 2b or b
    tokens = torch.cat([rows[:, None], prefix.repeat(2, 1) if cfg else prefix], dim=1)  # (R, 1 + n)
    cache = DynamicCache(config=model.config) if use_cache else None
    feed = tokens  # what the next forward pass reads: everything at first, then only the newest token
    for position in range(n, spec.num_codes):
        if use_cache:
            logits, cache = code_logits(model, feed, spec, cache=cache, use_cache=True, logits_to_keep=1)
        else:  # full recomputation of the whole sequence at every step
            logits, _ = code_logits(model, tokens, spec, use_cache=False, logits_to_keep=1)
        logits = logits[:, -1]  # (R, K)
        if cfg:
            cond_logits, uncond_logits = logits[:b], logits[b:]  # (b, K) each
            logits = uncond_logits + guidance_scale * (cond_logits - uncond_logits)
        if on_step is not None:
            on_step(position, logits)
        scores = processors(tokens[:b], logits)  # (b, K); filtered entries are -inf
        probs = torch.softmax(scores, dim=-1)
        sample_device = generator.device if generator is not None else probs.device
        nxt = torch.multinomial(probs.to(sample_device), 1, generator=generator).to(tokens.device)  # (b, 1)
        nxt_rows = nxt.repeat(2, 1) if cfg else nxt  # (R, 1)
        tokens = torch.cat([tokens, nxt_rows], dim=1)
        feed = nxt_rows
    return tokens[:b, 1:]  # (b, h*w)


def sample(
    model: PreTrainedModel,
    spec: PriorSpec,
    num_images: int,
    class_labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    prefix_codes: torch.Tensor | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
) -> torch.Tensor:
    """Draw `num_images` code grids → LongTensor[num_images, h, w] (on the CPU).

    class_labels: LongTensor[B] of class indices (-1 = no class), or None for unconditional.
    guidance_scale: classifier-free guidance s (1 = plain conditional; needs class labels).
    temperature / top_k / top_p: logits warpers, each optional.
    generator: a torch.Generator for reproducible draws (any device; draws happen on its device).
    prefix_codes: LongTensor[B, n] (or [n] for all images): the first n raster codes, kept as given.
    use_cache: KV cache (True) or full recomputation at every step (False, for benchmarks/tests).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be ≥ 0, got {guidance_scale}")
    processors = logits_processors(temperature, top_k, top_p)
    device = next(model.parameters()).device
    if class_labels is not None:
        class_labels = torch.as_tensor(class_labels, dtype=torch.long).flatten()
        if class_labels.numel() != num_images:
            raise ValueError(f"got {class_labels.numel()} class labels for {num_images} images")
    elif guidance_scale != 1.0:
        raise ValueError("classifier-free guidance (guidance_scale ≠ 1) needs class labels")
    needs_null = guidance_scale != 1.0 or class_labels is None or bool((class_labels < 0).any())
    if needs_null and not spec.has_null_condition:
        what = "classifier-free guidance" if guidance_scale != 1.0 else "sampling without a class"
        raise ValueError(f"{what} needs the \"no class\" condition, but this prior was trained without label "
                         f"dropout (train.label_dropout=0); give a class for every image and guidance 1")
    cond = spec.condition_tokens(class_labels, num_images, device=device)  # (B,)
    if prefix_codes is None:
        prefix = torch.zeros(num_images, 0, dtype=torch.long, device=device)
    else:
        prefix = torch.as_tensor(prefix_codes, dtype=torch.long).to(device)
        if prefix.dim() == 1:
            prefix = prefix[None].expand(num_images, -1)
        if prefix.dim() != 2 or prefix.shape[0] != num_images:
            raise ValueError(f"prefix_codes must be [num_images, n] = [{num_images}, n], got {list(prefix.shape)}")
        if prefix.shape[1] > spec.num_codes:
            raise ValueError(f"prefix_codes holds {prefix.shape[1]} codes but a grid has only {spec.num_codes}")
        if prefix.numel() and (prefix.min() < 0 or prefix.max() >= spec.codebook_size):
            raise ValueError(f"prefix_codes must be codes in 0..{spec.codebook_size - 1}")
    cfg = guidance_scale != 1.0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast:
            chunks = [
                _sample_batch(model, spec, c, p, cfg=cfg, guidance_scale=guidance_scale, processors=processors,
                              generator=generator, use_cache=use_cache)
                for c, p in zip(cond.split(batch_size), prefix.split(batch_size))
            ]
    finally:
        model.train(was_training)
    return torch.cat(chunks).reshape(num_images, *spec.grid).cpu()  # (B, h, w)
