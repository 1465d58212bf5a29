"""Training loop: 2-step smoke test, files written, resume, out-dir rules, evaluate, train_step."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vqgpt.tokenizer import PRESETS, VQGAN, TokenizerTrainConfig, VQGANConfig, evaluate_reconstruction, train_tokenizer


class TinyImages(Dataset):
    """Smooth random grey 16×16 images in the data-source item format."""

    def __init__(self, n: int, seed: int = 0, size: int = 16):
        g = torch.Generator().manual_seed(seed)
        low = torch.rand(n, 1, 4, 4, generator=g)
        self.images = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False) * 2 - 1

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": i % 2, "source": f"index:{i}"}


MODEL = VQGANConfig(**PRESETS["tiny"]["model"])


def train_cfg(**overrides) -> TokenizerTrainConfig:
    return TokenizerTrainConfig(**{**PRESETS["tiny"]["train"], "cpu": True, **overrides})


def metric_steps(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(l)["step"] for l in lines if json.loads(l)["split"] == "train"]


def test_two_step_training_writes_everything(tmp_path):
    out = tmp_path / "tok"
    summary = train_tokenizer(MODEL, train_cfg(max_steps=2, disc_start=1), TinyImages(24), TinyImages(8, seed=1), out)
    assert summary["steps"] == 2
    for key in ("psnr", "ssim", "codebook_usage", "perplexity", "train_images_per_sec", "fingerprint"):
        assert key in summary
    assert 0 <= summary["codebook_usage"] <= 100
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "loss_curve.png",
                 "samples/recon_step_000002.png", "checkpoints/step_2/trainer_state.json"):
        assert (out / name).is_file(), name
    assert not list((out / "checkpoints").glob(".*tmp*"))
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
    assert "d_loss" in records[1] and "gan_lambda" in records[1]  # GAN active from step index 1
    assert "d_loss" not in records[0]
    assert records[-1]["split"] == "validation"
    model = VQGAN.from_pretrained(out)
    assert model.fingerprint() == summary["fingerprint"]
    assert bool(model.quantizer.initialized)


def test_adaptive_weight_max_caps_the_gan_weight_the_step_uses(tmp_path):
    """The first GAN step of two runs identical up to it: the capped run's λ is min(λ, cap), and
    the `small` preset (every user's default) caps λ at 1 (docs/design-notes.md)."""

    def gan_lambdas(cap: float, tmp: Path) -> list[float]:
        config = train_cfg(max_steps=3, disc_start=1, adaptive_weight_max=cap, checkpoint_every=0, sample_every=0)
        train_tokenizer(MODEL, config, TinyImages(24), None, tmp)
        records = [json.loads(l) for l in (tmp / "metrics.jsonl").read_text().splitlines()]
        return [r["gan_lambda"] for r in records if "gan_lambda" in r]

    free = gan_lambdas(1e4, tmp_path / "free")
    cap = free[0] / 2
    capped = gan_lambdas(cap, tmp_path / "capped")
    assert len(free) == len(capped) == 2 and free[0] > 0
    assert capped[0] == pytest.approx(cap, rel=1e-6)
    assert max(capped) <= cap * (1 + 1e-6)
    assert PRESETS["small"]["train"]["adaptive_weight_max"] == 1.0


def test_existing_output_needs_overwrite_or_resume(tmp_path):
    out = tmp_path / "tok"
    data = TinyImages(16)
    train_tokenizer(MODEL, train_cfg(max_steps=1, checkpoint_every=0, sample_every=0), data, None, out)
    with pytest.raises(FileExistsError, match="overwrite"):
        train_tokenizer(MODEL, train_cfg(max_steps=1), data, None, out)
    summary = train_tokenizer(MODEL, train_cfg(max_steps=1, checkpoint_every=0, sample_every=0), data, None, out, overwrite=True)
    assert summary["steps"] == 1 and "psnr" not in summary  # no validation data given


def test_resume_continues_the_step_count_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    data, val = TinyImages(24), TinyImages(8, seed=1)
    straight = train_tokenizer(MODEL, train_cfg(max_steps=4), data, val, tmp_path / "straight")

    import vqgpt.checkpoints as tc

    save_checkpoint = tc.save_checkpoint

    def save_then_die(*args):
        save_checkpoint(*args)
        raise KeyboardInterrupt  # the run is killed right after its step-2 checkpoint

    out = tmp_path / "resumed"
    monkeypatch.setattr(tc, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer(MODEL, train_cfg(max_steps=4), data, val, out)
    monkeypatch.setattr(tc, "save_checkpoint", save_checkpoint)
    assert not (out / "config.json").exists()  # a killed run does not look complete
    assert (out / "checkpoints" / "step_2").is_dir()
    with pytest.raises(FileExistsError, match="resume"):
        train_tokenizer(MODEL, train_cfg(max_steps=4), data, val, out)
    resumed = train_tokenizer(MODEL, train_cfg(max_steps=4), data, val, out, resume=True)
    assert resumed["steps"] == 4
    assert metric_steps(out) == [1, 2, 3, 4]
    assert (out / "checkpoints" / "step_4").is_dir()
    assert resumed["fingerprint"] == straight["fingerprint"]  # same weights as never stopping


def test_perceptual_loss_without_vgg_fails_before_writing(tmp_path):
    cfg = train_cfg(perceptual_weight=1.0, vgg_path=str(tmp_path / "no-vgg.pth"))
    with pytest.raises(ValueError, match="perceptual"):
        train_tokenizer(MODEL, cfg, TinyImages(16), None, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_image_shape_must_match_config(tmp_path):
    with pytest.raises(ValueError, match=r"expects \(1, 32, 32\)"):
        train_tokenizer(VQGANConfig(image_size=32), train_cfg(), TinyImages(16), None, tmp_path / "tok")


def test_train_config_validation():
    with pytest.raises(ValueError, match="mixed_precision"):
        TokenizerTrainConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        TokenizerTrainConfig(max_steps=0)
    with pytest.raises(ValueError, match="rec_loss"):
        TokenizerTrainConfig(rec_loss="huber")


def test_evaluate_reports_reconstruction_and_usage():
    torch.manual_seed(0)
    model = VQGAN(MODEL)
    metrics = evaluate_reconstruction(model, TinyImages(8), batch_size=3)
    assert metrics["num_images"] == 8
    assert 0 < metrics["codebook_usage"] <= 100 and metrics["perplexity"] >= 1
    assert metrics["psnr"] < 30 and -1 <= metrics["ssim"] <= 1
    # codes alone determine the histogram: identical images use a single code... or a few
    same = TinyImages(1)
    same.images = same.images.expand(8, -1, -1, -1) * 0 + 0.5
    flat = evaluate_reconstruction(model, same, batch_size=4)
    assert flat["codebook_usage"] < metrics["codebook_usage"]


def test_weight_ema_averages_every_weight_and_copies_buffers():
    from vqgpt.tokenizer.train import WeightEMA

    torch.manual_seed(0)
    model = VQGAN(MODEL)
    ema = WeightEMA(model, decay=0.75)
    ema.update(model)  # the first update takes the weights as they are
    before = {k: v.clone() for k, v in ema.module.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.quantizer.steps_unused.fill_(7)
    ema.update(model)  # then  ema = 0.75 · ema + 0.25 · weights
    for name, p in ema.module.named_parameters():  # the codebook included
        assert torch.allclose(p, 0.75 * before[name] + 0.25 * (before[name] + 1), atol=1e-6), name
    assert torch.equal(ema.module.quantizer.steps_unused, model.quantizer.steps_unused)
    assert not any(p.requires_grad for p in ema.parameters())


def test_training_with_ema_saves_the_averaged_weights(tmp_path):
    out = tmp_path / "tok"
    summary = train_tokenizer(MODEL, train_cfg(max_steps=2, use_ema=True, ema_decay=0.9), TinyImages(16), None, out)
    assert VQGAN.from_pretrained(out).fingerprint() == summary["fingerprint"]
    assert (out / "checkpoints" / "step_2" / "ema.safetensors").is_file()  # EMA checkpointed, no pickle
    assert not list((out / "checkpoints" / "step_2").glob("custom_checkpoint_*"))


def test_resume_needs_a_checkpoint_and_the_same_model(tmp_path):
    out = tmp_path / "tok"
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train_tokenizer(MODEL, train_cfg(max_steps=2), TinyImages(24), TinyImages(8, seed=1), out, resume=True)
    train_tokenizer(MODEL, train_cfg(max_steps=2, checkpoint_every=2), TinyImages(24), TinyImages(8, seed=1), out)
    other = VQGANConfig(**{**PRESETS["tiny"]["model"], "codebook_size": 16})
    with pytest.raises(ValueError, match="another model config"):
        train_tokenizer(other, train_cfg(max_steps=4), TinyImages(24), TinyImages(8, seed=1), out, resume=True)


def test_overwrite_refuses_another_stage_folder(tmp_path):
    prior_dir = tmp_path / "prior"
    prior_dir.mkdir()
    (prior_dir / "vqgpt_prior.json").write_text("{}")
    with pytest.raises(ValueError, match="not a tokenizer run"):
        train_tokenizer(MODEL, train_cfg(max_steps=2), TinyImages(24), TinyImages(8, seed=1), prior_dir, overwrite=True)
    assert (prior_dir / "vqgpt_prior.json").is_file()


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import vqgpt.tokenizer.train as tt

    real, calls = tt.reconstruction_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("inf") if len(calls) == 3 else loss

    monkeypatch.setattr(tt, "reconstruction_loss", poisoned)
    out = tmp_path / "tok"
    with pytest.raises(FloatingPointError, match="step 3.*step_2"):
        train_tokenizer(MODEL, train_cfg(max_steps=4, checkpoint_every=2), TinyImages(16), None, out)
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_2"]
    assert not (out / "model.safetensors").exists()


def test_overwrite_keeps_the_finished_tokenizer_until_the_new_one_is_swapped_in(tmp_path, monkeypatch):
    """`overwrite` no longer deletes the finished tokenizer when the run starts; at the end the new
    one replaces it in one folder swap: killed at that moment, the old one loads as it was."""
    import vqgpt.atomic

    out = tmp_path / "tok"
    old = train_tokenizer(MODEL, train_cfg(max_steps=2), TinyImages(24), None, out)["fingerprint"]
    (out / "notes.txt").write_text("mine")
    real_replace = vqgpt.atomic.replace_dir

    def killed_at_the_swap(new, path):
        if Path(path) == out:
            raise KeyboardInterrupt
        real_replace(new, path)

    monkeypatch.setattr(vqgpt.atomic, "replace_dir", killed_at_the_swap)
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer(MODEL, train_cfg(max_steps=2, seed=3), TinyImages(24), None, out, overwrite=True)
    monkeypatch.undo()
    assert VQGAN.from_pretrained(out).fingerprint() == old  # whole, through the whole new run
    new = train_tokenizer(MODEL, train_cfg(max_steps=2, seed=3), TinyImages(24), None, out, overwrite=True)
    assert new["fingerprint"] != old and VQGAN.from_pretrained(out).fingerprint() == new["fingerprint"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "checkpoints").is_dir()
