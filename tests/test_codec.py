"""The prior as an image codec: exact round trips, sizes that match the model, refusals."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from vqgpt.pipeline.cli import main
from vqgpt.pipeline.codec import compress_grids, compress_images, decode_archive, pack, unpack
from vqgpt.pipeline.codec.archive import Archive, ImageRecord, _varint
from vqgpt.pipeline.data import load_images, to_uint8
from vqgpt.pipeline.generation import Pipeline
from vqgpt.prior.entropy_coding import numerics, portable_probabilities

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


def test_pixels_do_not_depend_on_the_subset_and_exact_pixels_are_float64(pipe, folder_codes, tiny_run, tmp_path,
                                                                          monkeypatch):
    """An image's pixels come from a pass of the same shape whichever images are asked for with it; with
    ``exact_pixels`` the tokenizer decodes in float64 (its pixels then the same whatever the pass shape,
    and within one level of 255 of the float32 ones), in Python and from the command line."""
    from vqgpt.pipeline.codec import codec

    _, labels, codes = folder_codes
    data, _ = compress_grids(pipe.codec_models(), codes, labels)
    whole = to_uint8(pipe.decompress(data, output_type="pt"))
    for indices in ([23], [17, 3, 22]):
        assert torch.equal(to_uint8(pipe.decompress(data, indices=indices, output_type="pt")), whole[indices])
    exact = pipe.decompress(data, output_type="pt", exact_pixels=True)
    assert exact.dtype == torch.float64 and (to_uint8(exact).int() - whole.int()).abs().max() <= 1
    exact_u8 = to_uint8(exact)
    pil = pipe.decompress(data, exact_pixels=True)
    assert all(np.array_equal(np.asarray(p), e[0].numpy()) for p, e in zip(pil, exact_u8, strict=True))
    monkeypatch.setattr(codec, "PIXEL_BATCH_PIXELS", 5 * pipe.tokenizer.config.image_size ** 2)  # passes of 5 rows
    assert torch.equal(to_uint8(pipe.decompress(data, output_type="pt", exact_pixels=True)), exact_u8)
    archive, out = tmp_path / "shapes.vqga", tmp_path / "exact"
    archive.write_bytes(data)
    assert main(["decompress", str(archive), "--run", str(tiny_run), "--out", str(out), "--exact-pixels"]) == 0
    assert np.array_equal(np.asarray(Image.open(out / "07.png")), exact_u8[7, 0].numpy())
    assert json.loads((out / "manifest.json").read_text())["exact_pixels"] is True


def test_coded_size_matches_the_models_bits(pipe, folder_codes):
    _, labels, codes = folder_codes
    data, stats = compress_grids(pipe.codec_models(), codes, labels)
    archive = unpack(data)
    streams = sum(len(r.stream) for r in archive.images)
    assert streams == stats.stream_bytes and len(data) == stats.archive_bytes
    n = len(archive.images)
    assert streams * 8 <= stats.model_bits * 1.01 + 8 * STREAM_OVERHEAD_BYTES * n
    assert streams * 8 >= stats.model_bits * 0.99  # no coder beats the model it is given
    # the bits counted are the prior's own: its plain softmax (one full float32 pass) gives the same within
    # 0.1 % (portable coding rounds each logit to 1/64 nat: ±0.02 bits a code, averaging out)
    plain = _teacher_forced_bits(pipe, codes, labels)
    rows, cols = np.indices(codes.reshape(n, -1).shape)
    assert stats.model_bits == pytest.approx(plain[rows, cols, codes.reshape(n, -1).numpy()].sum(), rel=1e-3)
    # per image: its CRC32 and its share of the range-coded table (class uniform over C + 1, length by
    # bucket counts), beyond the stream; the rest once per archive
    empty = dataclasses.replace(archive, images=[])
    table = stats.header_bytes - len(pack(empty)) - 4 * n
    spread = max(len(r.stream) for r in archive.images) - min(len(r.stream) for r in archive.images) + 1
    bound = n * (math.log2(pipe.spec.num_classes + 1) + math.log2(spread)) / 8
    assert 0 < table <= bound + 4 + 2 * min(spread, 64) + 8  # coded symbols + sealing + bucket counts + numbers
    assert table < 2 * n  # version 1 spent a class byte and a length byte per image
    summary = stats.summary()
    raw = n * codes[0].numel() * math.log2(pipe.spec.codebook_size)
    assert summary["saving_vs_raw_indices"] == pytest.approx(1 - streams * 8 / raw)
    assert stats.versus_raw().startswith(f"{summary['saving_vs_raw_indices']:.1%} below raw")
    # images the prior finds less predictable than uniform codes are said to cost more than raw, not "−6 % below"
    worse = dataclasses.replace(stats, stream_bytes=math.ceil(raw / 8 * 1.25))
    assert worse.versus_raw().startswith("25.0% above raw") and "unlike the images it was trained on" in worse.versus_raw()


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


def _teacher_forced_bits(pipe, codes, labels, portable=False):
    """−log2 p of every code of every grid, from one full forward pass of the prior (not the coder's
    incremental path): float64[N, h·w, K]. Its plain float32 softmax, or (``portable``) what the coder
    codes with: float64 logits rounded to steps through the integer table."""
    spec = pipe.spec
    flat = codes.reshape(len(codes), -1)
    inputs = torch.cat([spec.condition_tokens(torch.as_tensor(labels), len(flat))[:, None], flat[:, :-1]], dim=1)
    model = copy.deepcopy(pipe.prior).to(torch.float64 if portable else torch.float32)
    with torch.inference_mode():
        logits = model(input_ids=inputs).logits[..., : spec.codebook_size].double()
    if not portable:
        return -(torch.log_softmax(logits, dim=-1) / math.log(2)).numpy()
    p = portable_probabilities(logits.reshape(-1, spec.codebook_size).numpy()).reshape(logits.shape)
    with np.errstate(divide="ignore"):
        return -np.log2(p / p.sum(-1, keepdims=True))


def test_rate_weight_trades_distance_for_bits(pipe, folder_codes, tiny_run, image_folder, tmp_path, capsys):
    """λ = 0 codes the tokenizer's own codes; λ > 0 codes, at each position, the code minimising squared
    distance + λ · bits under the prior given the codes chosen before it (checked against a teacher-forced
    pass), decodes bit-exact, and costs fewer bits the larger λ is."""
    images, labels, codes = folder_codes
    models = pipe.codec_models()
    with torch.inference_mode():
        distances = pipe.tokenizer.quantizer.distances(pipe.tokenizer.encode_vectors(images)).double().numpy()
    assert np.array_equal(distances.argmin(-1), codes.reshape(len(codes), -1).numpy())  # the tokenizer's own choice
    with torch.inference_mode():
        both = pipe.tokenizer.encode_with_vectors(images)  # one encoder pass, as the codec runs it
    assert torch.equal(both[0], codes) and torch.equal(both[1], pipe.tokenizer.encode_vectors(images))

    _, plain = compress_images(models, images, labels)
    assert torch.equal(plain.codes, codes.reshape(len(codes), -1)) and plain.changed_codes == 0
    bits = [plain.model_bits]
    for weight in (0.02, 0.2, 1000.0):
        data, stats = compress_images(models, images, labels, rate_weight=weight)
        decoded = decode_archive(data, models)
        assert not decoded.errors and torch.equal(decoded.grids.reshape(len(codes), -1), stats.codes)  # bit-exact
        chosen = stats.codes.numpy()
        assert stats.changed_codes == int((chosen != codes.reshape(len(codes), -1).numpy()).sum())
        rate = _teacher_forced_bits(pipe, stats.codes, labels, portable=True)
        cost = distances + weight * rate
        rows, cols = np.indices(chosen.shape)
        assert stats.model_bits == pytest.approx(rate[rows, cols, chosen].sum(), rel=1e-9)
        # every code chosen is the cheapest there (up to the last bits that differ between the two paths)
        assert (cost[rows, cols, chosen] <= cost.min(-1) + 1e-6 * max(weight, 1)).all()
        bits.append(stats.model_bits)
    assert bits[0] > bits[1] > bits[2] > bits[3]  # a larger weight buys fewer bits
    assert plain.changed_codes == 0 < stats.changed_codes
    with pytest.raises(ValueError, match="rate weight"):
        compress_images(models, images[:2], labels[:2], rate_weight=-0.1)

    archive = tmp_path / "rate.vqga"  # the verb: the same archive as the Python call, and it decompresses
    assert main(["compress", "--run", str(tiny_run), "--data", str(image_folder), "--out", str(archive),
                 "--rate-weight", "1000"]) == 0
    assert "of the codes are not the tokenizer's nearest" in capsys.readouterr().out
    assert unpack(archive.read_bytes()).images[5].crc == unpack(data).images[5].crc
    assert main(["decompress", str(archive), "--run", str(tiny_run), "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["restored"] == len(codes)


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


def test_compress_and_decompress_hold_one_chunk_at_a_time(tiny_run, image_folder, tmp_path, monkeypatch, capsys):
    """The verbs encode, range-code, decode and write a chunk of images at a time (memory is one chunk's,
    not the data set's) and write exactly the archive and the images of one pass over everything."""
    from vqgpt.pipeline.codec import codec as codec_module
    from vqgpt.prior.entropy_coding import GridCoder

    run, data = str(tiny_run), str(image_folder)
    whole = {w: tmp_path / f"whole{w}.vqga" for w in ("0", "1000")}
    for weight, path in whole.items():
        assert main(["compress", "--run", run, "--data", data, "--out", str(path), "--rate-weight", weight]) == 0
    assert main(["decompress", str(whole["0"]), "--run", run, "--out", str(tmp_path / "one")]) == 0

    seen = {"encode": [], "decode": []}
    for verb in seen:
        def spy(self, grids_or_streams, *args, _verb=verb, _real=getattr(GridCoder, verb), **kwargs):
            seen[_verb].append(len(grids_or_streams))
            return _real(self, grids_or_streams, *args, **kwargs)
        monkeypatch.setattr(GridCoder, verb, spy)
    monkeypatch.setattr(codec_module, "CHUNK_IMAGES", 5)
    for weight, path in whole.items():
        chunked = tmp_path / f"chunked{weight}.vqga"
        assert main(["compress", "--run", run, "--data", data, "--out", str(chunked), "--rate-weight", weight]) == 0
        assert chunked.read_bytes() == path.read_bytes()  # bit for bit, the rate-weighted choice too
    assert seen["encode"] == [5, 5, 5, 5, 4] * 2
    assert "24 images" in capsys.readouterr().out

    assert main(["decompress", str(whole["0"]), "--run", run, "--out", str(tmp_path / "chunks")]) == 0
    assert seen["decode"] == [5, 5, 5, 5, 4]
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    assert len(files) == 24
    assert files == sorted(p.relative_to(tmp_path / "chunks") for p in (tmp_path / "chunks").rglob("*.png"))
    for f in files:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "one" / f)), np.asarray(Image.open(tmp_path / "chunks" / f)))
    assert (tmp_path / "one" / "manifest.json").read_text() == (tmp_path / "chunks" / "manifest.json").read_text()


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
    assert_user_error(capsys, ["compress", "--run", run, "--data", str(image_folder), "--out", str(tmp_path / "r.vqga"),
                               "--rate-weight", "-1"], "rate weight")
    assert not (tmp_path / "r.vqga").exists()
    archive = tmp_path / "keep.vqga"
    assert main(["compress", "--run", run, "--data", str(other), "--out", str(archive), "--unconditional"]) == 0
    kept = archive.read_bytes()
    assert_user_error(capsys, ["compress", "--run", run, "--data", str(other), "--out", str(archive),
                               "--unconditional"], "--overwrite")
    assert archive.read_bytes() == kept


def test_output_names_and_what_was_left_out(tiny_run, pipe, tmp_path, capsys):
    """Decoded files sit at the source's relative path (photo crops and tar members in folders, a name
    another image took kept apart, never outside the folder); files compress could not read are
    counted in its summary, not lost silently."""
    from vqgpt.pipeline.codec import output_names

    names = ["index:5", "astronaut.png:0", "astronaut.png:1", "sub/shard-000.tar:7/a.jpg", "train[3]",
             "7/same.jpg", "7/same.png", "../up.png", ".hidden.png", "image_7.png"]
    assert output_names(names) == ["5.png", "astronaut/0.png", "astronaut/1.png", "sub/shard-000/7/a.png",
                                   "train/3.png", "7/same_5.png", "7/same.png", "image_7_1.png", "image_8.png",
                                   "image_7.png"]
    data = tmp_path / "mixed"
    for cls in ("circle", "square"):
        (data / cls).mkdir(parents=True)
        Image.new("L", (40, 24), 200).save(data / cls / "a.png")
        Image.new("RGB", (20, 20), (9, 90, 200)).save(data / cls / "a.jpg")
    (data / "circle" / "broken.png").write_bytes((data / "circle" / "a.png").read_bytes()[:60])
    (data / "square" / "notes.txt").write_text("not an image")
    archive, out = tmp_path / "mixed.vqga", tmp_path / "restored"
    assert main(["compress", "--run", str(tiny_run), "--data", str(data), "--out", str(archive)]) == 0
    said = capsys.readouterr().out
    assert "4 images" in said
    assert "not in the archive: 1 file that could not be decoded and 1 non-image entry" in said, said
    assert main(["decompress", str(archive), "--run", str(tiny_run), "--out", str(out)]) == 0
    written = sorted(str(f.relative_to(out)) for f in out.rglob("*.png"))
    assert written == ["circle/a.png", "circle/a_0.png", "square/a.png", "square/a_2.png"]
    manifest = {e["name"]: e["file"] for e in json.loads((out / "manifest.json").read_text())["images"]}
    assert manifest["circle/a.jpg"] == "circle/a_0.png" and manifest["circle/a.png"] == "circle/a.png"


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


def _machine_bound_archive(pipe, codes, labels, names=()) -> bytes:
    """A version-2 archive: streams coded from the prior's float32 logits, as vqgpt wrote them before."""
    from vqgpt.pipeline.codec.archive import codes_crc
    from vqgpt.prior.entropy_coding import GridCoder

    encoded = GridCoder(pipe.prior, pipe.spec, 16, portable=False).encode(codes, labels)
    records = [ImageRecord(label, codes_crc(c.reshape(-1).numpy()), stream)
               for label, c, stream in zip(labels, codes, encoded.streams, strict=True)]
    models = pipe.codec_models()
    return pack(Archive(models.tokenizer_fingerprint, models.prior_fingerprint, tuple(pipe.spec.grid),
                        pipe.spec.codebook_size, pipe.spec.num_classes, 16, numerics("cpu"), records, list(names),
                        version=2))


def test_archives_decode_alike_on_other_cpus(pipe, folder_codes, tiny_run, tmp_path, caplog):
    """Portable archives (version 3) decode bit-exactly where the CPU runs other kernels (here: torch,
    MKL and oneDNN held to a lower instruction set in a second process); float32-coded ones (version
    2, still read) need the writer's kind of machine: elsewhere they warn, and a CRC failure there is
    named as such, not as damage."""
    _, labels, codes = folder_codes
    portable, _ = compress_grids(pipe.codec_models(), codes, labels)
    bound = _machine_bound_archive(pipe, codes, labels)
    assert unpack(portable).version == 3 and unpack(bound).version == 2
    for data in (portable, bound):
        decoded = decode_archive(data, pipe.codec_models())
        assert not decoded.errors and torch.equal(decoded.grids, codes)
    (tmp_path / "portable.vqga").write_bytes(portable)
    (tmp_path / "bound.vqga").write_bytes(bound)
    here = numerics("cpu")  # the CPU's instruction set is part of it
    assert here.startswith("cpu torch ") and torch.backends.cpu.get_cpu_capability() in here
    lower = "avx2" if torch.backends.cpu.get_cpu_capability() == "AVX512" else "default"
    script = (
        "import json, sys, torch\n"
        "from vqgpt.pipeline.generation import Pipeline\n"
        "from vqgpt.pipeline.codec import decode_archive\n"
        "from vqgpt.pipeline.data import to_uint8\n"
        "pipe = Pipeline.from_pretrained(sys.argv[1])\n"
        "out = {}\n"
        "for name in ('portable', 'bound'):\n"
        "    d = decode_archive(open(f'{sys.argv[2]}/{name}.vqga', 'rb').read(), pipe.codec_models())\n"
        "    torch.save(d.grids, f'{sys.argv[2]}/{name}.pt')\n"
        "    out[name] = {'errors': list(d.errors.values())}\n"
        "data = open(f'{sys.argv[2]}/portable.vqga', 'rb').read()\n"
        "torch.save(to_uint8(pipe.decompress(data, output_type='pt', exact_pixels=True)), f'{sys.argv[2]}/pixels.pt')\n"
        "print(json.dumps(out))\n")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": lower, "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}
    result = subprocess.run([sys.executable, "-c", script, str(tiny_run), str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    there = json.loads(result.stdout.strip().splitlines()[-1])
    assert there["portable"]["errors"] == [] and torch.equal(torch.load(tmp_path / "portable.pt", weights_only=True), codes)
    exact = to_uint8(pipe.decompress(portable, output_type="pt", exact_pixels=True))  # float64 pixels: the same PNGs
    assert torch.equal(torch.load(tmp_path / "pixels.pt", weights_only=True), exact)
    assert "compressed on " + here in result.stderr  # the version-2 archive: decoding elsewhere warns …
    # … and fails CRCs there (22 of 24 measured): the other kernels do change float32 results — what makes
    # the portable archive's exact decode above mean something — and the failures are named as "not damage"
    failed = there["bound"]["errors"]
    assert failed and all("likely not damage" in e for e in failed), failed

    # version 3 is the same everywhere: no warning for another machine's stamp, and a CRC failure is damage
    archive = unpack(portable)
    wrong = dataclasses.replace(archive.images[1], crc=archive.images[1].crc ^ 1)
    elsewhere = dataclasses.replace(archive, numerics="cuda torch 9.9.9", images=[archive.images[0], wrong, *archive.images[2:]])
    with caplog.at_level("WARNING", logger="vqgpt"):
        decoded = decode_archive(pack(elsewhere), pipe.codec_models())
    assert "compressed on" not in caplog.text
    assert list(decoded.errors) == [1] and "is damaged: its decoded codes fail their CRC32 check" in decoded.errors[1]


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


def test_the_table_round_trips_every_shape_of_archive():
    """Classes and stream lengths come back exactly: no images, one, one class for all, the "no class"
    token beside classes, lengths all equal, wide (bucketed) and narrow spreads, 1,000 classes."""
    rng = random.Random(0)
    for trial in range(200):
        n = rng.choice([0, 1, 2, 7, 156, 600])
        classes = rng.choice([0, 1, 26, 1000])
        kind = rng.random()
        if classes == 0 or kind < 0.3:
            labels = [-1] * n
        elif kind < 0.5:
            labels = [rng.randrange(classes)] * n
        else:
            labels = [rng.randrange(-1, classes) for _ in range(n)]
        base, spread = rng.choice([0, 1, 15, 300]), rng.choice([0, 1, 5, 30, 3000])
        records = [ImageRecord(label, rng.getrandbits(32), rng.randbytes(max(0, base + rng.randint(-spread, spread))))
                   for label in labels]
        archive = Archive("0" * 16, "1" * 16, (8, 8), 64, classes, 16, "cpu torch 2.14.1", records, [])
        back = unpack(pack(archive))
        assert [(r.label, r.crc, r.stream) for r in back.images] == [(r.label, r.crc, r.stream) for r in records], trial


def test_version_1_archives_are_still_read(pipe, folder_codes):
    """An archive of the previous layout (a class byte, a varint length and the CRC per image) decodes."""
    _, labels, codes = folder_codes
    data = _machine_bound_archive(pipe, codes[:6], labels[:6], [f"a{i}.png" for i in range(6)])  # float32-coded
    archive = unpack(data)
    header = bytes.fromhex(archive.tokenizer) + bytes.fromhex(archive.prior)
    for value in (*archive.grid, archive.codebook_size, archive.num_classes, archive.batch_size, len(archive.numerics)):
        header += bytes([value])  # each below 128: one varint byte
    names = zlib.compress("\n".join(archive.names).encode(), 9)
    header += archive.numerics.encode() + bytes([6, len(names)]) + names
    for record in archive.images:
        header += bytes([record.label + 1, len(record.stream)]) + struct.pack("<I", record.crc)
    head = b"VQGA" + bytes([1]) + _varint(len(header)) + header
    v1 = head + struct.pack("<I", zlib.crc32(head)) + b"".join(r.stream for r in archive.images)
    decoded = decode_archive(v1, pipe.codec_models())
    assert not decoded.errors and torch.equal(decoded.grids, codes[:6]) and decoded.names == archive.names
    assert len(v1) > len(data)  # the coded table is smaller
    future = data[:4] + bytes([9]) + data[5:]
    with pytest.raises(ValueError, match="version 9 vqgpt archive; this vqgpt reads versions 1, 2, 3"):
        unpack(future)


def test_a_table_that_does_not_add_up_is_refused():
    """A header whose CRC holds but whose table is inconsistent (a crafted file): one-line error."""
    records = [ImageRecord(k % 3, k, bytes(5 + k % 4)) for k in range(12)]
    data = pack(Archive("0" * 16, "1" * 16, (8, 8), 64, 3, 16, "cpu torch 2.14.1", records, []))
    archive = unpack(data)
    head_end = archive.header_bytes - 4
    # without images the header ends (before its CRC) where a table starts: both header lengths fit one varint byte
    start = len(pack(dataclasses.replace(archive, images=[]))) - 4
    assert data[start] == 1  # the class mode: uniform classes
    for mode, phrase in ((7, "class mode 7"), (0, "does not match|cannot be decoded|unexpected bytes")):
        crafted = bytearray(data[:head_end])
        crafted[start] = mode
        crafted = bytes(crafted) + struct.pack("<I", zlib.crc32(bytes(crafted))) + data[head_end + 4:]
        with pytest.raises(ValueError, match=phrase):
            unpack(crafted)


def test_bench_replot_redraws_a_recorded_benchmark(tmp_path):
    """scripts/bench_codec.py --replot: the table (with the machine recorded in the JSON) and the plot of
    a committed rate-weight benchmark, into a folder it creates."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    recorded = json.loads((root / "docs/codec/rate_weight_digits.json").read_text())
    out = tmp_path / "new" / "replot"
    subprocess.run([sys.executable, str(root / "scripts/bench_codec.py"), "--replot",
                    str(root / "docs/codec/rate_weight_digits.json"), "--out", str(out)],
                   capture_output=True, text=True, timeout=300, check=True)
    text = (out / "codec_bench.md").read_text()
    assert text.startswith(f"Machine: {recorded['machine']}\n")
    rows = [line for line in text.splitlines() if "**vqgpt**" in line]
    assert len(rows) == 4 and "rate weight 0.04" in rows[-1]  # λ = 0 and one row per further weight
    assert [line.split("|")[7].strip() for line in text.splitlines() if "best of them" in line] == \
        ["**6.6×**", "**7.2×**", "**7.3×**", "**7.3×**"]
    with Image.open(out / "codec_bench.png") as plot:
        assert plot.size[0] > 500 and plot.size[1] > 300
