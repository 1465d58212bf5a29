"""Forward passes for sampling: the code logits of a window of columns of every row.

Columns of a row: column 0 holds its condition token, column j ≥ 1 code j-1; the logits read at
input column t predict column t+1. A sampler calls a decoder once per forward pass:

    decoder(tokens, start, width, lo, hi) → FloatTensor[R, width, K]

tokens: LongTensor[R, L], every row's tokens so far (final ones, then drafts); start: LongTensor[R],
the first input column of each row's window; lo, hi: Python ints, min(start) and max(start) + width
(known to the caller, so a decoder never waits for the device). Row r gets the logits read at its
columns start_r … start_r + width - 1. Contract: a row's columns before its `start` are final, so
they may be served from a cache from then on (later passes never start before them).

Three decoders, one contract:
- `StaticKV` ("static"): preallocated key/value buffers written in place at each row's own
  columns, so rows of one batch can be at different columns (speculative/Jacobi windows) and no
  tensor is re-allocated per pass. It runs the transformers model's own modules and weights
  (projections, MLPs, norms, rotary tables) but its own attention over the buffers, with less
  per-pass Python than `model.forward`. Llama and GPT-2 models (what vqgpt builds) only.
- `TransformersKV` ("dynamic"): `model.forward` with transformers' own cache, under whichever
  keyword this transformers version accepts (`cache`, or `past_key_values` before 5.24), cropped
  to drop the last pass's drafts. Works for any causal LM.
- the same with `use_cache=False` ("none"): full recomputation at every pass, the reference.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from .model import PriorSpec

__all__ = ["KV_CACHES", "make_decoder", "StaticKV", "TransformersKV", "cache_keyword", "static_kv_unsupported"]

KV_CACHES = ("auto", "static", "dynamic", "none")


def cache_keyword(model: PreTrainedModel) -> str:
    """The keyword `model.forward` takes its KV cache by: `cache` (transformers ≥ 5.24) or
    `past_key_values` (earlier). Anything else would be swallowed by **kwargs, so it is an error."""
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise TypeError(f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`; "
                    "this transformers version is not supported")


class TransformersKV:
    """`model.forward` with transformers' cache (or none: full recomputation every pass)."""

    def __init__(self, model: PreTrainedModel, spec: PriorSpec, use_cache: bool = True):
        self.model, self.num_codes_vocab, self.use_cache = model, spec.codebook_size, use_cache
        self.limit = spec.num_codes  # input columns are 0 … h·w-1 (later ones predict nothing)
        self.keyword = cache_keyword(model) if use_cache else None
        self.cache = None
        self.seen = 0  # columns held by the cache
        self.passes = 0

    def begin(self) -> None:
        """A new batch: a new cache."""
        self.cache, self.seen = None, 0

    def __call__(self, tokens: torch.Tensor, start: torch.Tensor, width: int, lo: int, hi: int) -> torch.Tensor:
        full = hi - lo == width and hi <= self.limit  # every row at the same columns, all of them real
        hi = min(hi, self.limit)  # windows running past the grid: what they predict there is ignored
        lo = min(lo, hi - 1)
        if self.use_cache:
            if self.cache is not None and self.seen > lo:
                # the columns from lo on were drafts, or are recomputed; a negative crop removes that
                # many columns in every transformers 5.x (a positive one means "keep" before 5.24)
                self.cache.crop(lo - self.seen)
                self.seen = lo
            kwargs = {self.keyword: self.cache} if self.cache is not None else {}
            out = self.model(input_ids=tokens[:, self.seen:hi], use_cache=True, logits_to_keep=hi - lo, **kwargs)
            self.cache, self.seen = getattr(out, self.keyword), hi
        else:
            out = self.model(input_ids=tokens[:, :hi], use_cache=False, logits_to_keep=hi - lo)
        self.passes += 1
        logits = out.logits[..., : self.num_codes_vocab]
        logits = logits if logits.dtype in WIDE else logits.float()  # (R, hi - lo, K): input columns lo … hi-1
        if full:
            return logits
        offsets = (start - lo)[:, None] + torch.arange(width, device=logits.device)  # (R, width)
        offsets = offsets.clamp(0, hi - lo - 1)
        return logits.gather(1, offsets[..., None].expand(-1, -1, logits.shape[-1]))


def static_kv_unsupported(model: PreTrainedModel) -> str | None:
    """Why `StaticKV` cannot run this model (None: it can)."""
    cfg = model.config
    if cfg.model_type == "llama":
        if getattr(cfg, "pretraining_tp", 1) != 1:
            return "llama with pretraining_tp > 1"
        return None
    if cfg.model_type == "gpt2":
        if getattr(cfg, "add_cross_attention", False):
            return "gpt2 with cross-attention"
        return None
    return f"model type {cfg.model_type!r} (supported: llama, gpt2)"


WIDE = (torch.float32, torch.float64)  # dtypes computed in as they are (narrower ones in float32)


def _rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Llama's RMSNorm, as its module computes it (in float32; F.rms_norm is slower on a CPU).
    Dtypes are converted only when they differ: every dispatched op counts at batch 1."""
    h = x if x.dtype in WIDE else x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * (h if h.dtype == x.dtype else h.to(x.dtype))


def _rope_tables(model: PreTrainedModel, columns: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the model's RoPE at ``columns``: its own module's tables (computed in float32), or,
    for float64 weights and the default RoPE, computed in float64 from the config — a float32 table
    differs in its last bit between CPU instruction sets, which float64 weights are there to avoid."""
    rotary, cfg = model.model.rotary_emb, model.config
    parameters = getattr(cfg, "rope_parameters", None) or {}
    if dtype != torch.float64 or parameters.get("rope_type", "default") != "default" or rotary.attention_scaling != 1:
        cos, sin = rotary(torch.zeros(1, device=columns.device, dtype=torch.float32), columns[None])
        return cos[0], sin[0]
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    base = float(parameters.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64, device=columns.device) / dim)
    angles = columns.to(torch.float64)[:, None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


FUSE_MAX_PARAMETERS = 50_000_000  # up to this size per-pass overhead dominates: fuse projections


class StaticKV:
    """Preallocated key/value buffers [layers, R, kv_heads, L, head_dim], written in place.

    For models up to FUSE_MAX_PARAMETERS it keeps fused copies of the Llama q/k/v and gate/up
    weights (one matrix product where the model does three or two): small priors are bound by the
    number of operations per pass, not by arithmetic. Bigger models use their weights in place.
    """

    def __init__(self, model: PreTrainedModel, spec: PriorSpec, rows: int, length: int, compile: bool = False):
        why = static_kv_unsupported(model)
        if why is not None:
            raise ValueError(f"the static KV cache does not support {why}; use kv_cache='dynamic'")
        cfg = model.config
        self.model, self.rows, self.length = model, rows, length
        self.llama = cfg.model_type == "llama"
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.device = next(model.parameters()).device
        self.columns = torch.arange(length, device=self.device)
        if self.llama:
            self.blocks, self.final_norm = model.model.layers, model.model.norm
            dtype = next(model.parameters()).dtype  # the tables in the weights' type (bf16 sampling: bf16)
            cos, sin = _rope_tables(model, self.columns, dtype)  # (L, head_dim)
            half = self.head_dim // 2  # rotate_half(x) = cat(-x2, x1) = roll(x, half) · (-1 … -1, 1 … 1)
            sign = torch.cat([-torch.ones(half), torch.ones(self.head_dim - half)]).to(self.device)
            self.cos, self.sin = cos.to(dtype), (sin * sign).to(dtype)
            self.scales = [block.self_attn.scaling for block in self.blocks]
            fuse = sum(p.numel() for p in model.parameters()) <= FUSE_MAX_PARAMETERS
            plain_mlp = cfg.hidden_act == "silu" and not getattr(cfg, "mlp_bias", False)
            self.fused = [_fuse_llama_block(block, plain_mlp) if fuse else None for block in self.blocks]
        else:
            self.blocks, self.final_norm = model.transformer.h, model.transformer.ln_f
            self.max_position = model.transformer.wpe.num_embeddings - 1
            scale = self.head_dim**-0.5 if cfg.scale_attn_weights else 1.0
            by_layer = getattr(cfg, "scale_attn_by_inverse_layer_idx", False)
            self.scales = [scale / (i + 1) if by_layer else scale for i in range(len(self.blocks))]
        self.head = model.lm_head.weight[: spec.codebook_size]  # only codes are ever predicted
        self.keys = self.values = None  # allocated at the first pass, in the dtype the layers produce
        self.primed = False  # the batch's first pass is done (the columns before it are in the buffers)
        self.passes = 0
        # torch.compile: one graph per window width, so every pass attends over the whole buffer
        # and writes by index (static shapes) instead of slicing to the columns in use
        self.compiled = torch.compile(self._static_pass, dynamic=False) if compile else None

    def _static_pass(self, ids: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return self._forward(ids, cols, 0, self.length, False)

    def begin(self) -> None:
        """A new batch (at most `rows` rows): nothing of the last one is reused."""
        self.primed = False

    def __call__(self, tokens: torch.Tensor, start: torch.Tensor, width: int, lo: int, hi: int) -> torch.Tensor:
        if not self.primed and lo > 0:  # a batch's first pass: its condition token and given codes first
            self._forward(tokens[:, :lo], self.columns[None, :lo], 0, lo, True, head=False)
        self.primed = True  # from now on every pass writes what later passes read (see the module's doc)
        cols = start[:, None] + self.columns[:width]  # (R, W) input columns
        self.passes += 1
        if self.compiled is not None:
            return self.compiled(tokens.gather(1, cols), cols)
        return self._forward(tokens.gather(1, cols), cols, lo, hi, hi - lo == width)

    def _forward(self, ids, cols, lo, hi, uniform, head=True):
        """ids LongTensor[R, W] at columns cols [R or 1, W]; uniform: every row at columns lo … hi-1."""
        R, W = ids.shape
        if self.llama:
            h = self.model.model.embed_tokens(ids)  # (R, W, C)
            rope = (self.cos[cols][:, None], self.sin[cols][:, None])  # (R, 1, W, head_dim) each
        else:
            h = self.model.transformer.wte(ids) + self.model.transformer.wpe(cols.clamp(max=self.max_position))
            rope = None
        # a query at column t sees keys at columns ≤ t (later columns hold stale drafts or nothing)
        mask = None if uniform and W == 1 else self.columns[:hi] <= cols[:, None, :, None]  # (R, 1, W, hi)
        index = None if uniform else cols[:, None, :, None].expand(R, self.kv_heads, W, self.head_dim)
        for i, block in enumerate(self.blocks):
            h = self._block(i, block, h, rope, mask, index, lo, hi)
        if not head:
            return None
        h = _rms_norm(self.final_norm, h) if self.llama else self.final_norm(h)
        logits = F.linear(h, self.head if self.head.dtype == h.dtype else self.head.to(h.dtype))
        return logits if logits.dtype in WIDE else logits.float()  # (R, W, K)

    def _block(self, i, block, h, rope, mask, index, lo, hi) -> torch.Tensor:
        R, W, _ = h.shape
        H, Hkv, D = self.heads, self.kv_heads, self.head_dim
        fused = self.llama and self.fused[i]
        if self.llama:
            attn = block.self_attn
            x = _rms_norm(block.input_layernorm, h)
            if fused:
                qkv = F.linear(x, fused["qkv"], fused["qkv_bias"])
            else:
                qkv = torch.cat([F.linear(x, m.weight, m.bias) for m in (attn.q_proj, attn.k_proj, attn.v_proj)], -1)
        else:
            attn = block.attn
            qkv = attn.c_attn(block.ln_1(h))
        qkv = qkv.view(R, W, H + 2 * Hkv, D).transpose(1, 2)  # (R, H + 2·Hkv, W, D): q heads, k heads, v heads
        qk, v = qkv[:, : H + Hkv], qkv[:, H + Hkv :]
        if rope is not None:  # one rotation for q and k together (transformers' rotate_half, as a roll)
            cos, signed_sin = rope if rope[0].dtype == qk.dtype else (rope[0].to(qk.dtype), rope[1].to(qk.dtype))
            qk = qk * cos + qk.roll(D // 2, dims=-1) * signed_sin
        q, k = qk[:, :H], qk[:, H:]
        if self.keys is None:
            shape = (len(self.blocks), self.rows, Hkv, self.length, D)
            self.keys = torch.zeros(shape, dtype=k.dtype, device=self.device)
            self.values = torch.zeros(shape, dtype=k.dtype, device=self.device)
        keys, values = self.keys[i, :R], self.values[i, :R]  # (R, Hkv, L, D)
        if index is None:
            keys[:, :, lo:hi] = k
            values[:, :, lo:hi] = v
        else:
            keys.scatter_(2, index, k)
            values.scatter_(2, index, v)
        keys, values = keys[:, :, :hi], values[:, :, :hi]
        if Hkv != H:  # grouped-query attention
            keys = keys.repeat_interleave(H // Hkv, dim=1)
            values = values.repeat_interleave(H // Hkv, dim=1)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scales[i])  # (R, H, W, D)
        y = y.transpose(1, 2).reshape(R, W, H * D)
        if not self.llama:
            h = h + attn.c_proj(y)
            return h + block.mlp(block.ln_2(h))
        h = h + F.linear(y, attn.o_proj.weight, attn.o_proj.bias)
        x = _rms_norm(block.post_attention_layernorm, h)
        if fused and fused["gate_up"] is not None:
            gate, up = F.linear(x, fused["gate_up"]).chunk(2, dim=-1)
            return h + F.linear(F.silu(gate) * up, block.mlp.down_proj.weight)
        return h + block.mlp(x)


def _fuse_llama_block(block: torch.nn.Module, plain_mlp: bool) -> dict:
    """Concatenated q/k/v (and, for a bias-free SiLU MLP, gate/up) weights of one Llama block."""
    attn, mlp = block.self_attn, block.mlp
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    biases = [m.bias for m in projections]
    return {
        "qkv": torch.cat([m.weight for m in projections]).detach(),
        "qkv_bias": None if all(b is None for b in biases) else torch.cat(
            [b if b is not None else torch.zeros(m.out_features, device=m.weight.device) for m, b in zip(projections, biases)]),
        "gate_up": torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach() if plain_mlp else None,
    }


def make_decoder(model: PreTrainedModel, spec: PriorSpec, rows: int, length: int, kv_cache: str = "auto",
                 compile: bool = False):
    """The decoder for `kv_cache` ("auto": static buffers when the model allows, else "dynamic");
    `compile`: torch.compile the static decoder's pass (measured slower on a CPU; for GPUs)."""
    if kv_cache not in KV_CACHES:
        raise ValueError(f"kv_cache must be one of {', '.join(KV_CACHES)}, got {kv_cache!r}")
    if kv_cache == "auto":
        kv_cache = "static" if static_kv_unsupported(model) is None else "dynamic"
    if kv_cache == "static":
        return StaticKV(model, spec, rows, length, compile=compile)
    if compile:
        raise ValueError("compile=True needs the static KV cache (kv_cache='static' or 'auto' on a Llama/GPT-2 prior)")
    return TransformersKV(model, spec, use_cache=kv_cache == "dynamic")
