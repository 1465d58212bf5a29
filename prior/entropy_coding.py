"""The prior as an entropy model: code grids ⇄ range-coded bytes, one stream per grid.

A prior that gives a code probability p makes it cost −log2 p bits: `GridCoder.encode` feeds the
prior's plain distributions (no guidance, temperature or top-k) to constriction's range coder
(`Categorical(perfect=False)`), `GridCoder.decode` reads the codes back one at a time.

Exactness. A range decoder must see *exactly* the probabilities the encoder used: a difference in
the last bit of one float breaks the stream within a few codes. Measured on this CPU (torch 2.14):
the same rows give different last bits with 1 or 2 intra-op threads, and with a batch of 1 or 8
rows; at one thread and a fixed batch shape a row's logits do not depend on the other rows or on
its position. So both directions compute the distributions the same way, the way decoding must:

- the incremental path — the static KV cache, one code per forward pass, column by column
  (`kv_decoders.StaticKV`, or transformers' own cache for other models), never one teacher-forced
  pass;
- a fixed batch shape, `batch_size` rows, recorded by the caller (a short batch is padded);
- float64 weights and activations (`portable`, the default), full-precision matmuls (no TF32),
  deterministic kernels; the logits rounded to 1/64 nat and turned into probabilities through an
  integer table (`portable_probabilities`) — or, for archives written before, float32 logits and a
  float64 softmax by numpy;
- on the CPU one intra-op thread while the prior runs, whatever the caller's setting (restored
  after).

On the same software, device type and CPU instruction set the decoder then reproduces the
encoder's codes bit for bit whatever the thread count, the other grids in the batch or which grids
are asked for. Float32 stops there: AVX-512 and AVX2 kernels give logits up to 1e-5 apart (measured;
every stream then fails). Float64 logits differ by about 2e-14 between them (measured), so once
rounded to 1/64 nat they agree unless one lies within that distance of a rounding boundary: about
once in 10^8 grids of 64 codes — portable coding decodes alike on other CPUs (tested: torch, MKL
and oneDNN held to lower instruction sets) and, by the same argument, on GPUs (not measured here),
and the caller's checksum catches the rare exception. `numerics()` names the machine, for the
caller to record.
"""

from __future__ import annotations

import contextlib
import copy
import decimal
import functools
import math
import os
import platform
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel

from .kv_decoders import make_decoder
from .model import PriorSpec

__all__ = ["GridCoder", "EncodedGrids", "exp_table", "numerics", "portable_probabilities", "load_constriction", "shortest_stream", "stream_bytes", "stream_words"]

DEFAULT_BATCH = 16  # rows per forward pass: throughput against padding waste when decoding a few grids
TRIM_MAX_BYTES = 256 << 20  # a batch's distributions are kept (to trim each stream's last word) up to this size


LOGIT_STEPS = 64  # portable coding: the prior's float64 logits rounded to 1/64 nat before they become probabilities
PROB_SCALE_BITS = 32  # … through a table of round(2^32 · e^(−d/64)), exact integers


@functools.cache
def exp_table() -> np.ndarray:
    """round(2^32 · e^(−d / LOGIT_STEPS)) for d = 0, 1, … up to and including the first 0, as float64
    (exact integers): decimal arithmetic, correctly rounded, so every platform builds the same table
    (a float exp may differ in its last bit between libraries and instruction sets)."""
    ctx = decimal.Context(prec=40, rounding=decimal.ROUND_HALF_EVEN)
    scale, steps = decimal.Decimal(1 << PROB_SCALE_BITS), decimal.Decimal(LOGIT_STEPS)
    values = [1 << PROB_SCALE_BITS]
    while values[-1] > 0:
        value = ctx.multiply(scale, ctx.exp(ctx.divide(decimal.Decimal(-len(values)), steps)))
        values.append(int(value.to_integral_value(context=ctx)))
    return np.array(values, dtype=np.float64)


def portable_probabilities(logits: np.ndarray) -> np.ndarray:
    """float64 logits [B, K] → unnormalised probabilities [B, K] that are the same on every machine as
    long as no logit moves across half a 1/64 step: rounded to steps, measured from each row's largest,
    looked up in `exp_table`. What float64 differs by between instruction sets (≤ 2e-14 measured) moves
    a logit across a rounding boundary with probability about 2e-12, once in ~10^8 images of 64 codes."""
    steps = np.rint(logits * LOGIT_STEPS)  # × a power of two, rint: exact, the same everywhere
    table = exp_table()
    return table[np.minimum(steps.max(axis=1, keepdims=True) - steps, len(table) - 1).astype(np.int64)]


# environment variables that change which CPU kernels torch, MKL and oneDNN run (so the last bits of a float)
NUMERICS_ENV = ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def numerics(device: torch.device | str, machine: bool = True) -> str:
    """What exact decoding depends on besides the weights: device type, torch version and which kernels
    run — on the CPU its architecture, torch's instruction set (AVX512, AVX2, …: ``ATEN_CPU_CAPABILITY``
    changes it) and vendor (MKL's paths differ) and any of ``NUMERICS_ENV`` that is set; on a GPU its
    name and CUDA version. Measured here: an archive written with AVX-512 kernels fails every image's
    CRC32 when decoded with AVX2 kernels on the same machine and torch. ``machine=False``: device type
    and torch version only (what a portable stream is worth recording)."""
    device = torch.device(device)
    parts = [device.type, "torch", torch.__version__.split("+")[0]]
    if machine and device.type == "cpu":
        parts += [platform.machine(), torch.backends.cpu.get_cpu_capability(), _cpu_vendor()]
        parts += [f"{name}={os.environ[name]}" for name in NUMERICS_ENV if os.environ.get(name)]
    elif machine and device.type == "cuda":
        parts += ["cuda", str(torch.version.cuda), torch.cuda.get_device_name(device)]
    return " ".join(p for p in parts if p)


@functools.cache
def _cpu_vendor() -> str:
    """"GenuineIntel", "AuthenticAMD", … from /proc/cpuinfo (Linux); "" where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux, or /proc not mounted
        return ""
    return ""


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """One intra-op thread on the CPU, full-precision float32 matmuls, deterministic kernels;
    every setting restored on exit."""
    threads = torch.get_num_threads()
    precision = torch.get_float32_matmul_precision()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32)
    try:
        if device.type == "cpu":
            torch.set_num_threads(1)
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = cudnn


@dataclass(frozen=True)
class EncodedGrids:
    """streams[i]: grid i's range-coded bytes; model_bits[i]: −Σ log2 p the prior gave its codes;
    codes[i]: the codes coded (the grids given, or those chosen under a rate weight)."""

    streams: list[bytes]
    model_bits: np.ndarray  # float64[N]
    codes: torch.Tensor  # LongTensor[N, h·w]


def load_constriction():
    try:
        import constriction
    except ImportError:  # a core dependency: only a broken install lacks it
        raise RuntimeError("entropy coding needs the `constriction` package (pip install constriction)") from None
    return constriction


def _labels(labels: torch.Tensor | Sequence[int] | None, count: int) -> torch.Tensor:
    """One class index per grid (None: all -1, the "no class" token)."""
    if labels is None:
        return torch.full((count,), -1, dtype=torch.long)
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    if len(labels) != count:
        raise ValueError(f"{len(labels)} class labels for {count} grids")
    return labels


def stream_bytes(words: np.ndarray) -> bytes:
    """Big-endian: the stream is one number, most significant byte first, so its tail can be cut."""
    return words.astype(">u4").tobytes()


def stream_words(data: bytes) -> np.ndarray:
    padded = data + b"\0" * (-len(data) % 4)  # trimmed (or truncated) streams end in zeros
    return np.frombuffer(padded, dtype=">u4").astype(np.uint32)


def shortest_stream(data: bytes, decodes: Callable[[bytes], bool]) -> bytes:
    """The shortest prefix of a range-coded stream (``stream_bytes``) for which ``decodes`` still holds.
    The range coder seals a stream with whole 32-bit words holding the low end of the final interval;
    the stream read as one big-endian number (missing bytes are zeros, here and when the archive is
    read) only has to land inside that interval, so the last bytes are dropped — the new last byte
    rounded up where dropping alone falls below it — as long as decoding gives the same symbols
    (checked, not assumed). Saves about 1.7 bytes per stream."""
    def ok(candidate: bytes) -> bool:
        try:
            return decodes(candidate)
        except (ValueError, RuntimeError, AssertionError):  # constriction refuses data no encoder wrote
            return False

    while len(data) > 1:
        shorter = data[:-1]
        up = int.from_bytes(shorter, "big") + 1
        rounded = up.to_bytes(len(shorter), "big") if up < 1 << (8 * len(shorter)) else None
        if ok(shorter):
            data = shorter
        elif rounded is not None and ok(rounded):
            data = rounded
        else:
            break
    return data


class GridCoder:
    """Range coding of code grids under a prior's distributions.

    grids: LongTensor[N, h·w] (or [N, h, w]) of codes in 0 … K-1, labels: LongTensor[N] of class
    indices (-1 = the "no class" token). `batch_size` and `portable` are part of the stream's
    definition: decode with the values the grids were encoded with. ``portable``: a float64 copy of
    the prior and `portable_probabilities` (on Apple's GPUs, without float64, the copy runs on the
    CPU); otherwise float32 and a float softmax, exact only on the kind of machine that encoded.
    """

    def __init__(self, model: PreTrainedModel, spec: PriorSpec, batch_size: int = DEFAULT_BATCH,
                 portable: bool = True):
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1, got {batch_size}")
        dtype = torch.float64 if portable else torch.float32
        weights = next(model.parameters())
        if portable and weights.device.type == "mps":  # Apple GPUs have no float64: the CPU computes the distributions
            model = copy.deepcopy(model).to("cpu", dtype)
        elif weights.dtype != dtype:  # the prior is kept in float32 (or bf16 for sampling)
            model = copy.deepcopy(model).to(dtype)
        self.model, self.spec, self.batch_size, self.portable = model.eval(), spec, batch_size, portable
        self.device = next(model.parameters()).device
        self.family = load_constriction().stream.model.Categorical(perfect=False)

    def _conditions(self, labels: torch.Tensor) -> torch.Tensor:
        if (labels < 0).any() and not self.spec.has_null_condition:
            raise ValueError("this prior never learned the \"no class\" token (label_dropout 0): "
                             "every image needs one of its classes")
        return self.spec.condition_tokens(labels, len(labels), self.device)

    def _batches(self, n: int) -> Iterator[range]:
        for start in range(0, n, self.batch_size):
            yield range(start, min(start + self.batch_size, n))

    def _run(self, conditions: torch.Tensor, step) -> None:
        """One batch: feed column t, read the distribution of code t (float64 numpy [B, K]), let
        `step(t, probs)` return the codes LongTensor[B] that go into column t + 1."""
        B, n = self.batch_size, self.spec.num_codes
        tokens = torch.zeros(B, n + 1, dtype=torch.long, device=self.device)
        tokens[: len(conditions), 0] = conditions
        tokens[len(conditions):, 0] = conditions[0]  # padding rows: a copy (they are never read)
        decoder = make_decoder(self.model, self.spec, B, n + 1)
        decoder.begin()
        starts = torch.zeros(B, dtype=torch.long, device=self.device)
        for t in range(n):
            logits = decoder(tokens, starts + t, 1, t, t + 1)[:, 0]  # (B, K) float64 (portable) or float32
            scores = logits.double().cpu().numpy()
            if self.portable:
                probs = portable_probabilities(scores)
            else:  # archives of version 1 and 2: exact on the machine type that wrote them
                probs = np.exp(scores - scores.max(axis=1, keepdims=True))  # constriction normalises
            codes = step(t, probs)
            tokens[: len(codes), t + 1] = codes.to(self.device)

    @torch.inference_mode()
    def encode(self, grids: torch.Tensor, labels: torch.Tensor | Sequence[int] | None = None,
               progress=None, distortion: Callable[[range], np.ndarray] | None = None,
               rate_weight: float = 0.0) -> EncodedGrids:
        """Grids → one range-coded stream each, plus the bits the prior's model assigns them.

        Rate–distortion choice: with ``distortion`` (rows → float[len(rows), h·w, K], what each code
        costs at each position, e.g. the squared distance of the encoder's vector to it) and
        ``rate_weight`` λ > 0, the code coded at each position is not the grid's but the one that
        minimises distortion + λ · (−log2 p) under the prior's distribution given the codes chosen
        before it — the choice is the encoder's alone; the decoder reads whatever codes were coded.
        """
        grids = torch.as_tensor(grids, dtype=torch.long).reshape(len(grids), -1).cpu()
        N, n = grids.shape
        if n != self.spec.num_codes:
            raise ValueError(f"grids hold {n} codes each, the prior's grid {self.spec.grid} has {self.spec.num_codes}")
        if N and (grids.min() < 0 or grids.max() >= self.spec.codebook_size):
            raise ValueError(f"codes must lie in 0 … {self.spec.codebook_size - 1}")
        if not (math.isfinite(rate_weight) and rate_weight >= 0):
            raise ValueError(f"the rate weight must be a finite number ≥ 0, got {rate_weight}")
        choose = distortion is not None and rate_weight > 0
        coded = grids.clone()
        labels = _labels(labels, N)
        conditions = self._conditions(labels)
        queue = load_constriction().stream.queue
        streams: list[bytes] = []
        bits = np.zeros(N, dtype=np.float64)
        with deterministic(self.device):
            for rows in self._batches(N):
                encoders = [queue.RangeEncoder() for _ in rows]
                chunk = grids[rows.start: rows.stop].numpy().astype(np.int32)  # (b, n)
                keep = len(rows) * n * self.spec.codebook_size * 8 <= TRIM_MAX_BYTES
                kept = np.zeros((len(rows), n, self.spec.codebook_size)) if keep else None
                costs = self._costs(distortion, rows) if choose else None

                def step(t: int, probs: np.ndarray) -> torch.Tensor:
                    if costs is not None:
                        p = probs[: len(encoders)]
                        with np.errstate(divide="ignore"):  # a probability that underflowed to 0: infinite bits
                            rate = -np.log2(p / p.sum(axis=1, keepdims=True))
                        chunk[:, t] = (costs[:, t] + rate_weight * rate).argmin(axis=1)
                    for r, encoder in enumerate(encoders):
                        p = probs[r: r + 1]
                        encoder.encode(chunk[r, t: t + 1], self.family, p)
                        bits[rows.start + r] -= np.log2(p[0, chunk[r, t]] / p[0].sum())
                    if kept is not None:
                        kept[:, t] = probs[: len(encoders)]
                    return torch.from_numpy(chunk[:, t]).long()

                self._run(conditions[rows.start: rows.stop], step)
                coded[rows.start: rows.stop] = torch.from_numpy(chunk)
                for r, encoder in enumerate(encoders):
                    data = stream_bytes(encoder.get_compressed())
                    streams.append(data if kept is None else self._trim(data, chunk[r], kept[r]))
                if progress is not None:
                    progress.update(len(rows))
        return EncodedGrids(streams, bits, coded)

    def _costs(self, distortion: Callable[[range], np.ndarray], rows: range) -> np.ndarray:
        costs = np.asarray(distortion(rows), dtype=np.float64)
        expected = (len(rows), self.spec.num_codes, self.spec.codebook_size)
        if costs.shape != expected:
            raise ValueError(f"the distortion of {len(rows)} grids has shape {costs.shape}, expected {expected}")
        if not np.isfinite(costs).all():
            raise ValueError("the distortion holds values that are not finite")
        return costs

    def _trim(self, data: bytes, codes: np.ndarray, probs: np.ndarray) -> bytes:
        """The shortest stream that still decodes to ``codes`` (``shortest_stream``)."""
        queue = load_constriction().stream.queue
        return shortest_stream(data, lambda candidate: np.array_equal(
            queue.RangeDecoder(stream_words(candidate)).decode(self.family, probs), codes))

    @torch.inference_mode()
    def decode(self, streams: Sequence[bytes], labels: torch.Tensor | Sequence[int] | None = None,
               progress=None) -> tuple[torch.Tensor, list[str | None]]:
        """Streams → (grids LongTensor[N, h·w], errors): errors[i] is None, or why stream i could not
        be read (its grid is then all zeros). A damaged stream that still decodes gives wrong codes,
        not an error: the caller checks each grid against a checksum."""
        N, n = len(streams), self.spec.num_codes
        labels = _labels(labels, N)
        conditions = self._conditions(labels)
        queue = load_constriction().stream.queue
        grids = torch.zeros(N, n, dtype=torch.long)
        errors: list[str | None] = [None] * N
        with deterministic(self.device):
            for rows in self._batches(N):
                decoders = [queue.RangeDecoder(stream_words(streams[i])) for i in rows]
                out = np.zeros((len(rows), n), dtype=np.int64)

                def step(t: int, probs: np.ndarray) -> torch.Tensor:
                    for r, decoder in enumerate(decoders):
                        if errors[rows.start + r] is not None:
                            continue
                        try:
                            out[r, t] = int(decoder.decode(self.family, probs[r: r + 1])[0])
                        except (ValueError, RuntimeError, AssertionError) as err:  # constriction's refusals
                            errors[rows.start + r] = f"the range decoder stopped at code {t} ({err})"
                    return torch.from_numpy(out[:, t])

                self._run(conditions[rows.start: rows.stop], step)
                grids[rows.start: rows.stop] = torch.from_numpy(out)
                if progress is not None:
                    progress.update(len(rows))
        return grids, errors
