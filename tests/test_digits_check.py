"""The independent digit check judges real digits as real and noise as noise."""

from __future__ import annotations

import torch

from vqgpt.pipeline.evaluation.digits import DigitJudge
from vqgpt.pipeline.data import load_images


def test_frechet_ratio_separates_real_digits_from_blurred_and_noise():
    judge = DigitJudge.fit(image_size=32)
    train = torch.stack([it["image"] for it in load_images("digits", 32, 1, split="train")])
    assert abs(judge.frechet_ratio(train) - 1.0) < 1e-6  # the reference itself
    blurred = torch.nn.functional.avg_pool2d(train, 9, stride=1, padding=4)  # digits, but washed out
    noise = torch.rand(len(train), 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert 2.0 < judge.frechet_ratio(blurred) < judge.frechet_ratio(noise)
    assert judge.near_copy_mask(train).mean() > 0.99  # a training digit is its own nearest copy
