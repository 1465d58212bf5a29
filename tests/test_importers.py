"""Importing published tokenizers, checked against the real implementations with random weights:
taming-transformers (the package, installed with --no-deps), LlamaGen (a test-only copy of its
vq_model.py under tests/reference, MIT) and diffusers (the package). Each reference is built at a
small width, saved in its family's own file format, imported, and must give identical codes and
decoded images within 1e-5. A checkpoint from the internet is untrusted: planted objects never run."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from vqgpt.pipeline.cli import main
from vqgpt.tokenizer import VQGAN
from vqgpt.tokenizer.importers import import_tokenizer, load_untrusted

IMAGES = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1  # (3, 3, 32, 32) in [-1, 1]


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (norm affines included), so a misplaced weight cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.2 if p.ndim > 1 else 0.5
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * scale + (1.0 if name.endswith("norm.weight") else 0.0))


def _check_same(ours: VQGAN, encode, decode) -> None:
    """Identical codes on the same images, and the same decoded images within 1e-5."""
    with torch.no_grad():
        codes = ours.encode(IMAGES)
        assert torch.equal(codes, encode(IMAGES))
        assert len(codes.unique()) > 1  # the comparison is not between two constant grids
        reference = decode(codes)
        raw = ours.decoder(ours.post_quant_proj(ours.quantizer.embed(codes)))  # before the clamp to [-1, 1]
        assert (raw - reference).abs().max() <= 1e-5
        assert (ours.decode(codes) - reference.clamp(-1, 1)).abs().max() <= 1e-5


# --------------------------------------------------------------------------- taming-transformers


def _taming_reference():
    # taming-transformers==0.0.1, installed with --no-deps by `make install` (its pinned deps are from 2021)
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.vqvae.quantize import VectorQuantizer

    dd = dict(double_z=False, z_channels=16, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2],
              num_res_blocks=1, attn_resolutions=[16], dropout=0.0)
    parts = torch.nn.ModuleDict({"encoder": Encoder(**dd), "decoder": Decoder(**dd),
                                 "quantize": VectorQuantizer(64, 4, beta=0.25),
                                 "quant_conv": torch.nn.Conv2d(16, 4, 1), "post_quant_conv": torch.nn.Conv2d(4, 16, 1)})
    _randomize(parts, 1)
    return parts.eval(), dd


class AttributeDict(dict):
    """Pickled as Lightning's hyper-parameter container (the class a real taming checkpoint names)."""


AttributeDict.__module__ = "pytorch_lightning.utilities.parsing"


def _lightning_modules() -> dict[str, types.ModuleType]:
    """Modules that make the class importable while the checkpoint is written (gone after)."""
    modules = {name: types.ModuleType(name) for name in
               ("pytorch_lightning", "pytorch_lightning.utilities", AttributeDict.__module__)}
    modules[AttributeDict.__module__].AttributeDict = AttributeDict
    return modules


def test_taming_checkpoint_imports_exactly(tmp_path, monkeypatch):
    parts, dd = _taming_reference()
    state = {k: v for k, v in parts.state_dict().items()}
    state["loss.discriminator.main.0.weight"] = torch.zeros(2, 2)  # the GAN loss's weights: dropped
    for name, module in _lightning_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    torch.save({"state_dict": state, "epoch": 3, "global_step": 100, "pytorch-lightning_version": "1.0.8",
                "hyper_parameters": AttributeDict(lr=4.5e-6), "callbacks": {"ModelCheckpoint": {"best": 1.0}}},
               tmp_path / "last.ckpt")
    for name in _lightning_modules():
        monkeypatch.delitem(sys.modules, name)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({"model": {"target": "taming.models.vqgan.VQModel", "params": {
        "embed_dim": 4, "n_embed": 64, "ddconfig": dd, "lossconfig": {"target": "taming.modules.losses.DummyLoss"}}}}))

    ours = import_tokenizer("taming", tmp_path / "last.ckpt", config=tmp_path / "model.yaml")
    assert ours.config.codebook_norm == "none" and ours.config.attn_resolutions == (16,)
    assert ours.config.source_family == "taming" and len(ours.config.source_sha256) == 64

    def encode(x):
        z = parts.quant_conv(parts.encoder(x))
        return parts.quantize(z)[2][2].view(x.shape[0], 8, 8)

    def decode(codes):
        z = parts.quantize.get_codebook_entry(codes.flatten(), (codes.shape[0], 8, 8, 4))
        return parts.decoder(parts.post_quant_conv(z))

    _check_same(ours, encode, decode)


# --------------------------------------------------------------------------- LlamaGen


def _llamagen_module():
    """tests/reference/llamagen_vq_model.py: LlamaGen's own code (MIT), loaded from its file."""
    spec = importlib.util.spec_from_file_location("llamagen_vq_model", Path(__file__).parent / "reference" /
                                                  "llamagen_vq_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _llamagen_reference(ch_mult=(1, 2, 2), ch=32, z_channels=16, codebook=(64, 8)):
    ref = _llamagen_module()

    args = ref.ModelArgs(codebook_size=codebook[0], codebook_embed_dim=codebook[1], encoder_ch_mult=list(ch_mult),
                         decoder_ch_mult=list(ch_mult), z_channels=z_channels)
    model = ref.VQModel(args)
    model.encoder = ref.Encoder(ch=ch, ch_mult=ch_mult, z_channels=z_channels)  # the reference's own classes, narrower
    model.decoder = ref.Decoder(ch=ch, ch_mult=ch_mult, z_channels=z_channels)
    _randomize(model, 2)
    return model.eval(), args


def test_llamagen_checkpoint_imports_exactly(tmp_path):
    ref, args = _llamagen_reference()
    torch.save({"model": ref.state_dict(), "steps": 10, "args": argparse.Namespace(vq_model="VQ-16")}, tmp_path / "vq.pt")
    ours = import_tokenizer("llamagen", tmp_path / "vq.pt", image_size=32)
    assert ours.config.codebook_norm == "l2" and ours.config.channel_mult == (1, 2, 2)
    assert ours.config.attn_resolutions == (8,) and ours.config.grid_size == (8, 8)

    def encode(x):
        return ref.encode(x)[2][2].view(x.shape[0], 8, 8)

    def decode(codes):
        return ref.decode_code(codes.flatten(), (codes.shape[0], 8, 8, 8))

    _check_same(ours, encode, decode)
    # an `ema` copy is preferred over `model`, as LlamaGen's own sampling scripts do
    torch.save({"model": {k: v * 0 for k, v in ref.state_dict().items()}, "ema": ref.state_dict()}, tmp_path / "ema.pt")
    assert torch.equal(import_tokenizer("llamagen", tmp_path / "ema.pt", image_size=32).encode(IMAGES), ours.encode(IMAGES))


# --------------------------------------------------------------------------- diffusers


def test_diffusers_vqmodel_imports_exactly(tmp_path):
    import diffusers  # a test extra (pyproject's dev extras)

    ref = diffusers.VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                            up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 64), layers_per_block=1,
                            latent_channels=16, num_vq_embeddings=64, vq_embed_dim=4, norm_num_groups=32)
    _randomize(ref, 3)
    ref.eval().save_pretrained(tmp_path / "vqvae")
    ours = import_tokenizer("diffusers", tmp_path / "vqvae", image_size=32)
    assert ours.config.codebook_norm == "none" and ours.config.attn_at_lowest

    def encode(x):
        latents = ref.encode(x).latents  # continuous: the codes come from its quantizer
        return ref.quantize(latents)[2][2].view(x.shape[0], 8, 8)

    def decode(codes):
        z = ref.quantize.get_codebook_entry(codes.flatten(), (codes.shape[0], 8, 8, 4))
        return ref.decoder(ref.post_quant_conv(z))

    _check_same(ours, encode, decode)


# --------------------------------------------------------------------------- untrusted files


class _Planted:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_object_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    ref, _ = _llamagen_reference()
    torch.save({"model": ref.state_dict(), "extra": _Planted(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"pickles (posix|os|nt)\.system, which is neither weights nor a training record"):
        load_untrusted(tmp_path / "evil.pt")
    code = main(["import-tokenizer", "--from", "llamagen", "--checkpoint", str(tmp_path / "evil.pt"),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and not marker.exists() and not (tmp_path / "out").exists()


def test_import_tokenizer_cli_and_bad_input(tmp_path, capsys):
    ref, _ = _llamagen_reference()
    torch.save({"model": ref.state_dict()}, tmp_path / "vq.pt")
    out = tmp_path / "tok"
    assert main(["import-tokenizer", "--from", "llamagen", "--checkpoint", str(tmp_path / "vq.pt"), "--image-size", "32",
                 "--out", str(out)]) == 0
    assert "imported" in capsys.readouterr().out
    loaded = VQGAN.from_pretrained(out)  # an ordinary vqgpt tokenizer folder
    assert loaded.config.source_file == "vq.pt" and torch.equal(loaded.encode(IMAGES), ref.encode(IMAGES)[2][2].view(3, 8, 8))

    def error(*args: str) -> str:
        code = main(["import-tokenizer", *args, "--out", str(tmp_path / "bad")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err, err
        assert not (tmp_path / "bad").exists()  # no output folder left behind
        return err

    code = main(["import-tokenizer", "--from", "llamagen", "--checkpoint", str(tmp_path / "vq.pt"), "--out", str(out)])
    assert code == 2 and f"--out {out} already exists; pass --overwrite" in capsys.readouterr().err  # kept
    (out / "notes.txt").write_text("mine")
    assert "holds files besides a tokenizer (notes.txt)" in main_error(capsys, "import-tokenizer", "--from", "llamagen",
                                                                        "--checkpoint", str(tmp_path / "vq.pt"),
                                                                        "--out", str(out), "--overwrite")
    assert (out / "notes.txt").read_text() == "mine"
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes((tmp_path / "vq.pt").read_bytes()[:5000])
    assert "cut.pt" in error("--from", "llamagen", "--checkpoint", str(truncated))
    assert "state_dict" in error("--from", "taming", "--checkpoint", str(tmp_path / "vq.pt"), "--config",
                                 str(_write_yaml(tmp_path)))  # a file of another family
    assert "not a diffusers VQModel folder" in error("--from", "diffusers", "--checkpoint", str(tmp_path))
    wrong = tmp_path / "wrong.pt"
    state = ref.state_dict()
    state["encoder.conv_in.weight"] = state["encoder.conv_in.weight"][:, :, :2]  # does not fit the architecture
    torch.save({"model": state}, wrong)
    assert "encoder.conv_in.weight" in error("--from", "llamagen", "--checkpoint", str(wrong))
    assert "needs its model.yaml" in error("--from", "taming", "--checkpoint", str(tmp_path / "vq.pt"))


def main_error(capsys, *args: str) -> str:
    code = main(list(args))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def _write_yaml(tmp_path):
    path = tmp_path / "model.yaml"
    dd = dict(double_z=False, z_channels=16, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2],
              num_res_blocks=1, attn_resolutions=[16], dropout=0.0)
    path.write_text(yaml.safe_dump({"model": {"params": {"embed_dim": 4, "n_embed": 64, "ddconfig": dd}}}))
    return path


@pytest.mark.slow
def test_a_256px_llamagen_vq16_runs_the_whole_chain(tmp_path, capsys):
    """A full-size LlamaGen VQ-16 layout (random weights, ~72 M parameters, built by LlamaGen's own
    code) imported, then tokenize → train-prior → sample → complete at 256 px on the CPU: 16×16 grids
    of K = 16,384 codes, the prior's vocabulary and length following from the token data."""
    import numpy as np
    from PIL import Image

    ref = _llamagen_module().VQ_16()  # 256 px → 16×16, K = 16,384, 8-dimensional l2 codebook
    params = sum(p.numel() for p in ref.parameters())
    assert 65e6 < params < 80e6
    torch.save({"model": ref.state_dict()}, tmp_path / "vq_ds16_c2i.pt")
    del ref
    tok = tmp_path / "tok"
    assert main(["import-tokenizer", "--from", "llamagen", "--checkpoint", str(tmp_path / "vq_ds16_c2i.pt"),
                 "--out", str(tok)]) == 0
    vq = VQGAN.from_pretrained(tok)
    assert vq.config.image_size == 256 and vq.config.grid_size == (16, 16) and vq.config.codebook_size == 16384

    rng = np.random.default_rng(0)
    for cls in ("warm", "cool"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(3):
            base = np.array([220, 120, 40] if cls == "warm" else [40, 120, 220], dtype=np.float64)
            pixels = np.clip(base + rng.normal(0, 30, (300, 280, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / cls / f"{i}.png")
    images, tokens, prior = tmp_path / "images", tmp_path / "tokens", tmp_path / "prior"
    assert main(["tokenize", "--tokenizer", str(tok), "--data", str(images), "--out", str(tokens), "--crops", "0"]) == 0
    assert main(["train-prior", "--tokens", str(tokens), "--out", str(prior), "--preset", "tiny",
                 "--set", "train.max_steps=2", "--set", "train.eval_every=2", "--set", "train.checkpoint_every=0"]) == 0
    from vqgpt.prior import load_prior

    model, spec = load_prior(prior)
    assert spec.grid == (16, 16) and spec.codebook_size == 16384 and spec.num_codes == 256
    assert spec.vocab_size == 16384 + 2 + 1 and model.config.vocab_size == spec.vocab_size
    run = ["--tokenizer", str(tok), "--prior", str(prior)]
    assert main(["sample", *run, "--class", "warm", "--num", "1", "--out", str(tmp_path / "s")]) == 0
    assert Image.open(tmp_path / "s" / "sample_0000_class-warm.png").size == (256, 256)
    assert main(["complete", *run, "--image", str(images / "cool" / "0.png"), "--keep-rows", "8", "--num", "1",
                 "--out", str(tmp_path / "c")]) == 0
    assert Image.open(tmp_path / "c" / "completion_0000.png").size == (256, 256)
