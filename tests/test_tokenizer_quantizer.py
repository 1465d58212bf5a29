"""Invariants of the vector quantizer (tokenizer/quantizer.py)."""

import pytest
import torch
import torch.nn.functional as F

from vqgpt.tokenizer.quantizer import VectorQuantizer, code_histogram, codebook_stats, nearest_codes


def _quantizer(k=16, d=4, **kw) -> VectorQuantizer:
    torch.manual_seed(0)
    kw.setdefault("kmeans_init", False)
    return VectorQuantizer(codebook_size=k, codebook_dim=d, **kw)


def test_decoding_returned_codes_gives_returned_vectors():
    q = _quantizer().eval()
    z = torch.randn(2, 4, 3, 5)
    out = q(z)
    assert out.codes.shape == (2, 3, 5) and out.codes.dtype == torch.long
    assert torch.allclose(q.embed(out.codes), out.quantized, atol=1e-6)
    # and the codes are the true nearest (cosine) neighbours
    flat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, 4), dim=1)
    brute = (flat @ q.normalized_codebook().t()).argmax(dim=1)
    assert torch.equal(out.codes.reshape(-1), brute)
    assert torch.equal(q.lookup(z), out.codes)


def test_straight_through_gradient_reaches_encoder_output():
    q = _quantizer().train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    w = torch.randn(2, 4, 3, 3)
    (q(z).quantized * w).sum().backward()
    # straight-through: the gradient is exactly that of normalize(z), as if no quantization
    z_ref = z.detach().clone().requires_grad_(True)
    (F.normalize(z_ref, dim=1) * w).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert torch.allclose(z.grad, z_ref.grad, atol=1e-6)


def test_codebook_loss_moves_codes_only_and_commitment_moves_encoder_only():
    q = _quantizer().train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    out.codebook_loss.backward(retain_graph=True)
    assert z.grad is None or z.grad.abs().sum() == 0  # sg[z_e]
    assert q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0
    q.codebook.grad = None
    out.commitment_loss.backward()
    assert q.codebook.grad is None or q.codebook.grad.abs().sum() == 0  # sg[z_q]
    assert z.grad is not None and z.grad.abs().sum() > 0
    # the values are the squared distances between normalised vectors
    z_e = F.normalize(z.detach(), dim=1)
    z_q = q.embed(out.codes)
    assert torch.allclose(out.codebook_loss, F.mse_loss(z_q, z_e))
    assert torch.allclose(out.commitment_loss, F.mse_loss(z_e, z_q))


def test_dead_codes_are_restarted_from_recent_encoder_outputs():
    q = _quantizer(k=8, d=4, restart_after_steps=3).train()
    # all data near one direction: only one code is ever picked
    data = F.normalize(torch.tensor([1.0, 0.0, 0.0, 0.0]) + 0.05 * torch.randn(4, 4, 2, 2).permute(0, 2, 3, 1), dim=-1)
    z = data.permute(0, 3, 1, 2).contiguous()  # (4, 4, 2, 2)
    before = q.codebook.detach().clone()
    q(z)
    q(z)
    assert torch.equal(q.codebook.detach(), before)  # not yet dead
    picked = set(q(z).codes.unique().tolist())
    after = F.normalize(q.codebook.detach(), dim=1)
    changed = [i for i in range(8) if not torch.allclose(after[i], F.normalize(before[i], dim=0))]
    assert len(changed) >= 8 - len(picked) - 1 and len(changed) > 0
    rows = F.normalize(data.reshape(-1, 4), dim=1)
    for i in changed:  # every restarted code sits on an encoder output of the batch
        assert torch.cdist(after[i][None], rows).min() < 1e-2
    assert int(q.steps_unused.max()) < 3


@pytest.mark.parametrize("restart", [10, 0])
def test_usage_stays_high_on_clustered_data(restart):
    torch.manual_seed(1)
    k, d = 16, 4
    pole = torch.tensor([1.0, 0.0, 0.0, 0.0])
    centers = F.normalize(0.5 * torch.randn(64, d) + 2 * pole, dim=1)  # 64 clusters in one cap
    q = VectorQuantizer(k, d, kmeans_init=False, restart_after_steps=restart)
    with torch.no_grad():  # a collapsed start: every code on the opposite pole
        q.codebook.copy_(-pole.repeat(k, 1))
    q.train()
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    for _ in range(40):
        pick = torch.randint(0, 64, (256,))
        z = (centers[pick] + 0.02 * torch.randn(256, d)).T.reshape(1, d, 16, 16)
        opt.zero_grad()
        q(z).codebook_loss.backward()
        opt.step()
    q.eval()
    z = (centers + 0.02 * torch.randn(64, d)).T.reshape(1, d, 8, 8)
    usage, perplexity = codebook_stats(code_histogram(q(z).codes, k))
    if restart:
        assert usage >= 0.9 and perplexity > 10
    else:  # control: without restarts the collapsed codebook stays collapsed
        assert usage < 0.2


def test_kmeans_init_puts_codes_on_the_data():
    torch.manual_seed(0)
    centers = F.normalize(torch.randn(2, 4), dim=1)
    z = (centers.repeat(128, 1) + 0.01 * torch.randn(256, 4)).T.reshape(1, 4, 16, 16)
    q = VectorQuantizer(8, 4, kmeans_init=True, kmeans_iters=10).train()
    assert not bool(q.initialized)
    assert torch.cdist(q.normalized_codebook().detach(), centers).min(dim=1).values.max() > 0.2
    q(z)
    assert bool(q.initialized)
    to_centers = torch.cdist(q.normalized_codebook().detach(), centers)  # (8, 2)
    assert to_centers.min(dim=1).values.max() < 0.05  # every code sits on a cluster
    assert to_centers.min(dim=0).values.max() < 0.05  # every cluster has a code


def test_chunked_distances_equal_full_distances():
    torch.manual_seed(0)
    z, cb = torch.randn(1000, 8), torch.randn(300, 8)
    full_idx, full_d = nearest_codes(z, cb, chunk_rows=10**6)
    for chunk in (1, 7, 128):
        idx, d = nearest_codes(z, cb, chunk_rows=chunk)
        assert torch.equal(idx, full_idx)
        assert torch.allclose(d, full_d)
    ref = torch.cdist(z, cb)
    assert torch.equal(full_idx, ref.argmin(dim=1))
    assert torch.allclose(full_d, ref.min(dim=1).values ** 2, atol=1e-4)


def test_distances_are_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    # codes that differ below bf16 resolution: only fp32 maths tells them apart
    base = F.normalize(torch.randn(1, 8), dim=1)
    cb = F.normalize(base + 1e-3 * torch.randn(64, 8), dim=1)
    z = F.normalize(base + 1e-3 * torch.randn(512, 8), dim=1)
    ref_idx, _ = nearest_codes(z, cb)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        idx, dist = nearest_codes(z, cb, chunk_rows=100)
        assert dist.dtype == torch.float32
        q = VectorQuantizer(64, 8, kmeans_init=False).eval()
        with torch.no_grad():
            q.codebook.copy_(cb)
        out = q(z.T.reshape(1, 8, 16, 32))
    assert torch.equal(idx, ref_idx)
    assert out.quantized.dtype == torch.float32
    assert torch.equal(out.codes, q.lookup(z.T.reshape(1, 8, 16, 32)))  # same as without autocast
    # the check can fail: bf16 maths would pick other codes
    bf = (z.bfloat16() @ cb.bfloat16().t()).argmax(dim=1)
    assert not torch.equal(bf, ref_idx)


def test_codebook_stats():
    assert codebook_stats(torch.tensor([5, 5, 5, 5])) == pytest.approx((1.0, 4.0))
    usage, ppl = codebook_stats(torch.tensor([10, 0, 0, 0]))
    assert usage == 0.25 and ppl == pytest.approx(1.0)
    assert code_histogram(torch.tensor([[0, 1], [1, 3]]), 5).tolist() == [1, 2, 0, 1, 0]


def test_embed_rejects_out_of_range_codes():
    q = _quantizer()
    with pytest.raises(ValueError, match="codes must lie in"):
        q.embed(torch.tensor([[[16]]]))
