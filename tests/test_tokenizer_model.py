"""VQGAN model: shapes, config validation, save/load round trip, fingerprint, load errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from vqgpt.tokenizer import PRESETS, VQGAN, VQGANConfig


def tiny_config(**overrides) -> VQGANConfig:
    return VQGANConfig(**{**PRESETS["tiny"]["model"], **overrides})


def tiny_model(seed: int = 0, **overrides) -> VQGAN:
    torch.manual_seed(seed)
    return VQGAN(tiny_config(**overrides)).eval()


def images(n=3, channels=1, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1


def test_encode_decode_shapes_and_range():
    model = tiny_model()
    assert model.config.grid_size == (8, 8) and model.config.downsample_factor == 2
    codes = model.encode(images())
    assert codes.shape == (3, 8, 8) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < model.config.codebook_size
    out = model.decode(codes)
    assert out.shape == (3, 1, 16, 16)
    assert out.min() >= -1 and out.max() <= 1
    with torch.no_grad():
        model.decoder.conv_out.bias.fill_(5.0)  # decoder output far outside [-1, 1]
    assert torch.equal(model.decode(codes), torch.ones_like(out))  # clamped


def test_forward_output_matches_encode_decode():
    model = tiny_model()
    x = images()
    with torch.no_grad():
        out = model(x)
    assert torch.equal(out.codes, model.encode(x))
    assert torch.allclose(out.reconstruction.clamp(-1, 1), model.decode(out.codes), atol=1e-5)
    assert out.quantizer_loss.ndim == 0 and 0 < out.usage <= 1 and out.perplexity >= 1
    beta = model.config.commitment_beta
    assert torch.allclose(out.quantizer_loss, out.codebook_loss + beta * out.commitment_loss)


def test_attention_and_rgb_variant():
    model = tiny_model(channels=3, attn_at_lowest=True, channel_mult=(1, 2, 2))
    codes = model.encode(images(channels=3))
    assert codes.shape == (3, 4, 4)
    assert model.decode(codes).shape == (3, 3, 16, 16)


def test_wrong_image_shape_is_a_value_error():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        tiny_model().encode(images(channels=3))


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"image_size": 30, "channel_mult": (1, 2, 2)}, "image_size 30 is not divisible by the downsampling factor 4"),
        ({"codebook_size": 1}, "codebook_size must be >= 2"),
        ({"channels": 2}, "channels must be 1"),
        ({"base_channels": 6, "norm_groups": 4}, "not divisible by norm_groups"),
        ({"codebook_dim": 0}, "codebook_dim"),
        ({"channel_mult": ()}, "channel_mult"),
        ({"kmeans_iters": -1}, "kmeans_iters"),
    ],
)
def test_config_validation(overrides, needle):
    with pytest.raises(ValueError, match=needle):
        tiny_config(**overrides)


def test_save_load_round_trip_is_bit_identical(tmp_path):
    model = tiny_model()
    x = images()
    model.save_pretrained(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["config.json", "model.safetensors"]
    loaded = VQGAN.from_pretrained(tmp_path / "tok")
    assert loaded.config == model.config
    assert loaded.fingerprint() == model.fingerprint()
    codes = model.encode(x)
    assert torch.equal(loaded.encode(x), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))
    with torch.no_grad():
        assert torch.equal(loaded(x).reconstruction, model(x).reconstruction)


def test_fingerprint_tracks_config_and_weights():
    a, b = tiny_model(seed=0), tiny_model(seed=0)
    fp = a.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert b.fingerprint() == fp
    with torch.no_grad():
        b.decoder.conv_out.bias[0] += 1e-6
    assert b.fingerprint() != fp
    assert tiny_model(seed=0, commitment_beta=0.5).fingerprint() != fp  # same weights, other config


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VQGAN.from_pretrained(tmp_path / "nope")
    folder = tmp_path / "tok"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        VQGAN.from_pretrained(folder)
    tiny_model().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())

    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        VQGAN.from_pretrained(folder)

    (folder / "config.json").write_text(json.dumps({**config, "colour": 3}))
    with pytest.raises(ValueError, match="unknown tokenizer config keys: colour"):
        VQGAN.from_pretrained(folder)

    # weights of another shape: 64 codes in the config, 32 in the file
    (folder / "config.json").write_text(json.dumps({**config, "codebook_size": 64}))
    with pytest.raises(ValueError, match=r"quantizer\.codebook \(32, 4\) vs \(64, 4\)"):
        VQGAN.from_pretrained(folder)

    (folder / "config.json").write_text(json.dumps(config))
    state = load_file(str(folder / "model.safetensors"))
    del state["decoder.conv_out.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing 1 weights \(decoder\.conv_out\.weight\)"):
        VQGAN.from_pretrained(folder)

    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="could not be read as safetensors"):
        VQGAN.from_pretrained(folder)

    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        VQGAN.from_pretrained(folder)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    import vqgpt.tokenizer.model as tm

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tm, "save_file", boom)
    with pytest.raises(OSError):
        tiny_model(seed=1).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before  # old file untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_tokenizers_from_before_the_import_settings_keep_loading_and_their_fingerprints(tmp_path):
    """Settings added for imported tokenizers (attention resolutions, GroupNorm eps, Euclidean
    codebooks, the source record) change nothing for a tokenizer trained before them: its config.json
    (without those keys) loads, and its fingerprint is the one its token datasets and priors recorded."""
    import hashlib
    import json

    from vqgpt.tokenizer import PRESETS

    model = VQGAN(VQGANConfig(**PRESETS["tiny"]["model"]))
    model.save_pretrained(tmp_path / "tok")
    old = json.loads((tmp_path / "tok" / "config.json").read_text())
    for key in ("attn_resolutions", "norm_eps", "codebook_norm", "source_family", "source_file", "source_sha256"):
        old.pop(key)
    (tmp_path / "tok" / "config.json").write_text(json.dumps(old))  # as vqgpt 0.1 wrote it
    loaded = VQGAN.from_pretrained(tmp_path / "tok")
    digest = hashlib.sha256(json.dumps(old, sort_keys=True, separators=(",", ":")).encode())  # 0.1's recipe
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    assert loaded.fingerprint() == model.fingerprint() == digest.hexdigest()[:16]
    torch.manual_seed(0)
    l2 = VQGAN(VQGANConfig(**PRESETS["tiny"]["model"]))
    torch.manual_seed(0)
    euclidean = VQGAN(VQGANConfig(**{**PRESETS["tiny"]["model"], "codebook_norm": "none"}))  # same weights
    assert euclidean.fingerprint() != l2.fingerprint()  # a setting that differs from its default counts
