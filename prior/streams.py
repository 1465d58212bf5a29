"""Per-image random streams for sampling, independent of how images are batched.

Every random number a sampler uses is a pure function of (image seed, what it is for, where it
is used): the Gumbel noise of code k at grid column t of image i is `gumbel(key(seed_i, t))[k]`.
No generator state is carried from one image, batch or forward pass to the next, so image i
comes out the same whatever the other images of the call, their number or the batch size, and
a window of future columns can be drawn in any order (what speculative/Jacobi decoding needs).

The numbers come from a counter-based hash (splitmix64's finaliser on int64 tensors, wrapping
arithmetic), evaluated where the tensors live: vectorised, on any device, no host round trip.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["image_seeds", "seeds_from_generator", "stream_keys", "uniform", "gumbel"]

_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)  # the odd constants of splitmix64, as signed int64
_MUL1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MUL2 = 0x94D049BB133111EB - (1 << 64)
_SEED_MASK = (1 << 63) - 1  # seeds are non-negative int64


def _int64(v: int) -> int:
    """A Python int wrapped to int64, as tensor arithmetic would wrap it."""
    return (v + (1 << 63)) % (1 << 64) - (1 << 63)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser: int64 → well-mixed int64 (a bijection)."""
    x = (x ^ _shr(x, 30)) * _MUL1
    x = (x ^ _shr(x, 27)) * _MUL2
    return x ^ _shr(x, 31)


def _salt(counter: torch.Tensor) -> torch.Tensor:
    """A counter (0, 1, 2, …) → well-spread int64: splitmix64's own sequence, mix(i·γ)."""
    return mix((counter + 1) * _GOLDEN)


def stream_keys(seeds: torch.Tensor, purpose: int, *counters: torch.Tensor | int) -> torch.Tensor:
    """Keys of independent streams: seeds LongTensor[B] (or broadcastable), a small integer
    naming what the numbers are for, then counters (column, pass, …) broadcast against seeds.
    Seeds and counters are spread before they are combined, so consecutive seeds or columns
    give unrelated streams."""
    key = mix(_salt(seeds) ^ _int64((purpose + 1) * _MUL1))
    for counter in counters:
        key = mix(key ^ _salt(torch.as_tensor(counter, dtype=torch.long, device=key.device)))
    return key


def uniform(keys: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Float32 uniforms in (0, 1): one per key, or `size` per key (trailing dim) if given."""
    if size is not None:
        keys = mix(keys[..., None] ^ _salt(torch.arange(size, device=keys.device)))
    return (_shr(keys, 40).float() + 0.5) * 2.0**-24  # 24 random bits, never 0 or 1


def gumbel(keys: torch.Tensor, size: int) -> torch.Tensor:
    """Standard Gumbel noise FloatTensor[*keys.shape, size]: argmax(scores + noise) is a sample
    of softmax(scores) (the Gumbel-max trick), with -inf scores never chosen."""
    return -torch.log(-torch.log(uniform(keys, size)))


def seeds_from_generator(generator: torch.Generator | None, num: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """One seed per image, drawn in order from `generator` (the global RNG when None)."""
    gen_device = generator.device if generator is not None else "cpu"
    return torch.randint(0, _SEED_MASK, (num,), generator=generator, device=gen_device).to(device)


def image_seeds(seed: int, class_labels: Sequence[int] | torch.Tensor | None, num: int) -> torch.Tensor:
    """The seed of each image of a run: a function of (seed, class, k) where k counts the earlier
    images of the same class, so the k-th image of class c is the same whatever else is drawn.
    class_labels: one label per image (-1 or None = no class) → LongTensor[num]."""
    if class_labels is None:
        labels = [-1] * num
    else:
        labels = [int(c) for c in torch.as_tensor(class_labels).flatten().tolist()]
        if len(labels) == 1:
            labels = labels * num
        if len(labels) != num:
            raise ValueError(f"got {len(labels)} class labels for {num} images")
    seen: dict[int, int] = {}
    k = []
    for c in labels:
        k.append(seen.get(c, 0))
        seen[c] = k[-1] + 1
    base = torch.tensor(int(seed) & _SEED_MASK, dtype=torch.long)
    keys = stream_keys(base, 0, torch.tensor(labels, dtype=torch.long), torch.tensor(k, dtype=torch.long))
    return keys & _SEED_MASK
