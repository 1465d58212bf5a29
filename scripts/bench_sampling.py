"""Benchmark the samplers: codes/s, forward passes per image and codes decided per pass.

For code lengths 64/256/1,024 (grids 8×8, 16×16, 32×32) and batch 1/8/32, on one model:
  plain-pytorch  a minimal KV-cached GPT loop in plain PyTorch of the same size (minGPT blocks,
                 taming-transformers' `sample_with_past`: past keys/values grown by torch.cat)
  generate       transformers' `model.generate(do_sample=True)` on the same model (outside reference)
  recompute      vqgpt "ar" with full recomputation every pass (kv_cache="none")
  kv-dynamic     vqgpt "ar" over transformers' own KV cache: the plain KV loop
  ar             vqgpt "ar" over static preallocated KV buffers
  jacobi         several codes per pass, the same codes as "ar" (static buffers)
  sjd            speculative Jacobi decoding (static buffers)
  auto           what sampler="auto" picks for that batch on this device

    python scripts/bench_sampling.py                                   # the whole table (CPU: ~1 h)
    python scripts/bench_sampling.py --lengths 64 256 --batches 1 8 --quick
    python scripts/bench_sampling.py --prior demo-run/prior --guidance 2 --temperature 0.5
    python scripts/bench_sampling.py --preset small --lengths 256 --batches 1

Random weights (the default) give true speeds per pass but NOT true acceptance: a random prior
barely depends on its context, so Jacobi/SJD windows are confirmed far more often than with a
trained one. `--prior DIR` benchmarks a trained prior on its own grid (real codes per pass).
Wall-clock medians of --repeats runs after a warm-up; "recompute" (and, with --quick, "generate")
is timed on a slice of codes from the middle of the grid and reported per code (marked ~).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers

from vqgpt.prior import PRESETS, PriorConfig, PriorSpec, build_prior_model, load_prior, sample
from vqgpt.prior.sampling import in_precision, resolve_precision

METHODS = ("plain-pytorch", "generate", "recompute", "kv-dynamic", "ar", "jacobi", "sjd", "auto")


# --------------------------------------------------------------------------- the plain-PyTorch reference


class Block(nn.Module):
    """minGPT's block (taming-transformers' GPT): pre-LayerNorm, fused qkv, GELU MLP."""

    def __init__(self, width: int, heads: int, mlp: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp), nn.GELU(), nn.Linear(mlp, width))

    def forward(self, x, past=None):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in self.qkv(self.ln1(x)).split(C, 2))
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=past is None)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x)), (k, v)


class PlainGPT(nn.Module):
    def __init__(self, vocab: int, length: int, width: int, layers: int, heads: int, mlp: int):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Parameter(torch.zeros(1, length, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(width), nn.Linear(width, vocab, bias=False)

    def forward(self, idx, past=None, offset=0):
        x = self.tok(idx) + self.pos[:, offset : offset + idx.shape[1]]
        presents = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if past is None else past[i])
            presents.append(kv)
        return self.head(self.ln(x)), presents


@torch.no_grad()
def sample_with_past(model: PlainGPT, cond: torch.Tensor, steps: int, num_codes: int) -> torch.Tensor:
    """taming-transformers' loop: one forward per code, the past grown by torch.cat, multinomial."""
    x, past, out = cond[:, None], None, []
    for n in range(steps):
        logits, past = model(x, past, offset=n)
        probs = F.softmax(logits[:, -1, :num_codes].float(), -1)
        x = torch.multinomial(probs, 1)
        out.append(x)
    return torch.cat(out, 1)


# --------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = time.perf_counter  # --cpu-time: time.process_time


def timed(fn, device, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    times, result = [], None
    for _ in range(repeats):
        sync(device)
        t0 = CLOCK()
        result = fn()
        sync(device)
        times.append(CLOCK() - t0)
    return statistics.median(times), result


def model_sizes(model) -> dict:
    """Sizes of a PlainGPT with as many parameters per block as `model`: same width, depth and
    heads; a Llama's 3-matrix SwiGLU MLP of width m matches a 2-matrix GELU MLP of width 1.5·m."""
    cfg = model.config
    width = cfg.hidden_size
    if cfg.model_type == "llama":
        mlp = 3 * cfg.intermediate_size // 2
    else:
        mlp = getattr(cfg, "n_inner", None) or 4 * width
    return dict(width=width, layers=cfg.num_hidden_layers, heads=cfg.num_attention_heads, mlp=mlp)


def measure(method, model, spec, batch, args, device) -> dict | None:
    """One cell: {"codes_per_s", "passes", "codes", "estimated", "picked"} (None: skipped)."""
    N = spec.num_codes
    labels = torch.arange(batch) % spec.num_classes if spec.num_classes else None
    common = dict(temperature=args.temperature, top_k=args.top_k, batch_size=batch, precision=args.precision,
                  guidance_scale=args.guidance if labels is not None else 1.0)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    repeats = 1 if args.quick else args.repeats
    slice_codes = min(16 if args.quick else 32, N // 2)
    if method in ("plain-pytorch", "generate") and args.guidance != 1.0:
        return None  # neither pairs rows for classifier-free guidance
    if method == "plain-pytorch":
        torch.manual_seed(0)
        plain = PlainGPT(spec.vocab_size, N, **model_sizes(model)).to(device, dtype).eval()  # same precision
        cond = torch.full((batch,), spec.class_token_offset, device=device)
        args.plain_parameters = sum(p.numel() for p in plain.parameters())
        seconds, _ = timed(lambda: sample_with_past(plain, cond, N, spec.codebook_size), device, repeats)
        return dict(codes_per_s=batch * N / seconds, passes=N, codes=N, estimated=False)
    if method == "generate":
        cond = torch.full((batch, 1), spec.class_token_offset, device=device)
        lm = in_precision(model, args.precision)

        def generate(new: int, given: int):
            prompt = torch.cat([cond, torch.zeros(batch, given, dtype=torch.long, device=device)], 1)
            with torch.inference_mode():
                return lm.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                                      max_new_tokens=new, min_new_tokens=new, top_k=0, pad_token_id=0,
                                      eos_token_id=None)
        if not args.quick:
            seconds, _ = timed(lambda: generate(N, 0), device, repeats)
            return dict(codes_per_s=batch * N / seconds, passes=N, codes=N, estimated=False)
        # --quick: codes N/2 … N/2 + slice, minus the prompt's own pass (one code drawn after it)
        seconds, _ = timed(lambda: generate(slice_codes + 1, N // 2), device, repeats)
        prompt_only, _ = timed(lambda: generate(1, N // 2), device, repeats)
        return dict(codes_per_s=batch * slice_codes / max(seconds - prompt_only, 1e-9), passes=N, codes=N,
                    estimated=True)
    if method == "recompute":  # codes N/2 … N/2 + slice of each grid, the first half given
        stop = N // 2 + slice_codes
        cut = PriorSpec(spec.codebook_size, (1, stop), spec.class_names, label_dropout=spec.label_dropout)
        prefix = torch.zeros(batch, N // 2, dtype=torch.long)
        seconds, _ = timed(lambda: sample(model, cut, batch, labels, seeds=torch.arange(batch), prefix_codes=prefix,
                                          sampler="ar", kv_cache="none", **common), device, repeats)
        return dict(codes_per_s=batch * slice_codes / seconds, passes=N, codes=N, estimated=True)
    sampler, kv_cache = {"kv-dynamic": ("ar", "dynamic"), "ar": ("ar", "static")}.get(method, (method, "auto"))
    batches = max(1, math.ceil(args.images / batch))  # codes per pass vary from image to image: average
    total = batches * batch
    labels = torch.arange(total) % spec.num_classes if spec.num_classes else None
    stats: dict = {}

    def run():
        return sample(model, spec, total, labels, seeds=torch.arange(total), sampler=sampler, kv_cache=kv_cache,
                      window=args.window, stats=stats, **common)
    seconds, _ = timed(run, device, repeats)
    return dict(codes_per_s=total * N / seconds, passes=stats["passes"] / batches, codes=N, estimated=False,
                picked=stats["sampler"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024], help="codes per grid (squares)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--preset", default="mini", choices=list(PRESETS), help="size of the random-weight model")
    parser.add_argument("--prior", help="a trained prior folder instead (its own grid; --lengths is ignored)")
    parser.add_argument("--codebook-size", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=1.0, help="CFG scale for vqgpt's samplers (≠ 1: references skipped)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--window", type=int, default=None, help="jacobi/sjd window (default: the sampler's)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="number format of every method's passes, the references' included (auto: bf16 on a "
                             "GPU, fp32 on a CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (median)")
    parser.add_argument("--images", type=int, default=8,
                        help="vqgpt's samplers draw at least this many images per run (batches of --batches): "
                             "codes per pass vary from image to image")
    parser.add_argument("--quick", action="store_true", help="one timed run per cell; references timed on 16 codes")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by this process's CPU time, not the wall clock (a shared CPU, OMP_NUM_THREADS=1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    args.precision = resolve_precision(args.precision, device)  # "auto" → what it means on this device
    if args.window is None:
        from vqgpt.prior.sampling import default_window
        args.window = default_window(device, args.precision)

    if args.prior:
        model, spec = load_prior(args.prior, device=device)
        models = [(spec, model)]
        what = f"trained prior {args.prior}"
    else:
        models = []
        for n in args.lengths:
            side = math.isqrt(n)
            grid = (side, side) if side * side == n else (1, n)
            spec = PriorSpec(args.codebook_size, grid, tuple(map(str, range(args.classes))))
            torch.manual_seed(0)
            models.append((spec, build_prior_model(PriorConfig(**PRESETS[args.preset]["model"]), spec).to(device).eval()))
        what = f"random weights, preset {args.preset!r}"
    params = sum(p.numel() for p in models[0][1].parameters())
    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | {os.cpu_count()} cores | "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads) | transformers {transformers.__version__} | {device}")
    print(f"model: {what}, {models[0][1].config.model_type}, {params / 1e6:.2f}M parameters, vocab {models[0][0].vocab_size}; "
          f"guidance {args.guidance}, temperature {args.temperature}, top-k {args.top_k}, window {args.window}, "
          f"precision {args.precision} (every method); "
          f"{'process CPU time' if args.cpu_time else 'wall clock'}, median of {1 if args.quick else args.repeats}")
    if not args.prior:
        print("note: random weights — speeds per pass are real, codes per pass of jacobi/sjd are NOT (use --prior DIR)")
    header = f"{'codes':>6} {'batch':>5}  {'method':<14} {'codes/s':>10} {'passes/image':>12} {'codes/pass':>10} {'× kv-dynamic':>12} {'× plain-pytorch':>15}"
    print(header)
    print("-" * len(header))
    table: dict = {}
    for spec, model in models:
        for batch in args.batches:
            row = {}
            for method in args.methods:
                result = measure(method, model, spec, batch, args, device)
                if result is None:
                    continue
                row[method] = table[spec.num_codes, batch, method] = result
                base, plain = row.get("kv-dynamic"), row.get("plain-pytorch")
                name = method + (f" ({result['picked']})" if method == "auto" else "")
                speed = ("~" if result["estimated"] else "") + f"{result['codes_per_s']:,.0f}"
                vs_base = f"×{result['codes_per_s'] / base['codes_per_s']:.2f}" if base else ""
                vs_plain = f"×{result['codes_per_s'] / plain['codes_per_s']:.2f}" if plain else ""
                print(f"{spec.num_codes:>6} {batch:>5}  {name:<14} {speed:>10} {result['passes']:>12.1f} "
                      f"{result['codes'] / result['passes']:>10.2f} {vs_base:>12} {vs_plain:>15}", flush=True)
    if getattr(args, "plain_parameters", None):
        print(f"(plain-pytorch reference: {args.plain_parameters / 1e6:.2f}M parameters at the last length)")
    summary(table, args)


def summary(table: dict, args) -> None:
    """The issue's figures, read off the table (where measured)."""
    print("\nsummary (from the table above):")

    def get(n, b, m):
        return table.get((n, b, m))
    lengths = sorted({k[0] for k in table})
    n = 256 if 256 in lengths else (lengths[len(lengths) // 2] if lengths else None)
    if n is None:
        return
    for fast in ("jacobi", "sjd"):
        a, f = get(n, 1, "kv-dynamic") or get(n, 1, "ar"), get(n, 1, fast)
        if a and f:
            print(f"  {fast}: {a['passes'] / f['passes']:.2f}× fewer forward passes per image than the plain loop at {n} codes, batch 1")
    best = max((get(n, 1, m) or {"codes_per_s": 0})["codes_per_s"] for m in ("ar", "jacobi", "sjd", "auto"))
    if get(n, 1, "kv-dynamic") and best:
        print(f"  batch 1, {n} codes: fastest vqgpt sampler ×{best / get(n, 1, 'kv-dynamic')['codes_per_s']:.2f} the plain KV loop (kv-dynamic)")
    if get(n, 1, "recompute"):
        for m in ("kv-dynamic", "ar"):
            if get(n, 1, m):
                print(f"  batch 1, {n} codes: {m} ×{get(n, 1, m)['codes_per_s'] / get(n, 1, 'recompute')['codes_per_s']:.2f} full recomputation")
    if len(lengths) > 1:
        for m in ("kv-dynamic", "ar", "jacobi", "auto"):
            lo, hi = get(lengths[0], 1, m), get(lengths[-1], 1, m)
            if lo and hi:
                print(f"  per-code cost at batch 1, {m}: {lengths[-1]} codes / {lengths[0]} codes = ×{lo['codes_per_s'] / hi['codes_per_s']:.2f}")
    for length in lengths:
        plain = get(length, 1, "plain-pytorch")
        if plain and best:
            fastest = max((get(length, 1, m) or {"codes_per_s": 0})["codes_per_s"] for m in ("ar", "jacobi", "sjd", "auto"))
            print(f"  batch 1, {length} codes: fastest vqgpt sampler ×{fastest / plain['codes_per_s']:.2f} the plain-PyTorch loop")


if __name__ == "__main__":
    main()
