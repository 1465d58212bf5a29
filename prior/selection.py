"""Sampling defaults chosen on held-out data at the end of training, for data nobody tuned them for.

Classifier-free guidance and temperature trade how clearly a sample shows its class against how
varied the samples are, and the best trade differs from one data set to the next. So
`train-prior` ends by choosing them itself, with nothing but integer grids:

1. a *code judge* — a linear classifier over one-hot codes per position, trained on the
   training rows — learns to tell the classes apart; its accuracy on the held-out rows says
   how far it can be trusted;
2. every candidate (guidance × temperature) draws the same number of grids per class; each is
   scored by the judge's accuracy on them, by their *variety* (the mean Hamming distance between
   two grids of the same class, relative to that of held-out real grids), by their near-copies
   of training rows and — when the caller passes `features` (the pipeline passes the tokenizer's
   decoded pixels) — by their *Fréchet ratio*: the Fréchet distance between the samples and the
   un-augmented training rows, over that between the held-out rows and them (1 = as close to the
   data as unseen real images are; `FrechetRatio`). Guidance and low temperatures buy
   accuracy with distribution;
3. the winner is the most accurate candidate whose variety stays ≥ `min_variety` of the real
   one, whose near-copies of training rows stay rare and whose Fréchet ratio is at most
   `max_fd_increase` above that of plain sampling (guidance 1, temperature 1: the distribution
   the model learnt) — sharper classes, but not at the cost of looking less like real data;
   ties (accuracies within one binomial standard error of the best, the noise of the samples
   drawn) go to the candidate nearest the data, the lowest Fréchet ratio (`choose`).

The choice, the figures of every candidate and how they were measured are recorded in the
prior's `vqgpt_prior.json` (`sampling`), and `vqgpt sample` / `Pipeline` use them by default.
The measurements behind each setting of `SelectionConfig` are in docs/design-notes.md.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .model import PriorSpec
from .sampling import in_precision, resolve_precision, sample

__all__ = ["SelectionConfig", "CodeJudge", "select_sampling", "choose", "FALLBACK_SAMPLING"]

logger = logging.getLogger(__name__)

# Used when no selection could run (unconditional prior, too few rows, an untrustworthy judge):
# plain sampling, the distribution the model learnt.
FALLBACK_SAMPLING = {"guidance": 1.0, "temperature": 1.0, "top_k": None, "top_p": None}


@dataclass(frozen=True)
class SelectionConfig:
    guidances: tuple[float, ...] = (1.0, 1.5, 2.0)
    temperatures: tuple[float, ...] = (1.0, 0.7, 0.5, 0.35)
    samples: int = 520  # grids drawn per candidate (spread evenly over the classes)
    min_variety: float = 0.8  # same-class Hamming variety, relative to held-out real grids
    max_near_copies: float = 0.1  # share of samples closer to a training row than 95 % of held-out rows are
    max_fd_increase: float = 0.25  # Fréchet ratio allowed above plain sampling's (guidance 1, temperature 1)
    fd_dims: int = 64  # the Fréchet distance is taken in the top principal components of the features
    min_judge_accuracy: float = 0.5  # below this on held-out rows, the judge's verdicts are not used
    seed: int = 0


class CodeJudge(torch.nn.Module):
    """Linear classifier over code grids: logit_c = b_c + Σ_positions W[position, code, c]."""

    def __init__(self, num_codes: int, codebook_size: int, num_classes: int):
        super().__init__()
        self.codebook_size = codebook_size
        self.weight = torch.nn.Embedding(num_codes * codebook_size, num_classes)
        torch.nn.init.zeros_(self.weight.weight)
        self.bias = torch.nn.Parameter(torch.zeros(num_classes))
        self.register_buffer("offsets", torch.arange(num_codes) * codebook_size)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes LongTensor[B, h·w] → logits FloatTensor[B, C]."""
        return self.weight(codes + self.offsets).sum(dim=1) + self.bias  # (B, C)

    @classmethod
    def fit(cls, codes: torch.Tensor, labels: torch.Tensor, spec: PriorSpec, steps: int = 300,
            weight_decay: float = 1e-3, seed: int = 0, batch_size: int = 2048) -> "CodeJudge":
        """Adam on random batches of `batch_size` rows (the whole set when smaller): the embedding's
        backward pass costs in proportion to the rows, and small batches judge about as well."""
        torch.manual_seed(seed)
        judge = cls(spec.num_codes, spec.codebook_size, spec.num_classes)
        optimizer = torch.optim.Adam(judge.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(seed)
        with torch.enable_grad():
            for _ in range(steps):
                rows = torch.randint(0, len(codes), (batch_size,), generator=g) if len(codes) > batch_size else slice(None)
                loss = F.cross_entropy(judge(codes[rows]), labels[rows]) + weight_decay * judge.weight.weight.square().sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return judge.eval()

    @torch.no_grad()
    def accuracy(self, codes: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self(codes).argmax(dim=1) == labels).float().mean())


def _variety(codes: torch.Tensor, labels: torch.Tensor, pairs: int = 2000, seed: int = 0) -> float:
    """Mean Hamming distance (share of positions) between random pairs of grids of one class."""
    g = torch.Generator().manual_seed(seed)
    distances = []
    for c in labels.unique():
        rows = codes[labels == c]
        if len(rows) < 2:
            continue
        n = min(pairs, len(rows) * (len(rows) - 1))
        a, b = torch.randint(0, len(rows), (2, n), generator=g)
        keep = a != b
        distances.append((rows[a[keep]] != rows[b[keep]]).float().mean(dim=1))
    return float(torch.cat(distances).mean()) if distances else 0.0


class NearestGrid:
    """Hamming distance (share of positions) of grids [N, P] to their nearest reference grid [M, P]:
    1 − (matching positions) / P, the matches counted by products of one-hot matrices (the
    reference's one-hot blocks, at most 64 MB each, are made once)."""

    def __init__(self, reference: torch.Tensor, codebook_size: int):
        self.codebook_size, self.positions = codebook_size, reference.shape[1]
        per_block = max(1, (1 << 24) // (self.positions * codebook_size))
        self.blocks = [F.one_hot(b, codebook_size).flatten(1).float().T for b in reference.split(per_block)]  # (P·K, m)

    def __call__(self, codes: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        best = torch.zeros(len(codes))
        for start in range(0, len(codes), chunk):
            part = F.one_hot(codes[start:start + chunk], self.codebook_size).flatten(1).float()  # (c, P·K)
            for ref in self.blocks:
                best[start:start + chunk] = torch.maximum(best[start:start + chunk], (part @ ref).max(dim=1).values)
        return 1.0 - best / self.positions


def _grids(split) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(codes LongTensor[N, h·w], labels LongTensor[N], augmented BoolTensor-like ndarray[N])."""
    rows = split.table[:]  # formatted to the codes and labels only
    codes = torch.as_tensor(np.asarray(rows["codes"]).astype(np.int64)).flatten(1)  # (N, h·w)
    table = split.table
    sources = table.with_format(None)["source"] if "source" in table.column_names else [""] * len(codes)
    augmented = np.array(["#" in str(src) for src in sources], dtype=bool)  # "file#crop3", "file#flip"
    return codes, torch.as_tensor(np.asarray(rows["label"]).astype(np.int64)), augmented


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of a [N, D] and b [M, D]:
    |μa − μb|² + tr Σa + tr Σb − 2 tr (Σa^½ Σb Σa^½)^½ (symmetric eigendecompositions only)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ sb @ root_a)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb)
                 - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


class FrechetRatio:
    """Fréchet distance of sampled grids to the training images, relative to that of the held-out
    images, in the top `dims` principal components of `features(grids)`: 1 = the samples sit as close
    to the data as unseen real images do.

    The reference is the larger set, the un-augmented training rows (at most `max_rows`): Fréchet
    distances from a few hundred rows carry an estimation bias of their own, which against a small
    held-out split swamps the differences between settings."""

    def __init__(self, features: Callable[[torch.Tensor], torch.Tensor], spec: PriorSpec, train_codes: torch.Tensor,
                 held_codes: torch.Tensor, dims: int, seed: int = 0, max_rows: int = 4000):
        self.features, self.spec, self.seed, self.held_rows = features, spec, seed, len(held_codes)
        g = torch.Generator().manual_seed(seed)
        train = self._raw(train_codes[torch.randperm(len(train_codes), generator=g)[:max_rows]])
        self.mean = train.mean(0)
        _, _, vt = np.linalg.svd(train - self.mean, full_matrices=False)
        self.basis = vt[: max(1, min(dims, len(train) - 1, len(held_codes) - 1))].T  # (D, d)
        self.train = self._project(train)
        self.reference = frechet_distance(self._project(self._raw(held_codes)), self.train)

    def _raw(self, codes: torch.Tensor) -> np.ndarray:
        out = self.features(codes.view(-1, *self.spec.grid))
        return torch.as_tensor(out).flatten(1).double().cpu().numpy()

    def _project(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) @ self.basis

    def __call__(self, codes: torch.Tensor) -> float:
        # Subsets of as many samples as there are held-out rows: a Fréchet distance from n rows is
        # biased by ~1/n, so numerator and reference are only comparable at equal n; the mean over
        # every disjoint subset the samples hold, as one subset alone is noisy.
        order = torch.randperm(len(codes), generator=torch.Generator().manual_seed(self.seed))
        size = min(self.held_rows, len(codes))
        subsets = [keep for keep in order.split(size) if len(keep) == size]  # a short remainder is left out
        distances = [frechet_distance(self._project(self._raw(codes[keep])), self.train) for keep in subsets]
        return float(np.mean(distances)) / max(self.reference, 1e-12)


@torch.no_grad()
def choose(candidates: list[dict], config: SelectionConfig, samples: int) -> dict:
    """The winning candidate (rule 3 of the module text). Candidates hold accuracy, variety,
    near_copies and, when features were given, fd_ratio; `samples` is how many grids each drew."""
    allowed = [c for c in candidates
               if c["variety"] >= config.min_variety and c["near_copies"] <= config.max_near_copies]
    allowed = allowed or [max(candidates, key=lambda c: c["variety"])]
    pool = allowed
    if all("fd_ratio" in c for c in candidates):  # no further from held-out rows than plain sampling, ± max_fd_increase
        plain = [c["fd_ratio"] for c in candidates if c["guidance"] == 1.0 and c["temperature"] == 1.0]
        bound = (1.0 + config.max_fd_increase) * (plain[0] if plain else min(c["fd_ratio"] for c in candidates))
        pool = [c for c in allowed if c["fd_ratio"] <= bound] or [min(allowed, key=lambda c: c["fd_ratio"])]
    # Most accurate; among those as good within the noise of `samples` draws (one binomial standard
    # error: ±2 points at 90 %, ±1 at 98 %): the one nearest the data (lowest Fréchet ratio), else
    # the mildest setting.
    best_accuracy = max(c["accuracy"] for c in pool)
    margin = max(math.sqrt(best_accuracy * (1.0 - best_accuracy) / max(samples, 1)), 0.5 / max(samples, 1))
    close = [c for c in pool if c["accuracy"] >= best_accuracy - margin]
    return min(close, key=lambda c: (c.get("fd_ratio", 0.0), (c["guidance"] - 1.0) + (1.0 - c["temperature"])))


def select_sampling(model, spec: PriorSpec, train, validation, config: SelectionConfig = SelectionConfig(),
                    batch_size: int = 256,
                    features: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Choose guidance and temperature for `model` on the held-out rows; returns the record stored
    in the prior's JSON: the chosen settings plus how they were chosen.

    features: code grids LongTensor[B, h, w] → FloatTensor[B, D], what the grids look like (the
    pipeline passes the tokenizer's decoded pixels); without it the Fréchet ratio is not used."""
    record = dict(FALLBACK_SAMPLING)
    if spec.num_classes < 2:
        return {**record, "selected_by": "default: an unconditional prior samples plainly"}
    train_codes, train_labels, augmented = _grids(train)
    val_codes, val_labels, _ = _grids(validation)
    known = (train_labels >= 0)
    originals = train_codes[torch.as_tensor(~augmented)]  # what held-out images look like: no crops, no flips
    train_codes, train_labels = train_codes[known], train_labels[known]
    held = val_labels >= 0
    val_codes, val_labels = val_codes[held], val_labels[held]
    if len(val_codes) < 2 * spec.num_classes or spec.num_codes * spec.codebook_size * spec.num_classes > 50_000_000:
        return {**record, "selected_by": "default: too few held-out rows or too large a grid to choose on"}
    judge = CodeJudge.fit(train_codes, train_labels, spec, seed=config.seed)
    judge_accuracy = judge.accuracy(val_codes, val_labels)
    if judge_accuracy < config.min_judge_accuracy:
        return {**record, "judge_accuracy": judge_accuracy,
                "selected_by": f"default: the code judge reads only {judge_accuracy:.0%} of held-out rows"}
    real_variety = _variety(val_codes, val_labels, seed=config.seed)
    nearest = NearestGrid(train_codes, spec.codebook_size)
    copy_threshold = float(torch.quantile(nearest(val_codes), 0.05))
    per_class = max(2, math.ceil(config.samples / spec.num_classes))
    labels = torch.arange(spec.num_classes).repeat_interleave(per_class)
    fd_ratio = None
    if features is not None and len(originals) >= 8:
        fd_ratio = FrechetRatio(features, spec, originals, val_codes, config.fd_dims, config.seed)
    guidances = config.guidances if spec.has_null_condition else (1.0,)
    candidates = []
    # one copy in the sampling precision for all candidates (bf16 on a GPU), not one per sample() call
    runner = in_precision(model, resolve_precision("auto", next(model.parameters()).device))
    for guidance in guidances:
        for temperature in config.temperatures:
            codes = sample(runner, spec, len(labels), class_labels=labels, guidance_scale=guidance,
                           temperature=temperature, batch_size=batch_size,
                           generator=torch.Generator().manual_seed(config.seed)).flatten(1)
            variety = _variety(codes, labels, seed=config.seed) / max(real_variety, 1e-9)
            near_copies = float((nearest(codes) < copy_threshold).float().mean())
            candidates.append({"guidance": guidance, "temperature": temperature,
                               "accuracy": round(judge.accuracy(codes, labels), 4), "variety": round(variety, 4),
                               "near_copies": round(near_copies, 4)})
            if fd_ratio is not None:
                candidates[-1]["fd_ratio"] = round(fd_ratio(codes), 4)
            logger.info("sampling candidate %s", candidates[-1])
    best = choose(candidates, config, len(labels))
    return {
        "guidance": best["guidance"], "temperature": best["temperature"], "top_k": None, "top_p": None,
        "selected_by": "held-out selection (prior/selection.py): most accurate under a code judge with variety "
                       f">= {config.min_variety} of real grids and near-copies <= {config.max_near_copies}"
                       + (f" and a Fréchet ratio at most {config.max_fd_increase:.0%} above plain sampling's"
                          if fd_ratio is not None else " (no Fréchet ratio: no features given)"),
        "judge_accuracy": round(judge_accuracy, 4), "real_variety": round(real_variety, 4),
        **({"fd_reference": round(fd_ratio.reference, 4), "fd_dims": fd_ratio.basis.shape[1]} if fd_ratio else {}),
        "samples_per_candidate": len(labels), "candidates": candidates,
    }
