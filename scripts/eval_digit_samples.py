"""Judge a digits run's samples with an independent classifier (1,000 by default).

    python scripts/eval_digit_samples.py --run demo-run [--num 1000] [--guidance 3.0] [--sampler ar jacobi sjd]

Prints: the classifier's accuracy on held-out real digits (its own sanity check), its
accuracy on class-conditional samples, the class balance of unconditional samples and
the share of samples that are near-copies of training digits. With several --sampler values,
also a two-sample chi-square test of the code histogram at every grid position between the
first sampler and each other one (independent draws: other seeds), Bonferroni-corrected.
"""

import argparse
import json
import os
import platform
import time

import torch

from vqgpt import Pipeline
from vqgpt.pipeline.evaluation.digits import check_digit_samples
from vqgpt.pipeline.settings import SampleConfig


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
                chosen = pipe.resolve(SampleConfig(guidance=scale, temperature=temperature), conditional=True)
                figures["guidance"], figures["temperature"] = chosen.guidance, chosen.temperature
                figures["sampler"] = sampler
                figures["seconds"] = round(time.perf_counter() - t0, 1)
                print(json.dumps(figures))
            for other in args.sampler[1:]:
                print(json.dumps(compare_code_histograms(pipe, args.num, scale, temperature, args.seed,
                                                         args.sampler[0], other)))


def compare_code_histograms(pipe, num: int, guidance: float, temperature: float, seed: int, first: str, other: str) -> dict:
    """Per grid position, a chi-square test that two samplers' class-conditional codes come from
    one distribution; the smallest p-value × the number of positions (Bonferroni)."""
    from scipy.stats import chi2_contingency

    labels = torch.arange(num) % 10
    draws = [pipe.sample_codes(SampleConfig(guidance=guidance, temperature=temperature, batch_size=250, seed=s,
                                            sampler=name), labels=labels).flatten(1)
             for s, name in ((seed, first), (seed + 1, other))]  # other seeds: independent draws
    K, positions = pipe.spec.codebook_size, draws[0].shape[1]
    pvalues = []
    for t in range(positions):
        table = torch.stack([torch.bincount(d[:, t], minlength=K) for d in draws])
        table = table[:, table.sum(0) > 0]
        pvalues.append(1.0 if table.shape[1] < 2 else float(chi2_contingency(table.numpy())[1]))
    return {"two_sample_test": f"{first} vs {other}", "samples": num, "guidance": guidance, "temperature": temperature,
            "positions": positions, "min_p_bonferroni": min(1.0, min(pvalues) * positions),
            "positions_p_below_0.01": sum(p < 0.01 for p in pvalues)}


if __name__ == "__main__":
    main()
