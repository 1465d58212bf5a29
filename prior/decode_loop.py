"""The decoding loop shared by every sampler, and the two ways of deciding a window of codes.

One forward pass reads a window of `width` columns of each row (the last final code, then
drafts) and gives the model's distributions for the next `width` columns. Each is decided:

- `SharedNoise` (samplers "ar" and "jacobi"): the code at column t is argmax(scores_t + G_t), with
  G_t Gumbel noise fixed by (image seed, t) — an exact sample of softmax(scores_t) (Gumbel-max).
  With width 1 that is plain autoregressive sampling. With a wider window it is Jacobi decoding
  with the noise held fixed: every pass recomputes all window columns from the current drafts,
  the drafts the model confirms are final, the first one it does not is replaced by the model's
  own choice. The result is the fixed point of the raster-order recursion, so it is *the same
  codes as "ar"* for the same seeds (up to floating-point ties), only in fewer passes; shared
  noise also keeps drafts stable from pass to pass (a coupling, as in MC-SJD).
- `Speculative` (sampler "sjd", Teng et al. 2024, arXiv:2410.01699): a draft x drawn from q (the
  distribution the previous pass gave its column) is kept with probability min(1, p(x)/q(x)),
  otherwise replaced by a draw from norm(max(0, p − q)) — speculative sampling's rule, so every
  decided code is an exact draw from p. Every window column is updated by that rule (so a draft
  changes only when it must: the maximal coupling of MC-SJD, arXiv:2510.24211); a fresh draft
  (no q yet) counts as q = its one-hot. Same distribution as "ar", different codes per seed.

Either way a row keeps its leading confirmed drafts plus one decided code (≥ 1 per pass), so rows
of a batch move at different speeds. A column entering the window starts as a copy of the code
above it (one grid row up; the rows of an image look alike, so more drafts are confirmed:
docs/design-notes.md).
"""

from __future__ import annotations

from typing import Callable

import torch

from .streams import gumbel, stream_keys, uniform

__all__ = ["SharedNoise", "Speculative", "decode"]

# what a stream of random numbers is for (part of its key): never reuse one for another purpose
NOISE, ACCEPT, RESAMPLE = 1, 2, 3
NOISE_TABLE_MAX = 1 << 22  # below this many numbers (16 MB) a batch's noise is drawn once, up front


class SharedNoise:
    """Code at column t = argmax(scores_t + Gumbel noise of (seed, t)): the same in every pass."""

    def __init__(self, seeds: torch.Tensor, columns: int, codes: int):
        column = torch.arange(columns, device=seeds.device)
        self.keys = stream_keys(seeds[:, None], NOISE, column)  # (b, columns): one stream per grid column
        self.table = gumbel(self.keys, codes) if self.keys.numel() * codes <= NOISE_TABLE_MAX else None

    def choose(self, scores: torch.Tensor, drafts: torch.Tensor, columns: torch.Tensor, step: int):
        """scores FloatTensor[b, W, K] (-inf = excluded), drafts/columns LongTensor[b, W] →
        (codes LongTensor[b, W], kept BoolTensor[b, W]: the draft was what the model chose)."""
        K = scores.shape[-1]
        if self.table is not None:
            noise = self.table.gather(1, columns[..., None].expand(-1, -1, K))  # (b, W, K)
        else:
            noise = gumbel(self.keys.gather(1, columns), K)
        codes = (scores + noise).argmax(-1)
        return codes, codes == drafts

    def shift(self, moved: torch.Tensor) -> None:
        pass


class Speculative:
    """Speculative acceptance of each draft against its proposal distribution q."""

    def __init__(self, seeds: torch.Tensor, width: int):
        self.seeds, self.width = seeds[:, None], width
        self.q = None  # FloatTensor[b, W, K]: proposal of the draft at each window column
        self.has_q = None  # BoolTensor[b, W]: False for fresh drafts (q = their one-hot)
        self.p = None

    def choose(self, scores: torch.Tensor, drafts: torch.Tensor, columns: torch.Tensor, step: int):
        p = torch.softmax(scores, dim=-1)  # (b, W, K)
        if self.q is None:
            self.q, self.has_q = torch.zeros_like(p), torch.zeros(drafts.shape, dtype=torch.bool, device=p.device)
        at = drafts[..., None]
        p_draft = p.gather(-1, at)[..., 0]
        q_draft = torch.where(self.has_q, self.q.gather(-1, at)[..., 0], torch.ones_like(p_draft))
        u = uniform(stream_keys(self.seeds, ACCEPT, columns, step))  # (b, W), fresh in every pass
        kept = u * q_draft < p_draft  # probability min(1, p(x)/q(x))
        residual = torch.where(self.has_q[..., None], (p - self.q).clamp(min=0), p.scatter(-1, at, 0.0))
        empty = residual.sum(-1, keepdim=True) <= 0  # only where the draft is always kept
        residual = torch.where(empty, p, residual)
        noise = gumbel(stream_keys(self.seeds, RESAMPLE, columns, step), p.shape[-1])
        redrawn = (residual.log() + noise).argmax(-1)  # a draw from norm(residual)
        self.p = p
        return torch.where(kept, drafts, redrawn), kept

    def shift(self, moved: torch.Tensor) -> None:
        """The window moved `moved` columns: the next drafts' proposals are this pass's p."""
        index = moved[:, None] + torch.arange(self.width, device=moved.device)  # (b, W)
        self.has_q = index < self.width
        index = index.clamp(max=self.width - 1)[..., None].expand(-1, -1, self.p.shape[-1])
        self.q = self.p.gather(1, index)


def decode(
    decoder: Callable,
    tokens: torch.Tensor,
    b: int,
    first: int,
    last: int,
    width: int,
    scores_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    rule: SharedNoise | Speculative,
    row: int,
) -> dict[str, int]:
    """Fill columns `first` … `last` of `tokens` in place.

    tokens: LongTensor[R, L] (R = b, or 2b with guidance: the b conditional rows, then the same
    codes under the null condition), columns before `first` given; L ≥ last + 2·width + 1.
    row: codes per grid row (where the code above a column is: `row` columns back).
    scores_of(logits[R, W, K], columns[b, W]) → scores[b, W, K] of the predicted columns.
    Returns {"passes": forward passes}. Width 1 never waits for the device (a fixed number of
    passes); wider windows read two numbers back per pass (where the slowest row is).
    """
    device = tokens.device
    R = tokens.shape[0]
    copies = R // b
    column = torch.full((b,), first, dtype=torch.long, device=device)  # next undecided column, per row
    steps = torch.arange(width, device=device)
    if width > 1:  # the first window's drafts: the code above, where there is one
        for col in range(first, min(first + 2 * width, tokens.shape[1])):
            if col - row >= 1:
                tokens[:, col] = tokens[:, col - row]
    passes = 0
    while True:
        if width == 1:
            if first + passes > last:
                break
            lo = first + passes - 1
            hi = lo + 1
        else:
            lo, top = torch.stack([column.min(), column.max()]).tolist()
            if lo > last:
                break
            lo, hi = lo - 1, top - 1 + width
        start = column - 1  # (b,) first input column: the last decided one
        logits = decoder(tokens, start.repeat(copies), width, lo, hi)  # (R, W, K)
        predicted = start[:, None] + steps + 1  # (b, W) the columns these logits predict
        drafts = tokens[:b].gather(1, predicted)
        codes, kept = rule.choose(scores_of(logits, predicted), drafts, predicted, passes)
        if width == 1:
            column = column + 1
        else:
            active = column <= last
            confirmed = kept[:, :-1].long().cumprod(1).sum(1)  # leading drafts the model agreed with
            moved = torch.where(active, confirmed + 1, 0)
            column = torch.minimum(column + moved, torch.full_like(column, last + 1))
            codes = torch.where(active[:, None], codes, drafts)  # finished rows stay as they are
            ahead = predicted + width  # never predicted yet: start them as the code above, else the last prediction
            above = ahead - row
            start_as = torch.where(above >= 1, tokens[:b].gather(1, above.clamp(min=1)), codes[:, -1:].expand_as(ahead))
            tokens.scatter_(1, ahead.repeat(copies, 1), start_as.repeat(copies, 1))
            rule.shift(moved)
        tokens.scatter_(1, predicted.repeat(copies, 1), codes.repeat(copies, 1))
        passes += 1
    return {"passes": passes}
