#!/usr/bin/env python
"""Benchmark the VQGAN tokenizer on the bundled data sets.

For each data set (``digits``, ``photos``) it trains the matching preset (or loads a trained
tokenizer with ``--tokenizer``) and prints, on the held-out split: PSNR, SSIM, codebook usage,
perplexity and rFID (``vqgpt evaluate tokenizer``'s code: rFID needs the Inception weights file,
``--inception-weights`` or the torch hub cache), plus training images/s and encode images/s.

    python scripts/bench_tokenizer.py                         # both, preset step counts
    python scripts/bench_tokenizer.py --data digits
    python scripts/bench_tokenizer.py --data photos --max-steps 300
    python scripts/bench_tokenizer.py --data digits --tokenizer runs/digits/tokenizer
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vqgpt import tokenizer as tk  # noqa: E402
from vqgpt.pipeline import derived  # noqa: E402
from vqgpt.pipeline.demo import DEMO_TOKENIZER  # noqa: E402
from vqgpt.pipeline.evaluation import Evaluator, Images, evaluate_tokenizer  # noqa: E402
from vqgpt.pipeline.data import load_images  # noqa: E402


def settings_for(spec: str) -> dict:
    """What a user gets: the demo's own settings for digits; for any other source the `small`
    preset over the defaults `vqgpt train-tokenizer` derives from the data."""
    if spec == "digits":
        return DEMO_TOKENIZER
    defaults, _ = derived.tokenizer_defaults(derived.survey(spec), torch.cuda.is_available())
    preset = tk.PRESETS["small"]
    return {section: {**defaults.get(section, {}), **preset.get(section, {})} for section in ("model", "train")}


@torch.no_grad()
def encode_throughput(model: tk.VQGAN, images: torch.Tensor, batch_size: int = 128, min_seconds: float = 1.0) -> float:
    """Images per second of ``model.encode`` (repeated until ``min_seconds`` have passed)."""
    model.encode(images[:batch_size])  # warm-up
    done, start = 0, time.perf_counter()
    while True:
        for i in range(0, len(images), batch_size):
            model.encode(images[i : i + batch_size])
            done += len(images[i : i + batch_size])
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def bench_one(spec: str, args: argparse.Namespace, work: Path, evaluator: Evaluator) -> dict:
    preset = settings_for(spec)
    if args.tokenizer:
        model = tk.VQGAN.from_pretrained(args.tokenizer)
        model_config = model.config
        train_ips = float("nan")
    else:
        model_config = tk.VQGANConfig(**preset["model"])
        train_over = dict(preset["train"])
        if args.max_steps is not None:
            train_over.update(max_steps=args.max_steps, disc_start=min(train_over.get("disc_start", 0), int(args.max_steps * 0.75)))
        train_config = tk.TokenizerTrainConfig(**{**train_over, "cpu": args.cpu, "seed": args.seed})
    val = load_images(spec, model_config.image_size, model_config.channels, split="validation")
    if not args.tokenizer:
        train = load_images(spec, model_config.image_size, model_config.channels, split="train")
        summary = tk.train_tokenizer(model_config, train_config, train, val, work / spec, overwrite=True)
        train_ips = summary["train_images_per_sec"]
        model = tk.VQGAN.from_pretrained(work / spec)
    model.eval()
    metrics = evaluate_tokenizer(model, Images(val, "validation", 0, val.split_fraction), evaluator)
    images = torch.stack([val[i]["image"] for i in range(len(val))])
    return {
        "data": spec,
        "grid": list(model_config.grid_size),
        "codebook_size": model_config.codebook_size,
        "psnr": metrics["psnr"],
        "ssim": metrics["ssim"],
        "codebook_usage_pct": metrics["codebook_usage"],
        "perplexity": metrics["perplexity"],
        "val_images": metrics["num_images"],
        "rfid": metrics["rfid"],
        "rfid_absent": metrics["rfid_absent"],
        "protocol": metrics["protocol"],
        "train_images_per_sec": train_ips,
        "encode_images_per_sec": encode_throughput(model, images),
        "fingerprint": model.fingerprint(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["digits", "photos"], help="bundled names or image folders")
    parser.add_argument("--tokenizer", help="evaluate this trained tokenizer folder instead of training")
    parser.add_argument("--max-steps", type=int, help="override the preset's training steps")
    parser.add_argument("--out", help="where trained tokenizers go (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    parser.add_argument("--json", action="store_true", help="print one JSON line per data set")
    parser.add_argument("--inception-weights", help="FID Inception weights file (default: the torch hub cache)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    evaluator = Evaluator.create(args.inception_weights, batch_size=128)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.out) if args.out else Path(tmp)
        rows = []
        for spec in args.data:
            start = time.perf_counter()
            row = bench_one(spec, args, work, evaluator)
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if not args.json:
        header = f"{'data':8} {'grid':>6} {'K':>6} {'PSNR dB':>8} {'SSIM':>6} {'usage %':>8} {'perplex':>8} {'rFID':>8} {'train img/s':>12} {'encode img/s':>13} {'seconds':>8}"
        print(header)
        for r in rows:
            rfid = f"{r['rfid']:>8.2f}" if r["rfid"] is not None else f"{'—':>8}"
            print(
                f"{r['data']:8} {r['grid'][0]:>3}x{r['grid'][1]:<2} {r['codebook_size']:>6} {r['psnr']:>8.2f} {r['ssim']:>6.3f} "
                f"{r['codebook_usage_pct']:>8.1f} {r['perplexity']:>8.1f} {rfid} {r['train_images_per_sec']:>12.1f} "
                f"{r['encode_images_per_sec']:>13.1f} {r['seconds']:>8.1f}"
            )
        for r in rows:
            print(f"{r['data']}: {r['protocol']}" if r["rfid"] is not None else f"{r['data']}: rFID absent: {r['rfid_absent']}")


if __name__ == "__main__":
    main()
