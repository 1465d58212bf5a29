"""Judge a digits run's samples with an independent classifier (1,000 by default).

    python scripts/eval_digit_samples.py --run demo-run [--num 1000] [--guidance 3.0] [--sampler ar jacobi sjd]

Prints: the classifier's accuracy on held-out real digits (its own sanity check), its
accuracy on class-conditional samples, the class balance of unconditional samples and
the share of samples that are near-copies of training digits.
"""

import argparse
import json
import os
import platform
import time

import torch

from vqgpt import Pipeline
from vqgpt.pipeline.digits_check import check_digit_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="demo-run", help="run folder with tokenizer/ and prior/")
    parser.add_argument("--num", type=int, default=1000, help="samples per check")
    parser.add_argument("--guidance", type=float, nargs="+", default=[None],
                        help="CFG scales to try (default: the prior's recorded choice, as `vqgpt sample`)")
    parser.add_argument("--temperature", type=float, nargs="+", default=[None],
                        help="temperatures to try (default: the prior's recorded choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", nargs="+", default=["auto"], choices=["auto", "ar", "jacobi", "sjd"],
                        help="samplers to compare (jacobi draws the same images as ar; sjd other ones)")
    args = parser.parse_args()
    pipe = Pipeline.from_pretrained(args.run, device="cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    for scale in args.guidance:
        for temperature in args.temperature:
            for sampler in args.sampler:
                t0 = time.perf_counter()
                figures = check_digit_samples(pipe, num_samples=args.num, guidance_scale=scale,
                                              temperature=temperature, seed=args.seed, sampler=sampler)
                figures["guidance"], figures["temperature"] = pipe.sampling_defaults(True) if scale is None and \
                    temperature is None else (scale, temperature)
                figures["sampler"] = sampler
                figures["seconds"] = round(time.perf_counter() - t0, 1)
                print(json.dumps(figures))


if __name__ == "__main__":
    main()
