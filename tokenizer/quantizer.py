"""Vector quantizer with low-dimensional codes, l2-normalised (ViT-VQGAN / LlamaGen style) or plain
Euclidean (taming-transformers, diffusers: for imported tokenizers).

The encoder output is projected to ``codebook_dim`` (e.g. 8) outside this module; here each
vector is (l2-normalised and) snapped to the nearest (l2-normalised) codebook entry. Three things
keep the codebook alive:

- k-means initialisation of the codebook on the first training batch,
- usage tracking ("training steps since last picked", summed over processes) with restart
  of dead codes from random recent encoder outputs,
- low-dimensional, normalised lookups (cosine similarity), which spread codes evenly.

Losses (van den Oord et al. 2017): the codebook loss ``||sg[z_e] - z_q||²`` moves the codes,
the commitment loss ``β ||z_e - sg[z_q]||²`` moves the encoder. Gradients reach the encoder
through the straight-through estimator ``z_e + sg[z_q - z_e]``.

Distances are computed in fp32 (even under autocast) and in chunks of rows, so a
16,384-entry codebook never needs the full N×K matrix at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["VectorQuantizer", "QuantizerOutput", "nearest_codes", "codebook_stats", "code_histogram", "perplexity"]


def _squared_distances(z: torch.Tensor, codebook: torch.Tensor, code_sq: torch.Tensor) -> torch.Tensor:
    """||z||² - 2 z·e + ||e||² for rows z (n, D) fp32 against every code (K, D): (n, K), unclamped."""
    return z.pow(2).sum(dim=1, keepdim=True) - 2.0 * z @ codebook.t() + code_sq


def nearest_codes(
    z: torch.Tensor, codebook: torch.Tensor, chunk_rows: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index and squared distance of the nearest codebook row for every row of ``z``.

    z: (N, D), codebook: (K, D). Computed in fp32 with autocast disabled, ``chunk_rows`` rows
    of ``z`` at a time (peak memory chunk_rows × K instead of N × K).
    Returns (indices LongTensor[N], distances FloatTensor[N]).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float()
        codebook = codebook.float()
        code_sq = codebook.pow(2).sum(dim=1)  # (K,)
        indices, distances = [], []
        for start in range(0, z.shape[0], chunk_rows):
            best, idx = _squared_distances(z[start : start + chunk_rows], codebook, code_sq).min(dim=1)
            indices.append(idx)
            distances.append(best.clamp_min(0.0))
        if not indices:
            return z.new_zeros(0, dtype=torch.long), z.new_zeros(0)
        return torch.cat(indices), torch.cat(distances)


def code_histogram(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each code occurs in ``codes`` (any shape) → LongTensor[codebook_size]."""
    return torch.bincount(codes.reshape(-1).long(), minlength=codebook_size)


def perplexity(histogram: torch.Tensor) -> torch.Tensor:
    """``exp(entropy)`` of the code distribution given by ``histogram`` (counts per code, any
    numeric dtype) → scalar float tensor: K when perfectly uniform, 1 for one code, 0 when empty.
    The one perplexity of vqgpt: batches, data sets and token datasets all use it."""
    counts = histogram.double()
    total = counts.sum()
    if total <= 0:
        return torch.zeros((), dtype=torch.float64, device=counts.device)
    probs = counts / total
    return torch.exp(-torch.special.xlogy(probs, probs).sum())


def codebook_stats(histogram: torch.Tensor) -> tuple[float, float]:
    """(usage fraction, perplexity) of a code histogram (counts per code, e.g. summed over a
    whole data set). Usage is the fraction of codes used at least once."""
    return float((histogram > 0).double().mean()), float(perplexity(histogram))


@dataclass
class QuantizerOutput:
    """What the quantizer returns (shapes for input z_e of shape (B, D, h, w))."""

    quantized: torch.Tensor  # (B, D, h, w) straight-through z_e + sg[z_q - z_e]
    codes: torch.Tensor  # (B, h, w) long
    codebook_loss: torch.Tensor  # scalar, ||sg[z_e] - z_q||²
    commitment_loss: torch.Tensor  # scalar, ||z_e - sg[z_q]||² (not yet multiplied by β)
    usage: torch.Tensor  # scalar, fraction of codes used in this batch
    perplexity: torch.Tensor  # scalar, exp(entropy) of this batch's codes


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantizer over ``codebook_size`` l2-normalised ``codebook_dim``-vectors.

    The codebook is an ``nn.Parameter`` trained by the codebook loss. Buffers track usage:
    ``initialized`` (k-means done) and ``steps_unused`` (optimizer-agnostic count of training
    forwards since last picked, from the picks of every process).
    """

    def __init__(
        self,
        codebook_size: int,
        codebook_dim: int,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        restart_after_steps: int = 20,
        chunk_rows: int = 1024,
        l2_normalized: bool = True,
    ) -> None:
        super().__init__()
        self.l2_normalized = l2_normalized
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.kmeans_iters = kmeans_iters
        self.restart_after_steps = restart_after_steps
        self.chunk_rows = chunk_rows
        self.codebook = nn.Parameter(F.normalize(torch.randn(codebook_size, codebook_dim), dim=1))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.register_buffer("steps_unused", torch.zeros(codebook_size, dtype=torch.long))

    # -- lookups ---------------------------------------------------------------------------
    def normalized_codebook(self) -> torch.Tensor:
        """(K, D) code vectors as looked up, fp32 (fp64 for a float64 copy: ``pixel_decoder``): unit-norm,
        or as they are for a Euclidean codebook."""
        codebook = self.codebook if self.codebook.dtype == torch.float64 else self.codebook.float()
        return F.normalize(codebook, dim=1) if self.l2_normalized else codebook

    def _prepare(self, vectors: torch.Tensor, dim: int) -> torch.Tensor:
        """Encoder vectors as compared with the codes: l2-normalised along ``dim`` (or as they are)."""
        return F.normalize(vectors, dim=dim) if self.l2_normalized else vectors

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) long → code vectors (B, D, h, w) fp32, fp64 for a float64 copy (unit-norm for an l2
        codebook)."""
        if codes.dtype not in (torch.int32, torch.int64, torch.uint8, torch.int16):
            raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size - 1}], got range "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        vectors = F.embedding(codes.long(), self.normalized_codebook())  # (B, h, w, D)
        return vectors.permute(0, 3, 1, 2).contiguous()  # (B, D, h, w)

    def vectors(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D, h, w) → FloatTensor[B, h·w, D]: each position's vector as ``lookup`` compares it with
        the codes (l2-normalised for an l2 codebook)."""
        b, d, h, w = z.shape
        return self._prepare(z.float().permute(0, 2, 3, 1).reshape(b, h * w, d), dim=2)

    def distances(self, vectors: torch.Tensor) -> torch.Tensor:
        """Vectors FloatTensor[..., D] from ``vectors`` → squared distances FloatTensor[..., K] (fp32, ≥ 0)
        to every code, computed as ``lookup`` computes them (it picks each row's nearest)."""
        codebook = self.normalized_codebook()
        flat = vectors.reshape(-1, vectors.shape[-1]).float()
        with torch.autocast(device_type=flat.device.type, enabled=False):
            out = _squared_distances(flat, codebook, codebook.pow(2).sum(dim=1))
        return out.clamp_min(0.0).view(*vectors.shape[:-1], self.codebook_size)

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D, h, w) → codes (B, h, w) without touching any training state."""
        b, d, h, w = z.shape
        flat = self._prepare(z.float().permute(0, 2, 3, 1).reshape(-1, d), dim=1)  # (B*h*w, D)
        idx, _ = nearest_codes(flat, self.normalized_codebook(), self.chunk_rows)
        return idx.view(b, h, w)

    # -- forward ---------------------------------------------------------------------------
    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z (B, D, h, w) encoder output projected to codebook_dim → QuantizerOutput.

        In training mode this also initialises the codebook (first call) and restarts dead
        codes; in eval mode it only looks codes up.
        """
        b, d, h, w = z.shape
        if d != self.codebook_dim:
            raise ValueError(f"expected {self.codebook_dim} channels, got {d}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_e = self._prepare(z.float(), dim=1)  # (B, D, h, w)
            flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)  # (N, D)
            if self.training and not bool(self.initialized):
                self._kmeans_init(flat.detach())
            idx, _ = nearest_codes(flat.detach(), self.normalized_codebook().detach(), self.chunk_rows)
            counts = torch.bincount(idx, minlength=self.codebook_size)
            if self.training:
                self._track_and_restart(counts, flat.detach())
            z_q = F.embedding(idx, self.normalized_codebook()).view(b, h, w, d).permute(0, 3, 1, 2)
            codebook_loss = F.mse_loss(z_q, z_e.detach())
            commitment_loss = F.mse_loss(z_e, z_q.detach())
            quantized = z_e + (z_q - z_e).detach()  # straight-through
            batch_perplexity = perplexity(counts).float()
            usage = (counts > 0).float().mean()
        return QuantizerOutput(
            quantized=quantized,
            codes=idx.view(b, h, w),
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            usage=usage,
            perplexity=batch_perplexity,
        )

    # -- codebook maintenance ----------------------------------------------------------------
    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        """Spherical k-means on this batch's normalised encoder outputs (N, D)."""
        data = _gather_rows(flat)
        k = self.codebook_size
        if data.shape[0] >= k:
            centers = data[torch.randperm(data.shape[0], device=data.device)[:k]].clone()
        else:  # fewer vectors than codes: sample with replacement and jitter
            pick = torch.randint(0, data.shape[0], (k,), device=data.device)
            centers = self._prepare(data[pick] + 0.01 * torch.randn_like(data[pick]), dim=1)
        for _ in range(self.kmeans_iters):
            assign, _ = nearest_codes(data, centers, self.chunk_rows)
            sums = torch.zeros_like(centers).index_add_(0, assign, data)
            counts = torch.bincount(assign, minlength=k)
            empty = counts == 0
            means = F.normalize(sums, dim=1) if self.l2_normalized else sums / counts.clamp_min(1)[:, None]
            centers = torch.where(empty[:, None], centers, means)
        self.codebook.data.copy_(centers.to(self.codebook.dtype))
        _broadcast(self.codebook.data)
        self.initialized.fill_(True)
        logger.debug("k-means initialised %d codes from %d vectors", k, data.shape[0])

    @torch.no_grad()
    def _track_and_restart(self, counts: torch.Tensor, flat: torch.Tensor) -> None:
        """Update usage statistics with this batch's ``counts`` (K,) and replace codes that
        were not picked for ``restart_after_steps`` training forwards by random rows of
        ``flat`` (N, D), the current (recent) normalised encoder outputs."""
        counts = _all_reduce_sum(counts.clone())
        self.steps_unused.add_(1)
        self.steps_unused.masked_fill_(counts > 0, 0)
        if self.restart_after_steps <= 0:
            return
        dead = self.steps_unused >= self.restart_after_steps
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        rows = _gather_rows(flat)  # candidates from every process's batch (rank 0's choice is broadcast)
        pick = torch.randint(0, rows.shape[0], (num_dead,), device=rows.device)
        fresh = rows[pick] + 1e-3 * torch.randn(num_dead, rows.shape[1], device=rows.device)
        self.codebook.data[dead] = self._prepare(fresh, dim=1).to(self.codebook.dtype)
        _broadcast(self.codebook.data)
        self.steps_unused.masked_fill_(dead, 0)
        logger.debug("restarted %d dead codes", num_dead)

    def extra_repr(self) -> str:
        return f"codebook_size={self.codebook_size}, codebook_dim={self.codebook_dim}, l2_normalized={self.l2_normalized}"


# -- multi-process helpers: no-ops when torch.distributed is not initialised ------------------
def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _broadcast(tensor: torch.Tensor) -> None:
    """Make rank 0's codebook every rank's codebook (k-means / restarts use random picks)."""
    if is_distributed():
        dist.broadcast(tensor, src=0)


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Concatenate (N_r, D) rows from every rank (equal N_r assumed, as with DDP batches)."""
    if not is_distributed():
        return rows
    parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, rows.contiguous())
    return torch.cat(parts)

