"""The prior as an image codec: exact round trips, sizes that match the model, refusals."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vqgpt.pipeline.cli import main
from vqgpt.pipeline.codec import compress_grids, decode_archive, unpack
from vqgpt.pipeline.data import load_images
from vqgpt.pipeline.generation import Pipeline

STREAM_OVERHEAD_BYTES = 4  # what sealing a range-coded stream may cost beyond the model, per image (stated in the README)


@pytest.fixture(scope="module")
def pipe(tiny_run):
    return Pipeline.from_pretrained(tiny_run)


@pytest.fixture(scope="module")
def folder_codes(pipe, image_folder):
    """Every image of the shapes folder, its class and its codes, as `compress` reads them."""
    cfg = pipe.tokenizer.config
    source = load_images(str(image_folder), cfg.image_size, cfg.channels, split="all")
    images = torch.stack([source[i]["image"] for i in range(len(source))])
    labels = [source.label_of(i) for i in range(len(source))]
    with torch.inference_mode():
        codes = pipe.tokenizer.encode(images)
    return images, labels, codes


def assert_user_error(capsys, argv, phrase):
    """Exit 2, one `error:` line that says ``phrase``, no traceback (progress bars may precede it)."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert phrase in lines[0], lines[0]
    return lines[0]


def test_cli_round_trip_is_bit_exact(tiny_run, image_folder, pipe, folder_codes, tmp_path, capsys):
    archive = tmp_path / "shapes.vqga"
    assert main(["compress", "--run", str(tiny_run), "--data", str(image_folder), "--out", str(archive)]) == 0
    said = capsys.readouterr().out
    assert "24 images" in said and "bits per code" in said
    _, labels, codes = folder_codes
    decoded = decode_archive(archive.read_bytes(), pipe.codec_models())
    assert not decoded.errors
    assert torch.equal(decoded.grids, codes)  # every image, every code
    assert decoded.labels == labels and decoded.names[0] == "circle/00.png"

    out = tmp_path / "restored"
    assert main(["decompress", str(archive), "--run", str(tiny_run), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["restored"] == 24 and manifest["failed"] == 0
    first = manifest["images"][0]
    assert first["name"] == "circle/00.png" and first["file"] == "circle/00.png" and first["class"] == "circle"
    assert sum(e["bytes"] for e in manifest["images"]) == archive.stat().st_size - manifest["header_bytes"]
    restored = np.asarray(Image.open(out / "square" / "11.png"))
    expected = pipe.decode(codes[-1:])
    assert restored.shape[:2] == tuple(expected.shape[-2:])
    again = pipe.tokenizer.encode(pipe._prepare([Image.open(out / "square" / "11.png")]))
    assert again.shape == codes[-1:].shape


def test_decoding_does_not_depend_on_threads_batch_or_subset(pipe, folder_codes):
    """Encoded with 2 threads in batches of 16; decoded with 1 thread, a subset, and images alone."""
    images, labels, codes = folder_codes
    models = pipe.codec_models()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        data, _ = compress_grids(models, codes, labels)
        torch.set_num_threads(1)
        everything = decode_archive(data, models)
        subset = decode_archive(data, models, indices=[17, 3, 22])
        alone = decode_archive(data, models, indices=[23])
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads  # the coder restores the caller's setting
    assert not everything.errors and not subset.errors and not alone.errors
    assert torch.equal(everything.grids, codes)
    assert torch.equal(subset.grids, codes[[17, 3, 22]])
    assert torch.equal(alone.grids, codes[[23]])


def test_coded_size_matches_the_models_bits(pipe, folder_codes):
    _, labels, codes = folder_codes
    data, stats = compress_grids(pipe.codec_models(), codes, labels)
    archive = unpack(data)
    streams = sum(len(r.stream) for r in archive.images)
    assert streams == stats.stream_bytes and len(data) == stats.archive_bytes
    n = len(archive.images)
    assert streams * 8 <= stats.model_bits * 1.01 + 8 * STREAM_OVERHEAD_BYTES * n
    assert streams * 8 >= stats.model_bits * 0.99  # no coder beats the model it is given
    # per image: the class byte, one length byte and the CRC beyond the stream; names and the rest once
    per_image = (stats.header_bytes - (len(data) - streams - n * 6)) / n
    assert per_image == pytest.approx(6, abs=0.01)
    summary = stats.summary()
    raw = n * codes[0].numel() * math.log2(pipe.spec.codebook_size)
    assert summary["saving_vs_raw_indices"] == pytest.approx(1 - streams * 8 / raw)


def test_python_api_round_trip_with_class_names(pipe, folder_codes):
    images, labels, codes = folder_codes
    names = ["circle" if label == 0 else "square" for label in labels[:5]]
    data = pipe.compress(images[:5], class_labels=names)
    restored = pipe.decompress(data, output_type="codes")
    assert torch.equal(restored, codes[:5])
    pil = pipe.decompress(data, indices=[4])
    assert len(pil) == 1 and pil[0].size == (pipe.tokenizer.config.image_size,) * 2
    unconditional = pipe.compress(images[:5])  # the "no class" token
    assert torch.equal(pipe.decompress(unconditional, output_type="codes"), codes[:5])
    assert unpack(unconditional).images[0].label == -1 and unpack(data).images[0].label == 0


def test_damage_costs_only_the_damaged_image(pipe, folder_codes, tiny_run, tmp_path, capsys):
    _, labels, codes = folder_codes
    data, _ = compress_grids(pipe.codec_models(), codes, labels, [f"img{i}.png" for i in range(len(codes))])
    archive = unpack(data)
    start = archive.header_bytes + sum(len(r.stream) for r in archive.images[:7])  # image 7's stream
    flipped = bytearray(data)
    flipped[start] ^= 0x5A
    decoded = decode_archive(bytes(flipped), pipe.codec_models())
    assert list(decoded.errors) == [7] and "CRC32" in decoded.errors[7]
    good = [k for k in range(len(codes)) if k != 7]
    assert torch.equal(decoded.grids[good], codes[good])

    cut = data[: archive.header_bytes + sum(len(r.stream) for r in archive.images[:20]) + 1]
    truncated = decode_archive(cut, pipe.codec_models())
    assert min(truncated.errors) == 20 and "truncated" in truncated.errors[20]
    assert torch.equal(truncated.grids[:20], codes[:20])
    with pytest.raises(ValueError, match=r"image 20 \(img20.png\) is truncated"):
        pipe.decompress(cut)

    path = tmp_path / "cut.vqga"
    path.write_bytes(cut)
    out = tmp_path / "out"
    assert_user_error(capsys, ["decompress", str(path), "--run", str(tiny_run), "--out", str(out)],
                      "image 20 (img20.png) is truncated")
    assert len(list(out.glob("*.png"))) == 20  # the others are written
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["failed"] == 4 and manifest["images"][20]["file"] is None

    header = bytearray(data)
    header[10] ^= 0xFF
    with pytest.raises(ValueError, match="header fails its CRC32"):
        decode_archive(bytes(header), pipe.codec_models())


def test_bad_input_is_one_line(tiny_run, image_folder, tmp_path, capsys):
    run = str(tiny_run)
    not_archive = tmp_path / "x.vqga"
    not_archive.write_bytes(b"PK\x03\x04 a zip, say")
    assert_user_error(capsys, ["decompress", str(not_archive), "--run", run, "--out", str(tmp_path / "o")],
                      "is not a vqgpt archive")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(capsys, ["compress", "--run", run, "--data", str(empty), "--out", str(tmp_path / "e.vqga")],
                      "no images")
    other = tmp_path / "animals"
    for cls in ("cat", "dog"):
        (other / cls).mkdir(parents=True)
        Image.new("RGB", (16, 16), (200, 10, 10)).save(other / cls / "a.png")
    assert_user_error(capsys, ["compress", "--run", run, "--data", str(other), "--out", str(tmp_path / "c.vqga")],
                      "class 'cat'")
    archive = tmp_path / "keep.vqga"
    assert main(["compress", "--run", run, "--data", str(other), "--out", str(archive), "--unconditional"]) == 0
    kept = archive.read_bytes()
    assert_user_error(capsys, ["compress", "--run", run, "--data", str(other), "--out", str(archive),
                               "--unconditional"], "--overwrite")
    assert archive.read_bytes() == kept


def test_wrong_models_are_refused(tiny_run, pipe, folder_codes, tmp_path, capsys):
    _, labels, codes = folder_codes
    data, _ = compress_grids(pipe.codec_models(), codes[:3], labels[:3])
    path = tmp_path / "a.vqga"
    path.write_bytes(data)
    other = tmp_path / "run"
    shutil.copytree(tiny_run, other)
    from vqgpt import prior as pr

    model, spec = pr.load_prior(other / "prior")
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # one changed weight: another prior
    pr.save_prior(model, spec, other / "prior")
    err = assert_user_error(capsys, ["decompress", str(path), "--run", str(other), "--out", str(tmp_path / "o")],
                            "was compressed with prior")
    assert pipe.codec_models().prior_fingerprint in err


def test_many_random_grids_round_trip(pipe):
    """Random grids (improbable under the prior, so long streams with every byte value) come back
    exactly: trimming each stream's tail never keeps a prefix the decoder reads otherwise."""
    generator = torch.Generator().manual_seed(0)
    grids = torch.randint(0, pipe.spec.codebook_size, (300, *pipe.spec.grid), generator=generator)
    labels = torch.randint(0, pipe.spec.num_classes, (300,), generator=generator).tolist()
    data, stats = compress_grids(pipe.codec_models(), grids, labels)
    decoded = decode_archive(data, pipe.codec_models())
    assert not decoded.errors and torch.equal(decoded.grids, grids)
    assert stats.stream_bytes * 8 <= stats.model_bits * 1.01 + 8 * STREAM_OVERHEAD_BYTES * 300


def test_other_numerics_warn_and_crc_still_guards(pipe, folder_codes, caplog):
    """An archive written on another device type or torch version: decoding says exactness is not
    promised there, and still checks every image (here the same numbers, so all pass)."""
    import dataclasses

    from vqgpt.pipeline.codec import pack

    _, labels, codes = folder_codes
    data, _ = compress_grids(pipe.codec_models(), codes[:4], labels[:4])
    elsewhere = pack(dataclasses.replace(unpack(data), numerics="cuda torch 9.9.9"))
    with caplog.at_level("WARNING", logger="vqgpt"):
        decoded = decode_archive(elsewhere, pipe.codec_models())
    assert "compressed on cuda torch 9.9.9" in caplog.text and "CRC32" in caplog.text
    assert not decoded.errors and torch.equal(decoded.grids, codes[:4])


def test_untrimmed_streams_when_distributions_are_too_large_to_keep(pipe, folder_codes, monkeypatch):
    """Beyond TRIM_MAX_BYTES (large codebooks × grids) streams keep the coder's last words: still exact,
    a little longer."""
    from vqgpt.prior import entropy_coding

    _, labels, codes = folder_codes
    trimmed, small = compress_grids(pipe.codec_models(), codes, labels)
    monkeypatch.setattr(entropy_coding, "TRIM_MAX_BYTES", 0)
    data, stats = compress_grids(pipe.codec_models(), codes, labels)
    decoded = decode_archive(data, pipe.codec_models())
    assert not decoded.errors and torch.equal(decoded.grids, codes)
    assert stats.stream_bytes > small.stream_bytes
    assert stats.stream_bytes * 8 <= stats.model_bits * 1.01 + 8 * 8 * len(codes)
