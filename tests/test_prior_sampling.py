"""Sampling from the prior: KV caches == full pass, seeds, logits warpers, CFG, prefixes, masks.
(The fast samplers, decoders and random streams: test_prior_samplers.py.)"""

from __future__ import annotations

import pytest
import torch

from vqgpt.prior import PriorConfig, PriorSpec, build_prior_model, sample
from vqgpt.prior.model import code_logits
from vqgpt.prior.sampling import _sample_batch, logits_processors

SPEC = PriorSpec(codebook_size=12, grid=(3, 3), class_names=("a", "b", "c"))


def make_model(arch: str = "llama", seed: int = 0, init: float = 0.5) -> torch.nn.Module:
    """A tiny random prior with peaked (large-init) logits so distributions are informative."""
    torch.manual_seed(seed)
    cfg = PriorConfig(architecture=arch, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                      dropout=0.0, initializer_range=init)
    return build_prior_model(cfg, SPEC).eval()


def full_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """Logits over codes for every position of `tokens` (B, T) by one uncached forward pass."""
    with torch.no_grad():
        return code_logits(model, tokens, SPEC, use_cache=False)[0]  # (B, T, K)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def record_passes(seen: dict[int, torch.Tensor]):
    """An on_pass hook keeping the guided logits of each predicted column (the last pass wins)."""
    def hook(columns: torch.Tensor, logits: torch.Tensor) -> None:
        for j, column in enumerate(columns[0].tolist()):
            seen[column - 1] = logits[:, j].clone()  # column c holds code c-1
    return hook


def seeds_of(n: int, base: int = 0) -> torch.Tensor:
    return torch.arange(n) + base


@pytest.mark.parametrize("kv_cache", ["static", "dynamic"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cached_logits_equal_full_forward_at_every_step(arch, kv_cache):
    model = make_model(arch)
    cond = SPEC.condition_tokens(torch.tensor([0, 1, 2, -1]), 4)
    seen: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        codes, info = _sample_batch(model, SPEC, cond, torch.zeros(4, 0, dtype=torch.long), seeds_of(4), cfg=False,
                                    guidance_scale=1.0, processors=logits_processors(), sampler="ar", kv_cache=kv_cache,
                                    on_pass=record_passes(seen))
    assert info["passes"] == SPEC.num_codes
    tokens = torch.cat([cond[:, None], codes], dim=1)  # (B, 1 + N)
    reference = full_logits(model, tokens[:, :-1])  # (B, N, K)
    assert sorted(seen) == list(range(SPEC.num_codes))
    for pos in range(SPEC.num_codes):
        torch.testing.assert_close(seen[pos], reference[:, pos], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kv_cache", ["static", "dynamic"])
def test_guided_logits_are_u_plus_s_times_c_minus_u_with_cache(kv_cache):
    model, s = make_model(), 2.5
    labels = torch.tensor([0, 2])
    cond = SPEC.condition_tokens(labels, 2)
    seen: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        codes, _ = _sample_batch(model, SPEC, cond, torch.zeros(2, 0, dtype=torch.long), seeds_of(2, 1), cfg=True,
                                 guidance_scale=s, processors=logits_processors(), sampler="ar", kv_cache=kv_cache,
                                 on_pass=record_passes(seen))
    c = full_logits(model, torch.cat([cond[:, None], codes], 1)[:, :-1])
    null = torch.full_like(cond, SPEC.null_token_id)
    u = full_logits(model, torch.cat([null[:, None], codes], 1)[:, :-1])
    for pos in range(SPEC.num_codes):
        torch.testing.assert_close(seen[pos], u[:, pos] + s * (c[:, pos] - u[:, pos]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler", ["ar", "jacobi", "sjd"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cache_and_full_recomputation_draw_the_same_samples(arch, sampler):
    """Fails loudly if a KV cache is ever ignored or stale (e.g. passed under a keyword this
    transformers version does not take): every cache must give the codes of full recomputation."""
    model = make_model(arch)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    runs = {kv: sample(model, SPEC, 6, labels, guidance_scale=2.0, generator=gen(3), sampler=sampler, kv_cache=kv)
            for kv in ("static", "dynamic", "none")}
    assert torch.equal(runs["static"], runs["none"])
    assert torch.equal(runs["dynamic"], runs["none"])


def test_same_seed_same_samples_different_seed_different():
    model = make_model()
    a = sample(model, SPEC, 16, generator=gen(7))
    b = sample(model, SPEC, 16, generator=gen(7))
    c = sample(model, SPEC, 16, generator=gen(8))
    assert a.shape == (16, 3, 3) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_batch_size_does_not_change_samples_shape_or_range():
    model = make_model()
    out = sample(model, SPEC, 7, torch.tensor([0, 1, 2, 0, 1, 2, -1]), batch_size=3, generator=gen(0))
    assert out.shape == (7, 3, 3)
    assert out.min() >= 0 and out.max() < SPEC.codebook_size


def greedy(model, cond: torch.Tensor) -> torch.Tensor:
    tokens = cond[:, None]
    for _ in range(SPEC.num_codes):
        nxt = full_logits(model, tokens)[:, -1].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, nxt], 1)
    return tokens[:, 1:].reshape(-1, *SPEC.grid)


@pytest.mark.parametrize("sampler", ["ar", "jacobi", "sjd"])
def test_top_k_1_and_tiny_top_p_are_greedy(sampler):
    model = make_model()
    labels = torch.tensor([0, 1, 2, -1])
    expected = greedy(model, SPEC.condition_tokens(labels, 4))
    for seed in (0, 1):
        assert torch.equal(sample(model, SPEC, 4, labels, top_k=1, generator=gen(seed), sampler=sampler), expected)
        assert torch.equal(sample(model, SPEC, 4, labels, top_p=1e-6, generator=gen(seed), sampler=sampler), expected)
    # plain sampling from this peaked model is not greedy everywhere (so the check above can fail)
    assert not torch.equal(sample(model, SPEC, 4, labels, generator=gen(0)), expected) or not torch.equal(
        sample(model, SPEC, 4, labels, generator=gen(1)), expected)


def last_position_histogram(model, n: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample only the last code (prefix = all others) n times → (empirical dist, raw logits)."""
    prefix = torch.arange(SPEC.num_codes - 1) % SPEC.codebook_size  # (N-1,)
    labels = torch.ones(n, dtype=torch.long)
    out = sample(model, SPEC, n, labels, prefix_codes=prefix, batch_size=n, generator=gen(0), **kwargs)
    counts = torch.bincount(out.reshape(n, -1)[:, -1], minlength=SPEC.codebook_size).float()
    tokens = torch.cat([SPEC.condition_tokens(labels[:1], 1)[:, None], prefix[None]], 1)
    return counts / n, full_logits(model, tokens)[0, -1]


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_samples_softmax_of_logits_over_t(temperature):
    model = make_model(init=0.3)
    empirical, logits = last_position_histogram(model, 4000, temperature=temperature)
    target = torch.softmax(logits / temperature, -1)
    untempered = torch.softmax(logits, -1)
    tv = 0.5 * (empirical - target).abs().sum()
    assert tv < 0.04, f"total variation {tv:.3f} to softmax(logits/T)"
    assert 0.5 * (target - untempered).abs().sum() > 0.1  # T really changes the target, so this can fail


def test_top_k_keeps_exactly_the_k_most_likely_codes():
    model = make_model(init=0.3)
    empirical, logits = last_position_histogram(model, 3000, top_k=3)
    allowed = set(logits.topk(3).indices.tolist())
    assert set(torch.nonzero(empirical).flatten().tolist()) == allowed
    torch.testing.assert_close(empirical[list(allowed)].sum(), torch.tensor(1.0))
    expected = torch.softmax(logits[list(allowed)], -1)
    assert 0.5 * (empirical[list(allowed)] - expected).abs().sum() < 0.05


def test_top_p_keeps_the_smallest_set_reaching_p():
    model = make_model(init=0.3)
    _, logits = last_position_histogram(model, 10)
    probs, order = torch.softmax(logits, -1).sort(descending=True)
    cut = int((probs.cumsum(0) < 0.6).sum()) + 1  # smallest prefix with mass ≥ 0.6
    empirical, _ = last_position_histogram(model, 3000, top_p=0.6)
    assert set(torch.nonzero(empirical).flatten().tolist()) == set(order[:cut].tolist())


def test_guidance_scale_1_equals_plain_conditional_sampling():
    model = make_model()
    labels = torch.tensor([0, 1, 2, 1])
    cond = SPEC.condition_tokens(labels, 4)
    empty = torch.zeros(4, 0, dtype=torch.long)
    with torch.inference_mode():
        paired, _ = _sample_batch(model, SPEC, cond, empty, seeds_of(4, 5), cfg=True, guidance_scale=1.0,
                                  processors=logits_processors(), sampler="ar")
        plain, _ = _sample_batch(model, SPEC, cond, empty, seeds_of(4, 5), cfg=False, guidance_scale=1.0,
                                 processors=logits_processors(), sampler="ar")
    assert torch.equal(paired, plain)
    assert torch.equal(sample(model, SPEC, 4, labels, guidance_scale=1.0, seeds=seeds_of(4, 5)).reshape(4, -1), plain)
    guided = sample(model, SPEC, 4, labels, guidance_scale=4.0, top_k=1, generator=gen(5))
    assert not torch.equal(guided, sample(model, SPEC, 4, labels, top_k=1, generator=gen(5)))


def test_only_code_tokens_are_emitted_even_when_others_dominate():
    model = make_model()
    with torch.no_grad():  # make the class/null tokens by far the most likely outputs
        model.lm_head.weight[SPEC.codebook_size:] = model.lm_head.weight[SPEC.codebook_size:].sign() * 50.0
        probe = model(torch.tensor([[SPEC.null_token_id]])).logits[0, -1]
    assert probe.argmax() >= SPEC.codebook_size  # the unmasked model would emit a non-code
    out = sample(model, SPEC, 32, generator=gen(0), temperature=2.0)
    assert out.min() >= 0 and out.max() < SPEC.codebook_size


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_prefix_codes_are_kept_exactly(guidance):
    model = make_model()
    prefix = torch.randint(0, SPEC.codebook_size, (5, 4), generator=gen(2))
    labels = torch.tensor([0, 1, 2, 0, 1])
    out = sample(model, SPEC, 5, labels, guidance_scale=guidance, prefix_codes=prefix, generator=gen(9))
    assert torch.equal(out.reshape(5, -1)[:, :4], prefix)
    # the prefix conditions what follows: the first free code equals greedy continuation under top_k=1
    out1 = sample(model, SPEC, 5, labels, prefix_codes=prefix, top_k=1, generator=gen(0))
    tokens = torch.cat([SPEC.condition_tokens(labels, 5)[:, None], prefix], 1)
    assert torch.equal(out1.reshape(5, -1)[:, 4], full_logits(model, tokens)[:, -1].argmax(-1))


def test_full_prefix_is_returned_unchanged():
    model = make_model()
    prefix = torch.randint(0, SPEC.codebook_size, (2, SPEC.num_codes), generator=gen(4))
    assert torch.equal(sample(model, SPEC, 2, prefix_codes=prefix).reshape(2, -1), prefix)


def test_bad_sampling_arguments_are_clear_value_errors():
    model = make_model()
    with pytest.raises(ValueError, match="out of range"):
        sample(model, SPEC, 2, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="out of range"):
        sample(model, SPEC, 1, torch.tensor([-2]))
    with pytest.raises(ValueError, match="needs class labels"):
        sample(model, SPEC, 2, None, guidance_scale=2.0)
    with pytest.raises(ValueError, match="2 class labels for 3 images"):
        sample(model, SPEC, 3, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="temperature"):
        sample(model, SPEC, 1, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        sample(model, SPEC, 1, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        sample(model, SPEC, 1, top_p=1.5)
    for bad in (float("inf"), float("nan"), -1.0, 1e30):
        with pytest.raises(ValueError, match="guidance_scale must be a number"):
            sample(model, SPEC, 1, torch.tensor([0]), guidance_scale=bad)
    for bad in (1e-45, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be a number"):
            sample(model, SPEC, 1, temperature=bad)
    with pytest.raises(ValueError, match="sampler must be one of"):
        sample(model, SPEC, 1, sampler="beam")
    with pytest.raises(ValueError, match="window must be"):
        sample(model, SPEC, 1, window=1)
    with pytest.raises(ValueError, match="seeds or a generator"):
        sample(model, SPEC, 1, seeds=[1], generator=gen(0))
    with pytest.raises(ValueError, match="2 seeds for 1 images"):
        sample(model, SPEC, 1, seeds=[1, 2])
    with pytest.raises(ValueError, match="prefix_codes must be codes"):
        sample(model, SPEC, 1, prefix_codes=torch.tensor([[SPEC.codebook_size]]))
    unconditional = PriorSpec(codebook_size=12, grid=(3, 3))
    with pytest.raises(ValueError, match="no classes"):
        sample(build_prior_model(PriorConfig(hidden_size=16, num_layers=1, num_heads=2), unconditional),
               unconditional, 1, torch.tensor([0]))
