"""Benchmark the prior: sampling tokens/s on a 16×16 grid (256 codes) at batch 1 and 32, with the
KV cache and with full recomputation at every step ("ar" sampler), and training tokens/s.
(scripts/bench_sampling.py compares the samplers and caches in detail.)

    .venv/bin/python scripts/bench_prior.py                 # digits-size model, < 3 min on 2 CPU cores
    .venv/bin/python scripts/bench_prior.py --preset small --device cuda --train-batch 64

Weights are random: speed does not depend on what the model has learnt.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from vqgpt.prior import PRESETS, PriorConfig, PriorSpec, build_prior_model, sample
from vqgpt.prior.train import param_groups, sequence_nll


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sampling(model, spec: PriorSpec, batch: int, use_cache: bool, device: torch.device, new_codes: int) -> float:
    """Seconds to draw the last `new_codes` codes of `batch` grids (the first ones given as a
    prefix; new_codes = 256 draws whole grids). One short warm-up call first."""
    gen = torch.Generator(device).manual_seed(0)
    labels = torch.arange(batch) % spec.num_classes if spec.num_classes else None
    warm = torch.zeros(batch, spec.num_codes - 2, dtype=torch.long)
    kv_cache = "auto" if use_cache else "none"
    sample(model, spec, batch, labels, generator=gen, prefix_codes=warm, kv_cache=kv_cache, sampler="ar", batch_size=batch)
    prefix = torch.zeros(batch, spec.num_codes - new_codes, dtype=torch.long)
    sync(device)
    start = time.perf_counter()
    sample(model, spec, batch, labels, generator=gen, prefix_codes=prefix, kv_cache=kv_cache, sampler="ar", batch_size=batch)
    sync(device)
    return time.perf_counter() - start


def time_training(model, spec: PriorSpec, batch: int, steps: int, device: torch.device, bf16: bool) -> float:
    """Training tokens/s (forward + backward + AdamW step) on random sequences."""
    model.train()
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)
    seqs = torch.randint(0, spec.codebook_size, (batch, spec.num_codes + 1), device=device)
    seqs[:, 0] = spec.class_token_offset
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    elapsed = 0.0
    for i in range(steps + 1):  # the first step is warm-up
        sync(device)
        start = time.perf_counter()
        with autocast:
            loss = sequence_nll(model, seqs, spec).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i:
            elapsed += time.perf_counter() - start
    model.eval()
    return steps * batch * spec.num_codes / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mini", choices=list(PRESETS), help="model size preset")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--codebook-size", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batches", default="1,32", help="sampling batch sizes")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--new-codes", type=int, default=32,
                        help="codes drawn per grid (the rest is a given prefix); 256 = whole grids (slow without cache)")
    parser.add_argument("--skip-full", action="store_true", help="skip full recomputation (slow for big models)")
    args = parser.parse_args()

    device = torch.device(args.device)
    spec = PriorSpec(codebook_size=args.codebook_size, grid=(16, 16), class_names=tuple(map(str, range(args.classes))))
    torch.manual_seed(0)
    config = PriorConfig(**PRESETS[args.preset]["model"])
    model = build_prior_model(config, spec).to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"{os.cpu_count()} cores | torch {torch.__version__} ({torch.get_num_threads()} threads) | device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"model: preset {args.preset!r}, {config.architecture}, {params / 1e6:.2f}M parameters, "
          f"vocab {spec.vocab_size}, grid 16×16 = {spec.num_codes} codes")

    if not 1 <= args.new_codes <= spec.num_codes:
        parser.error(f"--new-codes must be in 1..{spec.num_codes}")
    n = args.new_codes
    print(f"sampling: codes {spec.num_codes - n}..{spec.num_codes - 1} of each 16×16 grid drawn "
          f"(first {spec.num_codes - n} given as prefix; --new-codes 256 for whole grids)")
    for batch in (int(b) for b in args.batches.split(",")):
        cached = time_sampling(model, spec, batch, True, device, n)
        line = f"sampling batch {batch:>3}: KV cache {batch * n / cached:>9.0f} tokens/s ({cached:.2f} s)"
        if not args.skip_full:
            full = time_sampling(model, spec, batch, False, device, n)
            line += (f" | full recomputation {batch * n / full:>8.0f} tokens/s ({full:.2f} s)"
                     f" | cache speed-up ×{full / cached:.1f}")
        print(line, flush=True)

    bf16 = device.type == "cuda"
    tps = time_training(model, spec, args.train_batch, args.train_steps, device, bf16)
    print(f"training: {tps:.0f} tokens/s (batch {args.train_batch} × {spec.num_codes} codes, "
          f"{'bf16 autocast' if bf16 else 'fp32'}, forward+backward+AdamW)")


if __name__ == "__main__":
    main()
