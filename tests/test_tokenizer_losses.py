"""Loss terms: stop-gradients of the GAN losses, adaptive weight, LPIPS loading from local files."""

import pytest
import torch
import torchvision

from vqgpt.tokenizer import PRESETS, VQGAN, VQGANConfig
from vqgpt.tokenizer.losses import (
    LPIPS,
    NLayerDiscriminator,
    adaptive_gan_weight,
    discriminator_loss,
    generator_adversarial_loss,
    hinge_d_loss,
    reconstruction_loss,
)


def _setup():
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig(**PRESETS["tiny"]["model"])).train()
    disc = NLayerDiscriminator(1, 8, 1)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    return model, disc, x


def _grads(module):
    return [p.grad for p in module.parameters()]


def _nonzero(grads):
    return any(g is not None and g.abs().sum() > 0 for g in grads)


def test_discriminator_loss_sends_no_gradient_to_the_autoencoder():
    model, disc, x = _setup()
    out = model(x)
    d_loss = discriminator_loss(disc, x, out.reconstruction)
    d_loss.backward()
    assert all(g is None for g in _grads(model))
    assert _nonzero(_grads(disc))
    # control: without the detach inside, the autoencoder would get gradients
    hinge_d_loss(disc(x), disc(model(x).reconstruction)).backward()
    assert _nonzero(_grads(model))


def test_generator_loss_sends_no_gradient_to_the_discriminator():
    model, disc, x = _setup()
    out = model(x)
    g_loss = generator_adversarial_loss(disc, out.reconstruction)
    g_loss.backward()
    assert all(g is None for g in _grads(disc))
    assert _nonzero(_grads(model))
    assert all(p.requires_grad for p in disc.parameters())  # flags restored


def test_adaptive_weight_is_the_gradient_norm_ratio():
    model, disc, x = _setup()
    out = model(x)
    rec = reconstruction_loss(out.reconstruction, x, "l1")
    g = generator_adversarial_loss(disc, out.reconstruction)
    weight = adaptive_gan_weight(rec, g, model.last_layer)
    gr = torch.autograd.grad(rec, model.last_layer, retain_graph=True)[0]
    gg = torch.autograd.grad(g, model.last_layer, retain_graph=True)[0]
    assert torch.allclose(weight, gr.norm() / (gg.norm() + 1e-4))
    assert not weight.requires_grad
    assert adaptive_gan_weight(rec, g, model.last_layer, max_weight=1e-3) == pytest.approx(1e-3)
    assert all(p.grad is None for p in model.parameters())  # grads taken, none accumulated


def test_hinge_and_reconstruction_losses():
    assert hinge_d_loss(torch.full((2, 1), 2.0), torch.full((2, 1), -2.0)) == 0
    assert hinge_d_loss(torch.zeros(2, 1), torch.zeros(2, 1)) == 1
    a, b = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)
    assert reconstruction_loss(a, b, "l1") == 0.5 and reconstruction_loss(a, b, "l2") == 0.25
    with pytest.raises(ValueError, match="l1"):
        reconstruction_loss(a, b, "huber")


def test_discriminator_outputs_patch_logits():
    disc = NLayerDiscriminator(3, 8, 2)
    assert disc(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 6, 6)


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A randomly initialised torchvision VGG16 trunk saved like torchvision's own file."""
    torch.manual_seed(0)
    features = torchvision.models.vgg16(weights=None).features
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    path = tmp_path_factory.mktemp("vgg") / "vgg16-random.pth"
    torch.save(state, path)
    return path, state


def test_lpips_loads_local_vgg_weights(vgg_file):
    path, state = vgg_file
    lpips = LPIPS(vgg_path=str(path))
    for key, value in lpips.features.state_dict().items():
        assert torch.equal(value, state[f"features.{key}"])
    assert all(not p.requires_grad for p in lpips.parameters())
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    y = torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.allclose(lpips(x, x), torch.zeros(2), atol=1e-6)
    d = lpips(x, y)
    assert d.shape == (2,) and (d > 0).all()
    xr = x.clone().requires_grad_(True)
    lpips(xr, y).sum().backward()  # the loss is differentiable w.r.t. the images
    assert xr.grad.abs().sum() > 0
    assert lpips(x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)).allclose(d)  # grey == RGB copy


def test_lpips_errors_clearly_without_weights(tmp_path, vgg_file):
    with pytest.raises(ValueError, match="needs VGG16 weights, none at .*missing.pth"):
        LPIPS(vgg_path=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(ValueError, match="not a torchvision vgg16 state dict"):
        LPIPS(vgg_path=str(bad))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="could not read VGG16 weights"):
        LPIPS(vgg_path=str(tmp_path / "junk.pth"))
    with pytest.raises(ValueError, match="LPIPS linear weights"):
        LPIPS(vgg_path=str(vgg_file[0]), lin_path=str(tmp_path / "nolin.pth"))
