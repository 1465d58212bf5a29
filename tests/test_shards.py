"""WebDataset tar shards as a data source, and tokenize reading them as a stream."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from webdataset.tariterators import tarfile_samples
from PIL import Image

from vqgpt.pipeline.cli import main
from vqgpt.pipeline.data import load_images
from vqgpt.pipeline.tokens import tokenize_dataset
from vqgpt.tokenizer import PRESETS, VQGAN, VQGANConfig


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    torch.manual_seed(0)
    VQGAN(VQGANConfig(**PRESETS["tiny"]["model"])).eval().save_pretrained(path)
    return path


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def folder_and_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The same 16 images (two classes, PNG and JPEG, varied sizes) as a folder ``a/…``, ``b/…`` and as
    three tar shards in sorted key order (``a/0.png`` + ``a/0.cls`` = "a"), the last holding one
    metadata-only sample."""
    root = tmp_path_factory.mktemp("same")
    rng = np.random.default_rng(0)
    files = []
    for cls in ("a", "b"):
        (root / "folder" / cls).mkdir(parents=True)
        for i in range(8):
            h, w = int(rng.integers(16, 30)), int(rng.integers(16, 30))
            ext = "jpg" if i % 3 == 0 else "png"
            data = _png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "JPEG" if ext == "jpg" else "PNG")
            (root / "folder" / cls / f"{i}.{ext}").write_bytes(data)
            files.append((f"{cls}/{i}", ext, data, cls))
    (root / "shards").mkdir()
    for k, chunk in enumerate((files[:6], files[6:12], files[12:])):
        with wds.TarWriter(str(root / "shards" / f"part-{k:03d}.tar")) as sink:
            for key, ext, data, cls in chunk:
                sink.write({"__key__": key, ext: data, "cls": cls})
            if k == 2:
                sink.write({"__key__": "z/notes", "json": b"{}"})  # no image: left out, named
    return root / "folder", str(root / "shards" / "part-{000..002}.tar")


def test_gif_and_tiff_members_are_images(tmp_path):
    """A sample's image may be a GIF or TIFF member too (first frame), read like a folder's file."""
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    with wds.TarWriter(str(tmp_path / "mixed.tar")) as sink:
        sink.write({"__key__": "0", "tif": _png(grey, "TIFF")})
        sink.write({"__key__": "1", "gif": _png(grey, "GIF")})
        sink.write({"__key__": "2", "TIFF": _png(grey, "TIFF")})
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "0.tif").write_bytes(_png(grey, "TIFF"))
    src = load_images(str(tmp_path / "mixed.tar"), 16, 1, split="all")
    folder = load_images(str(tmp_path / "folder"), 16, 1, split="all")
    assert len(src) == 3 and src.skipped == []
    for i in range(3):  # grey GIF palettes hold every grey level of a 16×16 image of 256 values or fewer
        assert torch.allclose(src[i]["image"], folder[0]["image"], atol=1 / 127.5 + 1e-6)


def _rows(path: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    import datasets

    dd = datasets.load_from_disk(str(path))
    return {s: (np.asarray(dd[s].with_format("numpy")[:]["codes"]), list(dd[s]["label"])) for s in dd}


def test_tokenize_from_shards_equals_tokenize_from_the_folder(tok, folder_and_shards, tmp_path):
    folder, pattern = folder_and_shards
    settings = dict(flip=True, crops=2, batch_size=4, val_fraction=0.25, progress=False)
    tokenize_dataset(tok, str(folder), tmp_path / "folder", **settings)
    summary = tokenize_dataset(tok, pattern, tmp_path / "shards", num_workers=2, **settings)  # workers split tars
    a, b = _rows(tmp_path / "folder"), _rows(tmp_path / "shards")
    for split in ("train", "validation"):
        np.testing.assert_array_equal(a[split][0], b[split][0])  # same codes, row by row
        assert a[split][1] == b[split][1]  # same labels
    assert len(b["validation"][1]) == 4 and len(b["train"][1]) == 12 * 4  # image, flip, two crops
    meta = json.loads((tmp_path / "shards" / "vqgpt_tokens.json").read_text())
    assert meta["class_names"] == ["a", "b"] and meta["split"] == {"seed": 0, "val_fraction": 0.25}
    assert summary["left_out"] == 1 and "z/notes" in summary["left_out_files"][0]
    src = load_images(pattern, 16, 1, split="train", val_fraction=0.25)
    assert src.source_of(0) == "part-000.tar:a/0.jpg" and src.skip_report().count("left out 1") == 1


def test_shards_resume_after_a_kill_and_refuse_changed_shards(tok, folder_and_shards, tmp_path, interrupted_tokenize):
    _, pattern = folder_and_shards
    whole = tmp_path / "whole"
    tokenize_dataset(tok, pattern, whole, crops=0, progress=False)
    out = tmp_path / "resumed"
    written = interrupted_tokenize(tok, pattern, out, crops=0, progress=False)
    assert written[0][1] == 0 and (out / ".partial" / "manifest.json").is_file()
    summary = tokenize_dataset(tok, pattern, out, crops=0, progress=False)
    assert summary["resumed_shards"] == 2
    for split, (codes, labels) in _rows(whole).items():
        np.testing.assert_array_equal(codes, _rows(out)[split][0])
        assert labels == _rows(out)[split][1]

    # the same names with other bytes: the manifest's digest (members and sizes) tells
    copy = tmp_path / "copy"
    copy.mkdir()
    for k in range(3):
        (copy / f"part-{k:03d}.tar").write_bytes(Path(pattern.replace("{000..002}", f"{k:03d}")).read_bytes())
    with pytest.raises(KeyboardInterrupt):
        tokenize_dataset(tok, str(copy / "part-{000..002}.tar"), tmp_path / "changed", crops=0, progress=False,
                         on_shard=lambda s, i: (_ for _ in ()).throw(KeyboardInterrupt))
    samples = list(tarfile_samples([{"url": str(copy / "part-001.tar")}]))
    with wds.TarWriter(str(copy / "part-001.tar")) as sink:  # its first image replaced by another
        for k, sample in enumerate(samples):
            image = "jpg" if "jpg" in sample else "png"
            data = _png(np.zeros((20, 20, 3), np.uint8), "JPEG" if image == "jpg" else "PNG") if k == 0 else sample[image]
            sink.write({"__key__": sample["__key__"], image: data, "cls": sample["cls"]})
    with pytest.raises(ValueError, match="different settings.*digest"):
        tokenize_dataset(tok, str(copy / "part-{000..002}.tar"), tmp_path / "changed", crops=0, progress=False)


def test_a_corrupt_member_is_skipped_and_counted(tok, tmp_path):
    good = _png(np.full((18, 18, 3), 90, np.uint8))
    with wds.TarWriter(str(tmp_path / "s.tar")) as sink:
        for i in range(5):
            sink.write({"__key__": f"{i:02d}", "png": good, "cls": str(i % 2)})
        sink.write({"__key__": "05", "png": b"\x89PNG\r\n\x1a\n broken", "cls": "1"})
    summary = tokenize_dataset(tok, str(tmp_path / "s.tar"), tmp_path / "out", crops=0, progress=False)
    assert summary["images"] == 5 and summary["skipped"] == 1
    assert summary["skipped_files"][0].startswith("s.tar:05.png (")
    checked = load_images(str(tmp_path / "s.tar"), 16, 1, split="all")  # the up-front check of other verbs
    assert len(checked) == 5 and checked.skipped[0][0] == "s.tar:05.png"
    assert checked.class_names == ["0", "1"] and [checked.label_of(i) for i in range(5)] == [0, 1, 0, 1, 0]
    assert "skipped 1 file(s) that could not be decoded: s.tar:05.png" in checked.skip_report()


def test_a_shard_changed_after_listing_is_counted_not_misread(tok, folder_and_shards, tmp_path, monkeypatch):
    from vqgpt.pipeline.tokens import encode

    _, pattern = folder_and_shards
    copy = tmp_path / "copy"
    copy.mkdir()
    for k in range(3):
        (copy / f"part-{k:03d}.tar").write_bytes(Path(pattern.replace("{000..002}", f"{k:03d}")).read_bytes())
    reader = encode.read_images

    def rewritten_first(path: Path, *args):  # part-001 rewritten between listing and reading
        if path.name == "part-001.tar":
            path.write_bytes(b"\0" * 512 + path.read_bytes())  # every offset moves by one block
        return reader(path, *args)

    monkeypatch.setattr(encode, "read_images", rewritten_first)
    summary = tokenize_dataset(tok, str(copy / "part-{000..002}.tar"), tmp_path / "out", crops=0, num_workers=0,
                               progress=False)
    assert summary["skipped"] == 6 and summary["images"] == 10  # part-001's six images: counted, none misread
    assert all(entry.startswith("part-001.tar:") and "part-001.tar changed after it was listed" in entry
               for entry in summary["skipped_files"])


def test_processes_read_their_own_tars(tok, folder_and_shards, tmp_path, monkeypatch):
    import accelerate

    from vqgpt.pipeline.tokens import encode

    _, pattern = folder_and_shards
    tokenize_dataset(tok, pattern, tmp_path / "single", crops=0, progress=False)
    read: dict[int, list[str]] = {0: [], 1: []}
    reader = encode.read_images

    class FakeState:  # process `rank` of two on the CPU, as accelerate.PartialState
        def __init__(self, rank: int) -> None:
            self.process_index, self.num_processes, self.device = rank, 2, torch.device("cpu")
            self.is_main_process = self.is_local_main_process = rank == 0

        def wait_for_everyone(self) -> None:
            pass

    def run(rank: int) -> None:
        monkeypatch.setattr(accelerate, "PartialState", lambda cpu=False: FakeState(rank))
        monkeypatch.setattr(encode, "read_images", lambda path, *a: read[rank].append(path.name) or reader(path, *a))
        tokenize_dataset(tok, pattern, tmp_path / "two", crops=0, num_workers=0, progress=False)

    with pytest.raises(RuntimeError, match="were not written"):  # without the barrier process 1's are missing
        run(0)
    run(1)
    run(0)  # assembles; its own tars are done
    assert read == {0: ["part-000.tar", "part-002.tar"], 1: ["part-001.tar"]}  # tar t → process t % 2, read once
    for split, (codes, labels) in _rows(tmp_path / "single").items():
        np.testing.assert_array_equal(codes, _rows(tmp_path / "two")[split][0])
        assert labels == _rows(tmp_path / "two")[split][1]


def test_bad_shards_are_one_error_line(capsys, tok, tmp_path):
    def tokenize(data: str) -> tuple[int, str]:
        code = main(["tokenize", "--tokenizer", str(tok), "--data", data, "--out", str(tmp_path / "t")])
        return code, capsys.readouterr().err

    def one_line(code: int, err: str, says: str) -> None:
        lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert says in lines[0], lines[0]

    code, err = tokenize(str(tmp_path / "train-{00000..00003}.tar"))
    one_line(code, err, f"no shard file matches {tmp_path}/train-{{00000..00003}}.tar")
    with wds.TarWriter(str(tmp_path / "text.tar")) as sink:
        sink.write({"__key__": "readme", "txt": b"hello"})
    code, err = tokenize(str(tmp_path / "text.tar"))
    one_line(code, err, "text.tar is not a WebDataset shard of images: no jpg/jpeg/png/webp/bmp/gif/tif/tiff member")
    (tmp_path / "plain.tar").write_bytes(b"this is no tar file" * 40)
    code, err = tokenize(str(tmp_path / "plain.tar"))
    one_line(code, err, "plain.tar is not a WebDataset shard: not an uncompressed tar file")
    good = _png(np.zeros((16, 16, 3), np.uint8))
    with wds.TarWriter(str(tmp_path / "half.tar")) as sink:
        sink.write({"__key__": "0", "png": good, "cls": "1"})
        sink.write({"__key__": "1", "png": good})
    code, err = tokenize(str(tmp_path / "half.tar"))
    one_line(code, err, "1 of the 2 samples of")
    assert not (tmp_path / "t").exists()
