"""Every preset builds and trains one step (the 256 px tokenizer and the ~340M prior included),
with the parameter counts the README states; both trainers run under bf16 autocast."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vqgpt.prior import PRESETS as PRIOR_PRESETS
from vqgpt.prior import PriorConfig, PriorSpec, build_prior_model
from vqgpt.prior.train import sequence_nll
from vqgpt.tokenizer import PRESETS as TOKENIZER_PRESETS
from vqgpt.tokenizer import VQGAN, NLayerDiscriminator, TokenizerTrainConfig, VQGANConfig
from vqgpt.tokenizer.losses import discriminator_loss

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
# The reference token data of the README's prior sizes: ImageNet-like, 16×16 codes of 16,384, 1,000 classes.
REFERENCE_SPEC = PriorSpec(16384, (16, 16), tuple(str(i) for i in range(1000)))


def readme_count(stage: str, preset: str) -> int:
    """The parameter count in the README's "Preset sizes" table: `| stage | `preset` | 1,234 | …`."""
    match = re.search(rf"^\| {stage} \| `{preset}` \| ([\d,]+) \|", README, flags=re.M)
    assert match, f"the README's preset table has no row for the {stage} preset {preset}"
    return int(match.group(1).replace(",", ""))


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(TOKENIZER_PRESETS))
def test_tokenizer_preset_builds_and_trains_a_step(preset):
    torch.manual_seed(0)
    config = VQGANConfig(**TOKENIZER_PRESETS[preset]["model"])
    train = TokenizerTrainConfig(**TOKENIZER_PRESETS[preset]["train"])
    model = VQGAN(config).train()
    disc = NLayerDiscriminator(config.channels, train.disc_channels, train.disc_layers)
    assert sum(p.numel() for p in model.parameters()) == readme_count("tokenizer", preset)
    images = torch.rand(1, config.channels, config.image_size, config.image_size) * 2 - 1
    out = model(images)
    loss = (out.reconstruction - images).abs().mean() + out.quantizer_loss
    loss.backward()
    discriminator_loss(disc, images, out.reconstruction).backward()
    assert torch.isfinite(loss) and model.decoder.conv_out.weight.grad is not None
    assert out.codes.shape == (1, *config.grid_size)


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(PRIOR_PRESETS))
def test_prior_preset_builds_and_trains_a_step(preset):
    torch.manual_seed(0)
    model = build_prior_model(PriorConfig(**PRIOR_PRESETS[preset]["model"]), REFERENCE_SPEC)
    assert sum(p.numel() for p in model.parameters()) == readme_count("prior", preset)
    batch = torch.cat([torch.tensor([[REFERENCE_SPEC.codebook_size + 3]]),
                       torch.randint(0, REFERENCE_SPEC.codebook_size, (1, REFERENCE_SPEC.num_codes))], dim=1)
    loss = sequence_nll(model.train(), batch, REFERENCE_SPEC).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def vqgpt(*args) -> None:
    result = subprocess.run([sys.executable, "-m", "vqgpt", *map(str, args)], capture_output=True, text=True,
                            env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_both_trainers_run_under_bf16_autocast(image_folder, tiny_run, tmp_path):
    """Each in its own process (accelerate fixes the precision once per process)."""
    tok = tmp_path / "tok"
    vqgpt("train-tokenizer", "--data", image_folder, "--out", tok, "--preset", "tiny", "--set", "train.max_steps=6",
          "--set", "train.mixed_precision=bf16", "--set", "train.disc_start=2")
    rows = [r for r in metrics(tok) if r["split"] == "train"]
    assert rows and all(torch.isfinite(torch.tensor([r["loss"], r["rec_loss"], r["d_loss"]])).all()
                        for r in rows if "d_loss" in r)
    weights = load_file(str(tok / "model.safetensors"))
    assert weights["quantizer.codebook"].dtype == torch.float32  # codebook maths and storage stay fp32
    assert all(v.dtype in (torch.float32, torch.int64, torch.bool) for v in weights.values())

    prior = tmp_path / "prior"
    vqgpt("train-prior", "--tokens", tiny_run / "tokens", "--out", prior, "--preset", "tiny",
          "--set", "train.max_steps=6", "--set", "train.mixed_precision=bf16", "--set", "train.eval_every=3")
    rows = metrics(prior)
    assert rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert all(v.dtype == torch.float32 for v in load_file(str(prior / "model.safetensors")).values())
