"""The fast samplers and what they stand on: per-image random streams, the KV decoders (static
buffers and transformers' cache, on ragged windows), Jacobi == autoregressive codes, seeds that
do not depend on the batch, and draws from the model's exact distribution (ar, jacobi, sjd)."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

from vqgpt.prior import PriorConfig, PriorSpec, build_prior_model, sample
from vqgpt.prior.kv_decoders import StaticKV, TransformersKV, cache_keyword
from vqgpt.prior.model import code_logits
from vqgpt.prior.streams import gumbel, image_seeds, mix, stream_keys, uniform

SPEC = PriorSpec(codebook_size=12, grid=(3, 4), class_names=("a", "b", "c"))


def make_model(arch: str = "llama", spec: PriorSpec = SPEC, init: float = 0.5, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = PriorConfig(architecture=arch, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                      dropout=0.0, initializer_range=init, **kw)
    return build_prior_model(cfg, spec).eval()


MODELS = {"llama": {}, "llama-gqa": {"num_kv_heads": 1}, "gpt2": {"architecture": "gpt2"}}


def model_named(name: str, **kw) -> torch.nn.Module:
    extra = dict(MODELS[name])
    return make_model(extra.pop("architecture", "llama"), **extra, **kw)


# ------------------------------------------------------------------ random streams


def test_mix_is_splitmix64_with_int64_wrapping():
    mask = (1 << 64) - 1

    def reference(x: int) -> int:
        x &= mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        x ^= x >> 31
        return x - (1 << 64) if x >> 63 else x

    values = [0, 1, 2, 12345678901234567, -5, (1 << 63) - 1, -(1 << 63)]
    assert mix(torch.tensor(values)).tolist() == [reference(v) for v in values]


def test_uniforms_and_gumbel_noise_have_their_distributions():
    keys = stream_keys(torch.arange(200), 1)
    u = uniform(keys, 500)  # (200, 500)
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    assert abs(gumbel(keys, 500).mean() - 0.5772) < 0.01  # Euler–Mascheroni
    assert abs(torch.corrcoef(torch.stack([u[:-1].flatten(), u[1:].flatten()]))[0, 1]) < 0.01
    assert not torch.equal(uniform(stream_keys(torch.arange(200), 2), 500), u)  # another purpose, other numbers


def test_image_seeds_are_a_function_of_seed_class_and_rank():
    a = image_seeds(7, [0, 1, 0, -1], 4)
    b = image_seeds(7, [1, 0, 0], 3)  # other classes and order; class 0 images 0 and 1 are the same
    assert a[0] == b[1] and a[2] == b[2] and a[1] == b[0]
    assert len(set(a.tolist())) == 4 and (a >= 0).all()
    assert not torch.equal(image_seeds(8, [0, 1, 0, -1], 4), a)
    assert torch.equal(image_seeds(7, None, 2), image_seeds(7, [-1, -1], 2))


# ------------------------------------------------------------------ decoders


def ragged_passes(decoder, model, spec: PriorSpec, rows: int, width: int) -> None:
    """Drive `decoder` the way the samplers do — rows at different columns, drafts rewritten after
    each pass — and compare every pass's logits with one uncached forward pass of the same tokens."""
    N = spec.num_codes
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, spec.codebook_size, (rows, N + 2 * width + 1), generator=g)
    tokens[:, 0] = spec.class_token_offset + torch.arange(rows) % spec.num_classes
    start = torch.full((rows,), 2)  # 2 given codes
    decoder.begin()
    while int(start.min()) < N:
        lo, hi = int(start.min()), int(start.max()) + width
        logits = decoder(tokens, start, width, lo, hi)
        reference = code_logits(model, tokens[:, :N], spec, use_cache=False)[0]  # (R, N, K)
        for r in range(rows):
            for j in range(width):
                if start[r] + j < N:
                    torch.testing.assert_close(logits[r, j], reference[r, start[r] + j], rtol=1e-4, atol=1e-4)
        moved = torch.randint(1, width + 1, (rows,), generator=g)  # rows keep different numbers of columns
        start = torch.minimum(start + moved, torch.full_like(start, N))
        redraft = torch.randint(0, spec.codebook_size, tokens.shape, generator=g)
        later = torch.arange(tokens.shape[1]) > start[:, None]  # drafts after the new start change
        tokens = torch.where(later, redraft, tokens)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("width", [1, 3])
def test_static_buffers_give_the_model_logits_on_ragged_windows(name, width):
    model = model_named(name)
    with torch.inference_mode():
        ragged_passes(StaticKV(model, SPEC, 4, SPEC.num_codes + 2 * width + 1), model, SPEC, 4, width)


@pytest.mark.parametrize("use_cache", [True, False])
def test_transformers_cache_gives_the_model_logits_on_ragged_windows(use_cache):
    model = make_model("gpt2")
    with torch.inference_mode():
        ragged_passes(TransformersKV(model, SPEC, use_cache=use_cache), model, SPEC, 3, 3)


class PastKeyValuesModel(torch.nn.Module):
    """A causal LM as transformers < 5.24 spells it: the cache keyword is `past_key_values`."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.calls = model, []

    def forward(self, input_ids=None, past_key_values=None, use_cache=None, logits_to_keep=0, **kwargs):
        self.calls.append(past_key_values is not None)
        out = self.inner(input_ids=input_ids, **{cache_keyword(self.inner): past_key_values}, use_cache=use_cache,
                         logits_to_keep=logits_to_keep, **kwargs)
        out.past_key_values = getattr(out, cache_keyword(self.inner))
        return out


def test_the_cache_goes_under_the_keyword_forward_takes():
    model = make_model()
    assert cache_keyword(model) in ("cache", "past_key_values")
    wrapped = PastKeyValuesModel(model)
    assert cache_keyword(wrapped) == "past_key_values"
    decoder = TransformersKV(wrapped, SPEC)
    with torch.inference_mode():
        ragged_passes(decoder, model, SPEC, 2, 1)
    assert wrapped.calls[0] is False and all(wrapped.calls[1:])  # the cache came back in every later pass

    class NoCache(torch.nn.Module):
        def forward(self, input_ids=None, **kwargs):
            raise AssertionError("never called")

    with pytest.raises(TypeError, match="neither `cache` nor `past_key_values`"):
        cache_keyword(NoCache())


# ------------------------------------------------------------------ exactness and seeds


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("width", [2, 5, 16])
def test_jacobi_draws_exactly_the_codes_of_ar(name, width):
    model = model_named(name)
    labels = torch.tensor([0, 1, 2, -1, 0, 1, 2, 0])
    prefix = torch.randint(0, SPEC.codebook_size, (8, 3), generator=torch.Generator().manual_seed(1))
    for settings in ({"guidance_scale": 2.0}, {"temperature": 0.7, "top_k": 6}, {"top_p": 0.8, "prefix_codes": prefix}):
        stats = {}
        ar = sample(model, SPEC, 8, labels, seeds=torch.arange(8), sampler="ar", **settings)
        jacobi = sample(model, SPEC, 8, labels, seeds=torch.arange(8), sampler="jacobi", window=width, stats=stats,
                        **settings)
        assert torch.equal(jacobi, ar), settings
        assert stats["sampler"] == "jacobi" and stats["passes"] <= stats["codes"]


def test_jacobi_decides_several_codes_per_pass():
    """On a prior whose next code hardly depends on the context, a window is mostly confirmed."""
    model = make_model(init=0.02)  # near-uniform, near context-free logits
    stats_ar, stats_jacobi = {}, {}
    ar = sample(model, SPEC, 4, seeds=torch.arange(4), sampler="ar", stats=stats_ar)
    jacobi = sample(model, SPEC, 4, seeds=torch.arange(4), sampler="jacobi", window=6, stats=stats_jacobi)
    assert torch.equal(ar, jacobi)
    assert stats_ar["passes"] == SPEC.num_codes
    assert stats_jacobi["passes"] <= SPEC.num_codes // 2


@pytest.mark.parametrize("sampler", ["ar", "jacobi", "sjd"])
def test_an_image_depends_on_its_own_seed_only(sampler):
    model = make_model()
    labels = torch.tensor([0, 1, 2, -1, 2, 0])
    seeds = torch.tensor([11, 12, 13, 14, 15, 16])
    together = sample(model, SPEC, 6, labels, guidance_scale=1.5, seeds=seeds, sampler=sampler, batch_size=6)
    apart = sample(model, SPEC, 2, labels[[4, 1]], guidance_scale=1.5, seeds=seeds[[4, 1]], sampler=sampler,
                   batch_size=1)
    assert torch.equal(apart, together[[4, 1]])
    again = sample(model, SPEC, 6, labels, guidance_scale=1.5, seeds=seeds + 1, sampler=sampler, batch_size=4)
    assert not torch.equal(again, together)


def test_sjd_draws_other_codes_than_ar_for_the_same_seeds():
    model = make_model()
    ar = sample(model, SPEC, 8, seeds=torch.arange(8), sampler="ar")
    assert not torch.equal(sample(model, SPEC, 8, seeds=torch.arange(8), sampler="sjd"), ar)


# ------------------------------------------------------------------ distributions

TINY = PriorSpec(codebook_size=2, grid=(2, 3), class_names=("a", "b"))  # 64 grids: windows move, drafts start as the code above
GRIDS = torch.tensor(list(itertools.product(range(2), repeat=6)))  # (64, 6)


def exact_distribution(model, label: int, guidance: float, temperature: float) -> torch.Tensor:
    """p(x) of every grid under guidance and temperature, in GRIDS order."""
    with torch.no_grad():
        def logits(cond_token: int) -> torch.Tensor:
            tokens = torch.cat([torch.full((len(GRIDS), 1), cond_token), GRIDS[:, :-1]], 1)
            return code_logits(model, tokens, TINY, use_cache=False)[0]  # (64, 6, K)
        c, u = logits(TINY.class_token_offset + label), logits(TINY.null_token_id)
        logp = torch.log_softmax((u + guidance * (c - u)) / temperature, -1)
    return logp.gather(-1, GRIDS[..., None])[..., 0].sum(1).exp()


def grid_counts(codes: torch.Tensor) -> torch.Tensor:
    index = (codes.reshape(len(codes), 6) * (2 ** torch.arange(5, -1, -1))).sum(1)
    return torch.bincount(index, minlength=64).double()


def goodness_of_fit(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square p-value of counts against probs, cells expected below 5 pooled."""
    expected = probs.double() * counts.sum()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    return float(chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue)


@pytest.mark.parametrize("sampler", ["ar", "jacobi", "sjd"])
def test_samplers_draw_the_model_distribution_exactly(sampler):
    """Joint distribution of whole (tiny) grids, with guidance and temperature: a chi-square test
    against the exact probabilities of all 64 grids, on 4,000 draws."""
    model = make_model(spec=TINY, init=0.8, seed=3)
    probs = exact_distribution(model, 1, 1.5, 1.3)
    n = 4000
    labels = torch.ones(n, dtype=torch.long)
    codes = sample(model, TINY, n, labels, guidance_scale=1.5, temperature=1.3,
                   seeds=torch.arange(n) + 10_000 * len(sampler), sampler=sampler, window=3, batch_size=n)
    assert goodness_of_fit(grid_counts(codes), probs) > 1e-3
    # the test can fail: draws at another temperature are told apart
    off = sample(model, TINY, n, labels, guidance_scale=1.5, temperature=1.8, seeds=torch.arange(n), sampler=sampler,
                 window=3, batch_size=n)
    assert goodness_of_fit(grid_counts(off), probs) < 1e-3


def test_sjd_and_ar_code_histograms_agree():
    """Two-sample chi-square test of the code histogram at every grid position, SJD against AR
    (600 draws each, other seeds), with guidance and top-k; and a control it must reject."""
    spec = PriorSpec(codebook_size=6, grid=(2, 4), class_names=("a", "b"))
    model = make_model(spec=spec, init=0.5, seed=1)
    labels = torch.arange(600) % 2
    settings = dict(guidance_scale=2.0, top_k=4, batch_size=600)
    ar = sample(model, spec, 600, labels, seeds=torch.arange(600), sampler="ar", **settings).reshape(600, -1)
    sjd = sample(model, spec, 600, labels, seeds=torch.arange(600) + 5000, sampler="sjd", **settings).reshape(600, -1)
    hot = sample(model, spec, 600, labels, seeds=torch.arange(600) + 9000, sampler="ar", temperature=1.6,
                 **settings).reshape(600, -1)

    def pvalues(a: torch.Tensor, b: torch.Tensor) -> list[float]:
        out = []
        for t in range(spec.num_codes):
            table = torch.stack([torch.bincount(a[:, t], minlength=6), torch.bincount(b[:, t], minlength=6)])
            table = table[:, table.sum(0) > 0]
            out.append(float(chi2_contingency(table.numpy())[1]))
        return out

    assert min(pvalues(ar, sjd)) > 1e-3 / spec.num_codes  # Bonferroni over positions
    assert min(pvalues(ar, hot)) < 1e-3 / spec.num_codes


def test_auto_picks_jacobi_for_small_batches_only():
    from vqgpt.prior.sampling import resolve_sampler

    cpu = torch.device("cpu")
    assert resolve_sampler("auto", cpu, 1) == resolve_sampler("auto", cpu, 4) == "jacobi"
    assert resolve_sampler("auto", cpu, 5) == "ar"
    assert resolve_sampler("sjd", cpu, 64) == "sjd"
    stats = {}
    sample(make_model(), SPEC, 3, torch.tensor([0, 1, 2]), guidance_scale=2.0, batch_size=3, stats=stats)  # 6 rows
    assert stats["sampler"] == "ar"
    sample(make_model(), SPEC, 3, torch.tensor([0, 1, 2]), guidance_scale=2.0, batch_size=2, stats=stats)  # 4 rows
    assert stats["sampler"] == "jacobi"


# ------------------------------------------------------------------ precision


def test_bf16_runs_on_a_bf16_copy_and_leaves_the_model_alone():
    from vqgpt.prior.sampling import in_precision, resolve_precision

    model = make_model()
    twin = in_precision(model, "bf16")
    assert twin is not model and in_precision(model, "fp32") is model
    assert {p.dtype for p in twin.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert twin.model.rotary_emb.inv_freq.dtype == torch.float32  # RoPE frequencies stay exact
    assert in_precision(twin, "bf16") is twin
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", torch.device("cpu"))
    stats = {}
    codes = sample(model, SPEC, 4, torch.tensor([0, 1, 2, 0]), seeds=torch.arange(4), precision="bf16", stats=stats)
    assert stats["precision"] == "bf16" and codes.dtype == torch.long and 0 <= codes.min() and codes.max() < 12
    again = sample(model, SPEC, 4, torch.tensor([0, 1, 2, 0]), seeds=torch.arange(4), precision="bf16")
    assert torch.equal(codes, again)  # deterministic
    assert {p.dtype for p in model.parameters()} == {torch.float32} and not model.training


@pytest.mark.parametrize("sampler", ["ar", "jacobi", "sjd"])
def test_bf16_samplers_draw_the_model_distribution(sampler):
    """bf16 sampling draws exactly the distribution of the model with bf16 weights (chi-square on
    4,000 whole tiny grids), which differs from the fp32 model's only by rounding; another
    temperature is told apart."""
    from vqgpt.prior.sampling import in_precision

    model = make_model(spec=TINY, init=0.8, seed=3)
    probs = exact_distribution(in_precision(model, "bf16"), 1, 1.5, 1.3).double()
    # this model's logits are far larger than a trained prior's: even so rounding moves little mass
    assert 0 < 0.5 * (probs - exact_distribution(model, 1, 1.5, 1.3).double()).abs().sum() < 0.06
    n = 4000
    labels = torch.ones(n, dtype=torch.long)
    common = dict(guidance_scale=1.5, sampler=sampler, window=3, batch_size=n, precision="bf16")
    codes = sample(model, TINY, n, labels, temperature=1.3, seeds=torch.arange(n) + 20_000, **common)
    assert goodness_of_fit(grid_counts(codes), probs) > 1e-3
    off = sample(model, TINY, n, labels, temperature=1.8, seeds=torch.arange(n), **common)
    assert goodness_of_fit(grid_counts(off), probs) < 1e-3


def test_the_sampling_benchmark_runs_with_its_defaults_and_in_bf16():
    """scripts/bench_sampling.py with its default model size, tiny lengths, both precisions."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_sampling.py"
    for precision in ("fp32", "bf16"):
        out = subprocess.run([sys.executable, str(script), "--lengths", "16", "--batches", "1", "--methods",
                              "plain-pytorch", "ar", "jacobi", "--repeats", "1", "--images", "1",
                              "--precision", precision], capture_output=True, text=True, timeout=300, check=True).stdout
        assert f"precision {precision} (every method)" in out
        rows = [line.split() for line in out.splitlines() if line.strip().startswith("16 ")]
        assert [r[2] for r in rows] == ["plain-pytorch", "ar", "jacobi"] and all(float(r[3].replace(",", "")) > 0 for r in rows)
