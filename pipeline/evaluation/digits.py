"""An independent check of generated digits.

A classifier trained on the real digits (which the generated images never touch) judges
whether class-conditional samples show the digit asked for, how balanced unconditional
samples are across classes, how many samples are near-copies of training images, and how far
the samples lie from held-out real digits (Fréchet distance) relative to the training digits.

Both real and generated images are compared in the same feature space: the image pooled
back to the 8×8 resolution the real digits were drawn at.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from vqgpt.prior.selection import frechet_distance

from ..data import load_images
from ..settings import SampleConfig

__all__ = ["DigitJudge", "near_copy_distances", "check_digit_samples"]

logger = logging.getLogger(__name__)


def _features(images: torch.Tensor) -> np.ndarray:
    """FloatTensor[B, C, H, W] in [-1, 1] → float64[B, 64]: grey, pooled to 8×8, in [0, 1]."""
    grey = images.float().mean(dim=1, keepdim=True)  # (B, 1, H, W)
    pooled = F.adaptive_avg_pool2d(grey, 8)  # (B, 1, 8, 8)
    return ((pooled + 1) / 2).flatten(1).double().numpy()


def _stack(source) -> tuple[torch.Tensor, np.ndarray]:
    items = [source[i] for i in range(len(source))]
    return torch.stack([it["image"] for it in items]), np.array([it["label"] for it in items])


@dataclass
class DigitJudge:
    """An RBF-SVM on real digits (train split); ``real_accuracy`` is on the held-out split."""

    classifier: object
    train_features: np.ndarray  # (N, 64) real training digits, for near-copy search
    held_features: np.ndarray  # (M, 64) real held-out digits, for the Fréchet ratio
    real_accuracy: float
    copy_threshold: float  # distance under which a sample counts as a near-copy

    @classmethod
    def fit(cls, image_size: int, seed: int = 0, copy_quantile: float = 0.05) -> "DigitJudge":
        train_x, train_y = _stack(load_images("digits", image_size, 1, split="train", seed=seed))
        val_x, val_y = _stack(load_images("digits", image_size, 1, split="validation", seed=seed))
        train_f, val_f = _features(train_x), _features(val_x)
        clf = make_pipeline(StandardScaler(), SVC(C=10.0, gamma="scale"))
        clf.fit(train_f, train_y)
        real_acc = float((clf.predict(val_f) == val_y).mean())
        # Held-out real digits are by construction not copies of training digits: a sample
        # closer to its nearest training image than all but `copy_quantile` of them is one.
        val_nn = near_copy_distances(val_f, train_f)
        threshold = float(np.quantile(val_nn, copy_quantile))
        return cls(clf, train_f, val_f, real_acc, threshold)

    def predict(self, images: torch.Tensor) -> np.ndarray:
        """FloatTensor[B, C, H, W] in [-1, 1] → int[B] predicted digit."""
        return self.classifier.predict(_features(images))

    def near_copy_mask(self, images: torch.Tensor) -> np.ndarray:
        return near_copy_distances(_features(images), self.train_features) < self.copy_threshold

    def frechet_ratio(self, images: torch.Tensor) -> float:
        """Fréchet distance of the images to held-out real digits over that of the training digits
        to them, in the 8×8 feature space (1 = as close as real digits; the issue's goal ≤ 2)."""
        return frechet_distance(_features(images), self.held_features) / frechet_distance(
            self.train_features, self.held_features)


def near_copy_distances(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row of ``features`` to its nearest row of ``reference``."""
    d2 = (features**2).sum(1)[:, None] + (reference**2).sum(1)[None, :] - 2 * features @ reference.T
    return np.sqrt(np.clip(d2, 0, None).min(axis=1))


def check_digit_samples(pipe, num_samples: int = 1000, guidance_scale: float | None = None, seed: int = 0,
                        temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                        judge: DigitJudge | None = None, sampler: str = "auto") -> dict[str, float]:
    """Sample ``num_samples`` class-conditional digits (balanced over the classes) and as many
    unconditional ones; judge them. ``pipe`` is a :class:`vqgpt.Pipeline` on digits; guidance and
    temperature default to what the prior recorded (as ``vqgpt sample`` does)."""
    if pipe.spec.num_classes != 10:
        raise ValueError("the digit check needs a prior trained on the 10 digit classes")
    if num_samples < 10:
        raise ValueError(f"the digit check needs at least 10 samples (one per class), got {num_samples}")
    judge = judge or DigitJudge.fit(pipe.tokenizer.config.image_size)
    labels = torch.arange(num_samples) % 10
    settings = SampleConfig(guidance=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                            batch_size=250, sampler=sampler)
    cond = pipe.decode(pipe.sample_codes(settings, labels=labels))
    pred = judge.predict(cond)
    accuracy = float((pred == labels.numpy()).mean())
    uncond = pipe.decode(pipe.sample_codes(dataclasses.replace(settings, num=num_samples, guidance=1.0)))
    counts = np.bincount(judge.predict(uncond), minlength=10)
    shares = counts / counts.sum()
    copies = float(judge.near_copy_mask(torch.cat([cond, uncond])).mean())
    figures = {
        "real_digit_accuracy": judge.real_accuracy,
        "conditional_accuracy": accuracy,
        "unconditional_min_class_share": float(shares.min()),
        "unconditional_max_class_share": float(shares.max()),
        "near_copy_share": copies,
        "fd_ratio": judge.frechet_ratio(cond),
        "samples": num_samples,
        "guidance": guidance_scale,
        "sampler": sampler,
    }
    for c in range(10):
        figures[f"acc_{c}"] = float((pred[labels.numpy() == c] == c).mean())
    return figures
