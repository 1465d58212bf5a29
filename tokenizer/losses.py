"""Training losses of the tokenizer: reconstruction, LPIPS perceptual loss, PatchGAN.

- ``LPIPS``: VGG16 trunk (torchvision architecture, weights from a *local* file — never
  downloaded) plus the small linear calibration layers that ship inside the ``lpips`` package.
- ``NLayerDiscriminator``: PatchGAN discriminator (pix2pix / taming-transformers), with
  GroupNorm instead of BatchNorm so it needs no running statistics under DDP.
- ``hinge_d_loss`` / ``hinge_g_loss`` and ``adaptive_gan_weight`` (λ = ||∇L_rec|| /
  (||∇L_G|| + 1e-4) at the decoder's last layer, clamped).

Loss functions return tensors; the training loop logs them.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import nn

from .quantizer import is_distributed

logger = logging.getLogger(__name__)

__all__ = [
    "LPIPS",
    "default_vgg_path",
    "default_lpips_lin_path",
    "NLayerDiscriminator",
    "hinge_d_loss",
    "hinge_g_loss",
    "adaptive_gan_weight",
    "reconstruction_loss",
    "generator_adversarial_loss",
    "discriminator_loss",
]

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's IMAGENET1K_V1 file name in the hub cache


def default_vgg_path() -> Path:
    """Where torchvision keeps its vgg16 file: ``torch.hub.get_dir()/checkpoints/...``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def default_lpips_lin_path() -> Path | None:
    """``lpips/weights/v0.1/vgg.pth`` inside the installed ``lpips`` package (not imported)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / "vgg.pth"


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean absolute ("l1") or squared ("l2") error; both (B, C, H, W)."""
    if kind == "l1":
        return (reconstruction - target).abs().mean()
    if kind == "l2":
        return (reconstruction - target).pow(2).mean()
    raise ValueError(f"reconstruction loss must be 'l1' or 'l2', got {kind!r}")


def _load_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file: one clear line
        raise ValueError(f"could not read {what} weights from {path}: {type(err).__name__}: {err}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict of {what} weights")
    return state


class LPIPS(nn.Module):
    """Learned perceptual distance (Zhang et al. 2018) with a VGG16 trunk.

    ``vgg_path``: a torchvision vgg16 state dict (``features.*`` keys; ``classifier.*`` keys
    are ignored) — ``None`` means torchvision's file in the torch hub cache.
    ``lin_path``: LPIPS v0.1 linear weights — ``None`` means the copy inside the ``lpips``
    package. A missing file is a ValueError; nothing is ever downloaded. All parameters are
    frozen. Input: two images (B, C, H, W) in [-1, 1], C = 1 or 3. Output: (B,) distances.
    """

    # VGG16 feature indices after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    _TAPS = (3, 8, 15, 22, 29)
    _WIDTHS = (64, 128, 256, 512, 512)

    def __init__(self, vgg_path: str | Path | None = None, lin_path: str | Path | None = None):
        super().__init__()
        vgg_file = Path(vgg_path) if vgg_path else default_vgg_path()
        if not vgg_file.is_file():
            raise ValueError(
                f"the perceptual (LPIPS) loss needs VGG16 weights, none at {vgg_file}; "
                "set vgg_path to a local torchvision vgg16 state dict or set perceptual_weight=0"
            )
        lin_file = Path(lin_path) if lin_path else default_lpips_lin_path()
        if lin_file is None or not lin_file.is_file():
            raise ValueError(
                f"the perceptual (LPIPS) loss needs the LPIPS linear weights, none at {lin_file}; "
                "pip install lpips (it ships them) or set lpips_lin_path"
            )
        self.features = torchvision.models.vgg16(weights=None).features[: self._TAPS[-1] + 1]
        state = _load_state(vgg_file, "VGG16")
        trunk = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        expected = self.features.state_dict()
        missing = [k for k in expected if k not in trunk]
        bad = [k for k in expected if k in trunk and trunk[k].shape != expected[k].shape]
        if missing or bad:
            raise ValueError(
                f"{vgg_file} is not a torchvision vgg16 state dict: "
                f"missing {['features.' + k for k in missing[:3]]}, wrong shapes {['features.' + k for k in bad[:3]]}"
            )
        self.features.load_state_dict({k: trunk[k] for k in expected}, strict=True)
        lin_state = _load_state(lin_file, "LPIPS linear")
        self.lins = nn.ModuleList(nn.Conv2d(w, 1, 1, bias=False) for w in self._WIDTHS)
        for i, lin in enumerate(self.lins):
            key = f"lin{i}.model.1.weight"
            if key not in lin_state or lin_state[key].shape != lin.weight.shape:
                raise ValueError(f"{lin_file} is not an LPIPS v0.1 vgg weight file (bad or missing {key})")
            lin.weight.data.copy_(lin_state[key])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":  # always frozen, always eval
        return super().train(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey → RGB
        h = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self._TAPS:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dist = x.new_zeros(x.shape[0], dtype=torch.float32)
        for lin, fx, fy in zip(self.lins, self._taps(x), self._taps(y)):
            nx = fx / (fx.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-10).to(fx.dtype)
            ny = fy / (fy.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-10).to(fy.dtype)
            dist = dist + lin((nx - ny).pow(2)).float().mean(dim=(1, 2, 3))
        return dist


class NLayerDiscriminator(nn.Module):
    """PatchGAN: (B, C, H, W) → (B, 1, h', w') real/fake logits, one per overlapping patch."""

    def __init__(self, in_channels: int, base_channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < num_layers else 1
            width = base_channels * mult
            layers += [
                nn.Conv2d(base_channels * prev, width, 4, stride=stride, padding=1, bias=False),
                nn.GroupNorm(min(32, width), width),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(base_channels * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ½(E[relu(1 - D(x))] + E[relu(1 + D(x̂))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss -E[D(x̂)]."""
    return -logits_fake.mean()


def adaptive_gan_weight(
    rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """λ = ||∇_last L_rec|| / (||∇_last L_G|| + 1e-4), clamped to [0, max_weight], detached.

    Balances the GAN term against the reconstruction term at the decoder's last layer
    (Esser et al. 2021). Both losses must still hold their graphs (retain_graph is used).
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    if is_distributed():  # autograd.grad bypasses DDP's all-reduce: use the global batch's gradients
        grads = torch.stack([rec_grad.float(), g_grad.float()])
        dist.all_reduce(grads)
        rec_grad, g_grad = grads / dist.get_world_size()
    weight = rec_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


def generator_adversarial_loss(discriminator: nn.Module, reconstruction: torch.Tensor) -> torch.Tensor:
    """Hinge generator loss of ``reconstruction`` (B, C, H, W) with the discriminator frozen:
    the graph records no discriminator parameters, so backward sends D no gradients."""
    flags = [p.requires_grad for p in discriminator.parameters()]
    discriminator.requires_grad_(False)
    try:
        return hinge_g_loss(discriminator(reconstruction))
    finally:
        for p, flag in zip(discriminator.parameters(), flags):
            p.requires_grad_(flag)


def discriminator_loss(discriminator: nn.Module, real: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss on real images vs *detached* reconstructions (no gradient can
    reach the autoencoder). One forward over the concatenation, so a DDP-wrapped D sees a
    single forward per backward; GroupNorm keeps the two halves independent."""
    logits = discriminator(torch.cat([real, reconstruction.detach()]))
    logits_real, logits_fake = logits.chunk(2)
    return hinge_d_loss(logits_real, logits_fake)
