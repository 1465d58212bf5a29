"""Drawing code grids from the prior.

`sample` is our own decoding loop rather than `model.generate()`: `generate()` draws from one
random stream shared by the whole batch (so an image depends on what else is drawn with it), it
does not pair each conditional row with a null-condition row for classifier-free guidance
(logits = u + s·(c − u) needs both rows at every step), and it has no multi-code passes. The
loop still uses transformers' pieces: the model (its modules and weights), its cache for models
our static buffers do not cover, and the Temperature/TopK/TopP logits warpers.

Samplers (`sampler=`, `--sampler`):
- "ar": one code per forward pass, in raster order.
- "jacobi": a window of codes per pass (Jacobi decoding with noise fixed per grid position): the
  same codes as "ar" for the same seeds, in fewer passes. See `prior/jacobi.py`.
- "sjd": speculative Jacobi decoding (probabilistic acceptance): the same distribution as "ar",
  other codes for the same seed.
- "auto" (default): "jacobi" for small batches (where a window pass costs little more than a
  one-code pass), else "ar" — a choice of speed only, the codes are the same.

Precision (`precision=`, `--precision`): "fp32", or "bf16" — the passes run on a bfloat16 copy of
the weights (buffers such as RoPE frequencies stay float32; logits and every sampling step are
float32). "auto" (default) is bf16 on a GPU and fp32 on a CPU. On a CPU with bf16 matrix units
(Intel AMX, AVX512-BF16) bf16 makes a window pass nearly as cheap as a one-code pass, which is
where "jacobi"/"sjd" pay most; it is not the CPU default because in bf16 (8 significant bits,
fp32 has 24) a code can depend on the shape of the pass it was computed in, so "jacobi" then
gives "ar"'s codes only nearly, and an image its seed's codes only nearly; the distribution is
the bf16 model's, a rounding away from the fp32 model's.

Randomness: image i draws every random number from its own seed (`seeds`, or one seed per image
drawn from `generator`), so its codes never depend on the batch size or the other images.
"""

from __future__ import annotations

import copy
import logging

import torch
from transformers import LogitsProcessorList, PreTrainedModel, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from .config import PRECISIONS, SAMPLERS, sampling_value_error
from .kv_decoders import KV_CACHES, make_decoder
from .decode_loop import SharedNoise, Speculative, decode
from .model import PriorSpec
from .streams import seeds_from_generator

__all__ = ["sample", "logits_processors", "SAMPLERS", "PRECISIONS", "default_window", "resolve_precision",
           "in_precision"]

logger = logging.getLogger(__name__)

# "auto": "jacobi" up to this many rows (guidance rows count), else "ar" (a window pass costs
# arithmetic ∝ rows · window). CPU: measured in fp32 and bf16; GPU: not measured, a pass of ≤ 16
# rows × 16 columns should cost about as much as a one-code pass (docs/design-notes.md).
AUTO_JACOBI_MAX_ROWS = {"cpu": 4, "other": 16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" → "bf16" on a GPU, "fp32" elsewhere (see the module's doc); others as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def in_precision(model: PreTrainedModel, precision: str) -> PreTrainedModel:
    """The model to run sampling passes on: `model` itself for "fp32" (or when its weights are
    bf16 already), else a copy whose parameters are bfloat16 — buffers (RoPE's inverse
    frequencies, GPT-2's masks) keep their type, and `model` is left as it is."""
    if precision == "fp32" or all(p.dtype == torch.bfloat16 for p in model.parameters()):
        return model
    with torch.no_grad():
        twin = copy.deepcopy(model)
        for p in twin.parameters():
            p.data = p.data.to(torch.bfloat16)
    return twin.eval()


def default_window(device: torch.device, precision: str = "fp32") -> int:
    """Codes per pass tried by "jacobi"/"sjd": 16 where a wider pass costs next to nothing (a GPU,
    bf16 on a CPU's matrix units; SJD's paper uses 16), 8 for fp32 on a CPU, where each window
    column costs arithmetic."""
    return 8 if torch.device(device).type == "cpu" and precision == "fp32" else 16


def logits_processors(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> LogitsProcessorList:
    """Temperature, then top-k, then top-p (each optional, each usable alone)."""
    problem = sampling_value_error(temperature, 1.0, top_k, top_p)
    if problem:
        raise ValueError(problem)
    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k is not None:
        processors.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    return processors


def resolve_sampler(sampler: str, device: torch.device, rows: int) -> str:
    """"auto" → "jacobi" for at most AUTO_JACOBI_MAX_ROWS rows of a batch, else "ar": a choice of
    speed only, both give the same codes."""
    if sampler != "auto":
        return sampler
    limit = AUTO_JACOBI_MAX_ROWS["cpu" if device.type == "cpu" else "other"]
    return "jacobi" if rows <= limit else "ar"


def _sample_batch(
    model: PreTrainedModel,
    spec: PriorSpec,
    cond: torch.Tensor,  # (b,) condition tokens
    prefix: torch.Tensor,  # (b, n) given first codes
    seeds: torch.Tensor,  # (b,) one seed per image
    *,
    cfg: bool,
    guidance_scale: float,
    processors: LogitsProcessorList,
    sampler: str = "ar",
    window: int = 8,
    kv_cache: str = "auto",
    decoder=None,
    on_pass=None,
) -> tuple[torch.Tensor, dict]:
    """(codes LongTensor[b, h·w], {"passes": forward passes}) for one batch. `on_pass(columns[b, W],
    logits[b, W, K])` sees the guided logits of the predicted columns before temperature/top-k/top-p
    (tests compare them across caches)."""
    b, n = prefix.shape
    N, K = spec.num_codes, spec.codebook_size
    width = 1 if sampler == "ar" else window
    rows = torch.cat([cond, torch.full_like(cond, spec.null_token_id)]) if cfg else cond  # (R,) R = 2b or b
    length = N + 2 * width + 1  # the grid's columns, then room for windows running past its end
    tokens = torch.zeros(rows.shape[0], length, dtype=torch.long, device=cond.device)
    tokens[:, 0] = rows
    tokens[:, 1 : n + 1] = prefix.repeat(2, 1) if cfg else prefix

    def scores_of(logits: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:  # (R, W, K) → (b, W, K)
        if cfg:
            logits = logits[b:] + guidance_scale * (logits[:b] - logits[b:])  # u + s·(c − u)
        if on_pass is not None:
            on_pass(columns, logits)
        if len(processors):
            logits = processors(None, logits.reshape(-1, K)).view(b, -1, K)
        return logits

    if n == N:
        return prefix.clone(), {"passes": 0}
    rule = Speculative(seeds, width) if sampler == "sjd" else SharedNoise(seeds, length, K)
    if decoder is None:
        decoder = make_decoder(model, spec, rows.shape[0], length, kv_cache)
    decoder.begin()
    info = decode(decoder, tokens, b, n + 1, N, width, scores_of, rule, row=spec.grid[1])
    return tokens[:b, 1 : N + 1], info


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
    *,
    batch_size: int = 64,
    seeds: torch.Tensor | None = None,
    sampler: str = "auto",
    window: int | None = None,
    kv_cache: str = "auto",
    compile: bool = False,
    precision: str = "auto",
    stats: dict | None = None,
) -> torch.Tensor:
    """Draw `num_images` code grids → LongTensor[num_images, h, w] (on the CPU).

    class_labels: LongTensor[B] of class indices (-1 = no class), or None for unconditional.
    guidance_scale: classifier-free guidance s (1 = plain conditional; needs class labels).
    temperature / top_k / top_p: logits warpers, each optional.
    generator: where the images' seeds come from: one 63-bit seed per image is drawn from it, in
        order (the global RNG when None and no `seeds`). The same generator state gives the same
        images; image i then depends on i, not on batch_size.
    seeds: LongTensor[B] (or a list), one seed per image instead of a generator: image i is a
        function of seeds[i] and its class/prefix alone (the Pipeline derives them from a run's
        seed, the class and k, so the k-th image of a class never depends on what else is drawn).
    prefix_codes: LongTensor[B, n] (or [n] for all images): the first n raster codes, kept as given.
    sampler: "auto", "ar", "jacobi" or "sjd" (see the module's doc).
    window: codes per pass of "jacobi"/"sjd" (None: `default_window` of the device).
    kv_cache: "auto", "static" (our preallocated buffers, Llama/GPT-2), "dynamic" (transformers'
        cache) or "none" (full recomputation every pass: a reference).
    compile: torch.compile the static decoder's forward pass (one graph per window width; off by
        default: on a CPU it measured slower, and the first call compiles for tens of seconds).
    precision: "auto" (bf16 on a GPU, fp32 on a CPU), "fp32" (the model's weights as they are) or
        "bf16" (a bf16 copy; see the module's doc).
    stats: a dict to receive {"passes": forward passes, "images", "codes": codes drawn per image,
        "sampler", "precision"}.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    problem = sampling_value_error(temperature, guidance_scale, top_k, top_p)
    if problem:
        raise ValueError(problem)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if kv_cache not in KV_CACHES:
        raise ValueError(f"kv_cache must be one of {', '.join(KV_CACHES)}, got {kv_cache!r}")
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    window = default_window(device, precision) if window is None else window
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be an integer ≥ 2, got {window!r}")
    processors = logits_processors(temperature, top_k, top_p)
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
    if seeds is not None:
        if generator is not None:
            raise ValueError("give seeds or a generator, not both")
        seeds = torch.as_tensor(seeds, dtype=torch.long).flatten().to(device)
        if seeds.numel() != num_images:
            raise ValueError(f"got {seeds.numel()} seeds for {num_images} images")
    else:
        seeds = seeds_from_generator(generator, num_images, device)
    cfg = guidance_scale != 1.0
    chosen = resolve_sampler(sampler, device, min(batch_size, num_images) * (2 if cfg else 1))
    was_training = model.training
    model.eval()
    chunks, passes = [], 0
    width = 1 if chosen == "ar" else window
    try:
        runner = in_precision(model, precision)
        with torch.inference_mode():
            rows = min(batch_size, num_images) * (2 if cfg else 1)
            decoder = make_decoder(runner, spec, rows, spec.num_codes + 2 * width + 1, kv_cache, compile)  # every batch
            for c, p, s in zip(cond.split(batch_size), prefix.split(batch_size), seeds.split(batch_size)):
                codes, info = _sample_batch(runner, spec, c, p, s, cfg=cfg, guidance_scale=guidance_scale,
                                            processors=processors, sampler=chosen, window=window, decoder=decoder)
                chunks.append(codes)
                passes += info["passes"]
    finally:
        model.train(was_training)
    if stats is not None:
        stats.update(passes=passes, images=num_images, codes=spec.num_codes - prefix.shape[1], sampler=chosen,
                     precision=precision)
    return torch.cat(chunks).reshape(num_images, *spec.grid).cpu()  # (B, h, w)
