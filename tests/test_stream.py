"""Hub datasets read as a stream (``tokenize --streaming``), tested offline on a folder laid out like
a hub dataset repository (parquet data files, the layout ``datasets`` resolves for ``hf:`` names)."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqgpt.pipeline.data import open_hub_stream, wants_stream
from vqgpt.pipeline.tokens import tokenize_dataset
from vqgpt.tokenizer import PRESETS, VQGAN, VQGANConfig


def _png(rng: np.random.Generator) -> bytes:
    h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _repo(root: Path, files: int, per_file: int, test: int = 0, class_label: bool = True,
          broken_row: int | None = None) -> Path:
    """``root/data/train-0000k-of-…parquet`` (+ ``test-…``): images and a label column."""
    import datasets

    rng = np.random.default_rng(len(str(root)))
    label = datasets.ClassLabel(names=["cat", "dog", "fox"]) if class_label else datasets.Value("int64")
    feats = datasets.Features({"image": datasets.Image(), "label": label})
    (root / "data").mkdir(parents=True)
    n = 0
    for split, count, size in (("train", files, per_file), ("test", 1 if test else 0, test)):
        for k in range(count):
            images = [{"bytes": _png(rng), "path": None} for _ in range(size)]
            if broken_row is not None and split == "train" and k == 0:
                images[broken_row] = {"bytes": b"not an image", "path": None}
            labels = [(n + i) % 3 for i in range(size)]
            n += size
            datasets.Dataset.from_dict({"image": images, "label": labels}, features=feats).to_parquet(
                str(root / "data" / f"{split}-{k:05d}-of-{count:05d}.parquet"))
    return root


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local repository: nothing may reach for the network


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = {**PRESETS["tiny"]["model"], "channels": 3}
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    VQGAN(VQGANConfig(**cfg)).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _repo(tmp_path_factory.mktemp("hub") / "repo", files=3, per_file=7, test=5)


def _rows(path: Path) -> dict[str, tuple[np.ndarray, list[int], list[str]]]:
    import datasets

    dd = datasets.load_from_disk(str(path))
    return {s: (np.asarray(dd[s]["codes"]), list(dd[s]["label"]), list(dd[s]["source"])) for s in dd}


def test_streamed_equals_downloaded_and_workers_split_files(tok: Path, repo: Path, tmp_path: Path) -> None:
    spec = f"hf:{repo}"
    whole = tokenize_dataset(tok, spec, tmp_path / "whole", streaming=False, crops=0, progress=False)
    streamed = tokenize_dataset(tok, spec, tmp_path / "streamed", streaming=True, crops=0, num_workers=0,
                                progress=False)
    workers = tokenize_dataset(tok, spec, tmp_path / "workers", streaming=True, crops=0, num_workers=2,
                               progress=False)
    assert whole["images"] == streamed["images"] == workers["images"] == 26
    a, b, c = _rows(tmp_path / "whole"), _rows(tmp_path / "streamed"), _rows(tmp_path / "workers")
    for split in ("train", "validation"):  # the repository's own test split is the validation split
        np.testing.assert_array_equal(a[split][0], b[split][0])
        np.testing.assert_array_equal(b[split][0], c[split][0])
        assert a[split][1] == b[split][1] == c[split][1]
        assert b[split][2] == c[split][2]
    assert len(b["validation"][1]) == 5 and b["train"][2][:2] == ["train/0/0", "train/0/1"]
    meta = __import__("json").loads((tmp_path / "streamed" / "vqgpt_tokens.json").read_text())
    assert meta["class_names"] == ["cat", "dog", "fox"] and meta["split"]["val_fraction"] is None


def test_split_per_image_resume_and_skipped_rows(tok: Path, tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo", files=3, per_file=9, class_label=False, broken_row=4)
    spec = f"hf:{repo}"
    stream = open_hub_stream(spec, 16, 3, seed=5, val_fraction=0.3)
    held = {(f, k) for f in range(3) for k in range(9) if zlib.crc32(f"5:{f}:{k}".encode()) < 0.3 * 2**32}
    assert 0 < len(held) < 27
    assert {(f, k) for f in range(3) for k in range(9) if stream.split_of("train", f, k) == "validation"} == held

    full = tokenize_dataset(tok, spec, tmp_path / "full", streaming=True, data_seed=5, val_fraction=0.3, crops=1,
                            num_workers=0, progress=False)
    assert full["skipped"] == 1 and "train/0/4" in full["skipped_files"][0]
    assert full["images"] == 26 and full["validation_rows"] == len(held - {(0, 4)})
    assert full["train_rows"] == 2 * (26 - full["validation_rows"])  # the image and one crop

    class Stop(Exception):
        pass

    def stop_after_first(split: str, index: int) -> None:
        if index >= 1:
            raise Stop

    with pytest.raises(Stop):
        tokenize_dataset(tok, spec, tmp_path / "resumed", streaming=True, data_seed=5, val_fraction=0.3, crops=1,
                         num_workers=0, progress=False, on_shard=stop_after_first)
    resumed = tokenize_dataset(tok, spec, tmp_path / "resumed", streaming=True, data_seed=5, val_fraction=0.3,
                               crops=1, num_workers=0, progress=False)
    assert resumed["resumed_shards"] >= 2
    a, b = _rows(tmp_path / "full"), _rows(tmp_path / "resumed")
    for split in a:
        np.testing.assert_array_equal(a[split][0], b[split][0])
        assert a[split][1:] == b[split][1:]
    meta = __import__("json").loads((tmp_path / "full" / "vqgpt_tokens.json").read_text())
    assert meta["class_names"] == ["0", "1", "2"]  # a plain integer column: classes seen

    with pytest.raises(Stop):
        tokenize_dataset(tok, spec, tmp_path / "other", streaming=True, data_seed=5, val_fraction=0.3, crops=1,
                         num_workers=0, progress=False, on_shard=stop_after_first)
    with pytest.raises(ValueError, match="unfinished run with different settings"):  # another split: refused
        tokenize_dataset(tok, spec, tmp_path / "other", streaming=True, data_seed=6, val_fraction=0.3, crops=1,
                         num_workers=0, progress=False)


def test_a_data_file_that_breaks_off_is_one_error_and_resumable(tok: Path, tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo", files=2, per_file=6, test=3)
    second = repo / "data" / "train-00001-of-00002.parquet"
    data = second.read_bytes()
    second.write_bytes(data[: len(data) // 2])  # cut short, as a lost connection leaves it
    with pytest.raises(ValueError, match=r"data file 2 of split 'train' could not be read.*run the same command"):
        tokenize_dataset(tok, f"hf:{repo}", tmp_path / "out", streaming=True, crops=0, num_workers=0, progress=False)
    assert (tmp_path / "out" / ".partial" / "train-00000.json").is_file()  # the first file is kept
    second.write_bytes(data)
    done = tokenize_dataset(tok, f"hf:{repo}", tmp_path / "out", streaming=True, crops=0, num_workers=0,
                            progress=False)
    assert done["resumed_shards"] >= 1 and done["images"] == 15


def test_when_to_stream(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import vqgpt.pipeline.data.stream as stream

    with pytest.raises(ValueError, match="applies to hub datasets"):
        wants_stream(str(tmp_path), True)
    assert not wants_stream(str(tmp_path), None) and not wants_stream("digits", False)
    assert wants_stream("hf:o/n", True) and not wants_stream("hf:o/n", False)
    monkeypatch.setattr(stream, "hub_download_bytes", lambda name: 10**18)  # an exabyte: never fits
    assert wants_stream("hf:o/n", None)
    monkeypatch.setattr(stream, "hub_download_bytes", lambda name: 10**3)
    assert not wants_stream("hf:o/n", None)
    monkeypatch.setattr(stream, "hub_download_bytes", lambda name: None)  # the hub does not say: download
    assert not wants_stream("hf:o/n", None)


def test_cli_streaming_flag(tok: Path, repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vqgpt.pipeline.cli import main

    out = tmp_path / "tokens"
    assert main(["tokenize", "--tokenizer", str(tok), "--data", f"hf:{repo}", "--out", str(out), "--streaming",
                 "--crops", "0"]) == 0
    assert _rows(out)["train"][2][0] == "train/0/0"  # streamed names
    assert main(["tokenize", "--tokenizer", str(tok), "--data", str(tmp_path), "--out", str(tmp_path / "x"),
                 "--streaming"]) == 2
    assert "applies to hub datasets" in capsys.readouterr().err
