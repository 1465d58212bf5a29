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
   drawn) go to the candidate nearest the data, the lowest Fréchet ratio (`choose`);
4. a Fréchet ratio from a few hundred samples is noisy (one held-out-sized subset's varies by
   8–12 % on digits and letters), and a hard bound flips on that noise. So plain sampling, the
   anchor of every bound, draws `anchor_rounds` times as many grids, and a candidate whose ratio
   the bound cannot yet tell from its edge (within `borderline_z` standard errors, the noise
   pooled over every candidate's subsets) draws again, up to `max_rounds` rounds, while it is
   more accurate than every candidate surely inside — the only way it could change the winner;
5. the grid's steps are coarse (temperature 0.7 → 1.0 can cost five points of accuracy), so a winner
   whose sharper neighbour (next lower temperature, next higher guidance) is more accurate but
   outside a limit is not the last word: the setting halfway between them is measured like every
   other candidate (`halfway_steps`; rule 4 applies to it) and the choice is made again. Where the
   winner sits next to a bound, noise in the bound's estimate then moves the choice by half a step,
   not a whole one.

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
from tqdm.auto import tqdm

from .model import PriorSpec
from .sampling import in_precision, resolve_precision, sample

__all__ = ["SelectionConfig", "CodeJudge", "select_sampling", "choose", "settle_the_edge", "halfway_steps",
           "FALLBACK_SAMPLING"]

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
    # The Fréchet bound's noise (docs/design-notes.md): plain sampling, the anchor every candidate is
    # measured against, draws `samples` this many times; a candidate whose ratio lies within
    # `borderline_z` standard errors of the bound draws again, up to `max_rounds` times in all.
    anchor_rounds: int = 4
    max_rounds: int = 4
    borderline_z: float = 2.0
    # Rule 5: the settings halfway between the winner and a sharper, more accurate neighbour outside a
    # limit are measured too (the grid's steps are coarse: 0.7 → 1.0 can cost five points of accuracy).
    halfway: bool = True
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

    def subsets(self, codes: torch.Tensor) -> list[float]:
        """The ratio of each disjoint subset of `codes` as large as the held-out split (a short
        remainder is left out): a Fréchet distance from n rows is biased by ~1/n, so numerator and
        reference are only comparable at equal n."""
        order = torch.randperm(len(codes), generator=torch.Generator().manual_seed(self.seed))
        size = min(self.held_rows, len(codes))
        keep = [part for part in order.split(size) if len(part) == size]
        features = self._project(self._raw(codes))
        return [frechet_distance(features[part.numpy()], self.train) / max(self.reference, 1e-12) for part in keep]

    def __call__(self, codes: torch.Tensor) -> float:
        """The mean over every held-out-sized subset the samples hold: one subset alone is noisy."""
        return float(np.mean(self.subsets(codes)))


def _fd_noise(parts) -> float:
    """The relative standard deviation of one subset's Fréchet ratio, pooled over every candidate
    with two or more subsets (each alone has too few to say); 0 when none has."""
    variances = [np.var(p, ddof=1) / max(np.mean(p), 1e-12) ** 2 for p in parts if len(p) >= 2]
    return float(math.sqrt(np.mean(variances))) if variances else 0.0


def _admissible(candidate: dict, config: SelectionConfig) -> bool:
    """Variety and near-copies within their limits (rule 3, before the Fréchet bound)."""
    return candidate["variety"] >= config.min_variety and candidate["near_copies"] <= config.max_near_copies


def _borderline(candidate: list[float], plain: list[float], bound: float, noise: float, z: float) -> bool:
    """Whether a candidate's mean ratio (over its subsets) lies within z standard errors of `bound` ×
    plain sampling's: the standard error of each mean is noise × mean / √subsets."""
    mean_c, mean_p = float(np.mean(candidate)), float(np.mean(plain))
    error = math.hypot(noise * mean_c / math.sqrt(len(candidate)), bound * noise * mean_p / math.sqrt(len(plain)))
    return abs(mean_c - bound * mean_p) < z * error


def settle_the_edge(candidates: dict[tuple[float, float], dict], parts: dict[tuple[float, float], list[float]],
                    draw_again: Callable[[tuple[float, float]], dict], config: SelectionConfig,
                    rounds: dict[tuple[float, float], int] | None = None) -> float:
    """Rule 4 of the module text, after every candidate's first round (plain sampling's
    `anchor_rounds`): candidates (guidance, temperature) → figures, parts → the Fréchet ratio of each
    of their subsets so far, `rounds` → how many rounds each has drawn (default one). `draw_again(key)`
    draws one more round for `key`, adds its subsets to `parts` and returns its new figures. Returns
    the pooled noise (relative spread of one subset)."""
    plain = (1.0, 1.0)
    noise, bound = _fd_noise(parts.values()), 1.0 + config.max_fd_increase
    rounds = {key: (rounds or {}).get(key, 1) for key in candidates}
    while True:
        allowed = [k for k in candidates if k != plain and _admissible(candidates[k], config)]
        edge = {k for k in allowed if _borderline(parts[k], parts[plain], bound, noise, config.borderline_z)}
        inside = [candidates[k]["accuracy"] for k in allowed
                  if k not in edge and candidates[k]["fd_ratio"] <= bound * candidates[plain]["fd_ratio"]]
        more = [k for k in allowed if k in edge and rounds[k] < config.max_rounds
                and candidates[k]["accuracy"] > max(inside, default=candidates[plain]["accuracy"])]
        if not more:
            return noise
        for key in more:
            candidates[key], rounds[key] = draw_again(key), rounds[key] + 1


def _within_limits(candidates: list[dict], config: SelectionConfig) -> list[dict]:
    """The candidates rule 3 chooses among: variety and near-copies within their limits, and the
    Fréchet ratio at most `max_fd_increase` above plain sampling's (never empty: the most varied,
    then the one nearest the data, when none is)."""
    allowed = [c for c in candidates if _admissible(c, config)]
    allowed = allowed or [max(candidates, key=lambda c: c["variety"])]
    if not all("fd_ratio" in c for c in candidates):
        return allowed
    plain = [c["fd_ratio"] for c in candidates if c["guidance"] == 1.0 and c["temperature"] == 1.0]
    bound = (1.0 + config.max_fd_increase) * (plain[0] if plain else min(c["fd_ratio"] for c in candidates))
    return [c for c in allowed if c["fd_ratio"] <= bound] or [min(allowed, key=lambda c: c["fd_ratio"])]


def halfway_steps(candidates: list[dict], winner: dict, config: SelectionConfig,
                  guidances: tuple[float, ...]) -> list[tuple[float, float]]:
    """Rule 5 of the module text: the settings halfway between the winner and each of its grid
    neighbours one step sharper (the next lower temperature, the next higher guidance) that is more
    accurate but outside a limit — where the most accurate setting within the limits lies. Settings
    already measured are left out."""
    within = {(c["guidance"], c["temperature"]) for c in _within_limits(candidates, config)}
    figures = {(c["guidance"], c["temperature"]): c for c in candidates}
    g, t = winner["guidance"], winner["temperature"]
    steps = []
    for axis, grid in ((1, config.temperatures), (0, guidances)):
        here = (g, t)[axis]
        if here not in grid or grid.index(here) + 1 == len(grid):
            continue
        sharper = (g, grid[grid.index(here) + 1]) if axis == 1 else (grid[grid.index(here) + 1], t)
        if sharper in figures and sharper not in within and figures[sharper]["accuracy"] > winner["accuracy"]:
            half = round((here + sharper[axis]) / 2, 3)
            key = (g, half) if axis == 1 else (half, t)
            if key not in figures:
                steps.append(key)
    return steps


@torch.no_grad()
def choose(candidates: list[dict], config: SelectionConfig, samples: int) -> dict:
    """The winning candidate (rule 3 of the module text). Candidates hold accuracy, variety,
    near_copies and, when features were given, fd_ratio; `samples` is how many grids each drew
    unless a candidate says otherwise (its own `samples`: rule 4 draws some several times)."""
    pool = _within_limits(candidates, config)
    # Most accurate; among those as good within the noise of `samples` draws (one binomial standard
    # error: ±2 points at 90 %, ±1 at 98 %): the one nearest the data (lowest Fréchet ratio), else
    # the mildest setting.
    best = max(pool, key=lambda c: c["accuracy"])
    best_accuracy, drawn = best["accuracy"], max(best.get("samples", samples), 1)  # (a candidate may draw several rounds)
    margin = max(math.sqrt(best_accuracy * (1.0 - best_accuracy) / drawn), 0.5 / drawn)
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
    # one copy in the sampling precision for all candidates (bf16 on a GPU), not one per sample() call
    runner = in_precision(model, resolve_precision("auto", next(model.parameters()).device))
    drawn: dict[tuple[float, float], list[torch.Tensor]] = {}  # (guidance, temperature) → one grid batch per round
    fd_parts: dict[tuple[float, float], list[float]] = {}  # → the Fréchet ratio of every held-out-sized subset
    scores: dict[tuple[float, float], list[tuple[float, float]]] = {}  # → (accuracy, near-copy share) per round

    def measure(key: tuple[float, float], rounds: int) -> dict:
        """Draw `key`'s rounds up to `rounds` (round r with seed + r: every candidate sees the same
        random numbers in a round) and score everything it has drawn."""
        rows = drawn.setdefault(key, [])
        while len(rows) < rounds:
            rows.append(sample(runner, spec, len(labels), class_labels=labels, guidance_scale=key[0],
                               temperature=key[1], batch_size=batch_size,
                               generator=torch.Generator().manual_seed(config.seed + len(rows))).flatten(1))
            scores.setdefault(key, []).append((judge.accuracy(rows[-1], labels),
                                               float((nearest(rows[-1]) < copy_threshold).float().mean())))
            if fd_ratio is not None:
                fd_parts.setdefault(key, []).extend(fd_ratio.subsets(rows[-1]))
            bar.update(1)
        codes, asked = torch.cat(rows), labels.repeat(len(rows))
        accuracy, near_copies = np.mean(scores[key], axis=0)  # rounds are equal in size: the mean over all draws
        figures = {"guidance": key[0], "temperature": key[1], "samples": len(codes),
                   "accuracy": round(float(accuracy), 4),
                   "variety": round(_variety(codes, asked, seed=config.seed) / max(real_variety, 1e-9), 4),
                   "near_copies": round(float(near_copies), 4)}
        if fd_ratio is not None:
            figures["fd_ratio"] = round(float(np.mean(fd_parts[key])), 4)
        logger.info("sampling candidate %s", figures)
        return figures

    plain = (1.0, 1.0)
    keys = [(g, t) for g in guidances for t in config.temperatures]
    first = {key: config.anchor_rounds if key == plain and fd_ratio is not None else 1 for key in keys}
    bar = tqdm(total=sum(first.values()), desc="choosing sampling defaults", unit="round", dynamic_ncols=True)
    candidates = {key: measure(key, rounds) for key, rounds in first.items()}
    noise = None

    def draw_again(key: tuple[float, float]) -> dict:
        bar.total += 1  # rule 4's rounds are known only as they come
        return measure(key, len(drawn[key]) + 1)

    if fd_ratio is not None and plain in candidates:
        noise = settle_the_edge(candidates, fd_parts, draw_again, config)
    halfway = halfway_steps(list(candidates.values()), choose(list(candidates.values()), config, len(labels)),
                            config, guidances) if config.halfway else []
    if halfway:  # rule 5: measured as every candidate was (one round, then rule 4's edge)
        bar.total += len(halfway)
        candidates.update({key: measure(key, 1) for key in halfway})
        if noise is not None:
            noise = settle_the_edge(candidates, fd_parts, draw_again, config, {k: len(v) for k, v in drawn.items()})
    bar.close()
    candidates = list(candidates.values())
    best = choose(candidates, config, len(labels))
    return {
        "guidance": best["guidance"], "temperature": best["temperature"], "top_k": None, "top_p": None,
        "selected_by": "held-out selection (prior/selection.py): most accurate under a code judge with variety "
                       f">= {config.min_variety} of real grids and near-copies <= {config.max_near_copies}"
                       + (f" and a Fréchet ratio at most {config.max_fd_increase:.0%} above plain sampling's"
                          if fd_ratio is not None else " (no Fréchet ratio: no features given)"),
        "judge_accuracy": round(judge_accuracy, 4), "real_variety": round(real_variety, 4),
        **({"fd_reference": round(fd_ratio.reference, 4), "fd_dims": fd_ratio.basis.shape[1]} if fd_ratio else {}),
        "samples_per_candidate": len(labels),
        **({"fd_noise": round(noise, 4), "anchor_rounds": config.anchor_rounds} if noise is not None else {}),
        "halfway": [list(key) for key in halfway],
        "candidates": candidates,
    }
