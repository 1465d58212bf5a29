"""Tokenizing a data source into a token dataset (vqgpt.pipeline.tokens)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqgpt.pipeline.tokens import describe_tokens
from vqgpt.pipeline.settings import TokenizeConfig
from vqgpt.pipeline.data import load_images
from vqgpt.pipeline.tokens import tokenize_dataset
from vqgpt.prior.data import codes_dtype
from vqgpt.tokenizer import PRESETS, VQGAN, VQGANConfig

META_KEYS = {"format", "version", "tokenizer_fingerprint", "grid", "codebook_size", "class_names",
             "image_size", "channels", "augmentations", "data", "split"}


def _tokenizer(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    VQGAN(VQGANConfig(**PRESETS["tiny"]["model"])).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer", seed=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of small random-noise images (varied sizes, so resizing matters)."""
    root = tmp_path_factory.mktemp("imgs") / "data"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(7):
            h, w = int(rng.integers(16, 30)), int(rng.integers(16, 30))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def _load(path: Path):
    import datasets

    return datasets.load_from_disk(str(path))


def _rows(dd) -> dict[str, tuple[np.ndarray, list[int], list[str]]]:
    out = {}
    for split in ("train", "validation"):
        table = dd[split].with_format("numpy")[:]
        out[split] = (np.asarray(table["codes"]), list(table["label"]), list(table["source"]))
    return out


def _assert_same(a, b) -> None:
    ra, rb = _rows(a), _rows(b)
    for split in ra:
        np.testing.assert_array_equal(ra[split][0], rb[split][0])
        assert ra[split][1:] == rb[split][1:]


def test_round_trip_format_and_plain_load(tok: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    summary = tokenize_dataset(tok, str(images), out, batch_size=3, shard_size=4, crops=0, progress=False)
    dd = _load(out)  # plain datasets, nothing of ours needed
    assert set(dd) == {"train", "validation"}
    assert summary["train_rows"] == len(dd["train"]) and summary["validation_rows"] == len(dd["validation"])
    assert len(dd["train"]) + len(dd["validation"]) == 14 and summary["images"] == 14
    assert summary["skipped"] == 0 and 0 < summary["codes_used"] <= 32
    feats = dd["train"].features
    assert feats["codes"].shape == (8, 8) and feats["codes"].dtype == "uint8"
    assert feats["label"].dtype == "int32" and feats["source"].dtype == "string"
    meta = json.loads((out / "vqgpt_tokens.json").read_text())
    assert set(meta) == META_KEYS and meta["format"] == "vqgpt-tokens" and meta["version"] == 1
    assert meta["split"] == {"seed": 0, "val_fraction": 0.1}  # how "held-out" is recomputed
    assert json.loads(dd["validation"].info.description) == meta
    model = VQGAN.from_pretrained(tok)
    assert meta["tokenizer_fingerprint"] == model.fingerprint()
    assert meta["grid"] == [8, 8] and meta["codebook_size"] == 32 and meta["class_names"] == ["a", "b"]
    assert (meta["image_size"], meta["channels"], meta["data"]) == (16, 1, str(images))
    assert not (out / ".partial").exists()
    # each row's codes are encode(the same image); decoding them gives decode(encode(image))
    for split in ("train", "validation"):
        src = load_images(str(images), 16, 1, split=split)
        by_source = {src.source_of(i): i for i in range(len(src))}
        codes, labels, sources = _rows(dd)[split]
        assert sorted(sources) == sorted(by_source)
        batch = torch.stack([src[by_source[s]]["image"] for s in sources])
        expected = model.encode(batch)
        assert torch.equal(torch.as_tensor(codes, dtype=torch.long), expected)
        assert torch.equal(model.decode(torch.as_tensor(codes, dtype=torch.long)), model.decode(expected))
        assert labels == [src.label_of(by_source[s]) for s in sources]


def test_resume_after_interruption_gives_the_same_dataset(tok: Path, images: Path, tmp_path: Path,
                                                          interrupted_tokenize) -> None:
    settings = dict(batch_size=4, shard_size=3, flip=True, crops=2, progress=False)
    whole = tmp_path / "whole"
    tokenize_dataset(tok, str(images), whole, **settings)

    out = tmp_path / "resumed"
    interrupted_tokenize(tok, str(images), out, **settings)
    assert (out / ".partial" / "manifest.json").is_file()
    assert not (out / "vqgpt_tokens.json").exists()
    with pytest.raises(ValueError, match="unfinished"):
        describe_tokens(out)
    summary = tokenize_dataset(tok, str(images), out, **settings)
    assert summary["resumed_shards"] == 2
    _assert_same(_load(out), _load(whole))


def test_resume_with_another_tokenizer_or_settings_is_refused(tok: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens"

    def stop(split: str, index: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tokenize_dataset(tok, str(images), out, shard_size=4, on_shard=stop, progress=False)
    other = _tokenizer(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="different tokenizer.*overwrite"):
        tokenize_dataset(other, str(images), out, shard_size=4, progress=False)
    with pytest.raises(ValueError, match="different settings.*flip"):
        tokenize_dataset(tok, str(images), out, shard_size=4, flip=True, progress=False)
    summary = tokenize_dataset(other, str(images), out, shard_size=4, overwrite=True, progress=False)
    assert summary["resumed_shards"] == 0
    meta = json.loads((out / "vqgpt_tokens.json").read_text())
    assert meta["tokenizer_fingerprint"] == VQGAN.from_pretrained(other).fingerprint()


def test_corrupt_images_are_skipped_and_counted(tok: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        Image.new("L", (16, 16), 40 * i).save(data / f"{i}.png")
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (data / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    summary = tokenize_dataset(tok, str(data), tmp_path / "out", progress=False, val_fraction=0.3, crops=0)
    assert summary["images"] == 6 and summary["skipped"] == 2
    assert sorted(s.split(" ")[0] for s in summary["skipped_files"]) == ["broken.jpg", "broken.png"]
    dd = _load(tmp_path / "out")
    assert len(dd["train"]) + len(dd["validation"]) == 6
    assert set(dd["train"]["label"]) == {-1}


def test_existing_output_and_bad_inputs(tok: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    tokenize_dataset(tok, str(images), out, progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        tokenize_dataset(tok, str(images), out, progress=False)
    before = _load(out)

    def die(split: str, index: int) -> None:
        raise KeyboardInterrupt  # killed after the first shard of the new dataset

    with pytest.raises(KeyboardInterrupt):
        tokenize_dataset(tok, str(images), out, overwrite=True, shard_size=2, progress=False, on_shard=die)
    _assert_same(before, _load(out))  # the old dataset is intact until the new one is complete
    tokenize_dataset(tok, str(images), out, overwrite=True, progress=False)
    _assert_same(before, _load(out))
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a token dataset"):
        tokenize_dataset(tok, str(images), foreign, overwrite=True, progress=False)
    assert (foreign / "keep.txt").read_text() == "mine"
    not_tok = tmp_path / "not_a_tokenizer"
    not_tok.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        tokenize_dataset(not_tok, str(images), tmp_path / "x", progress=False)
    with pytest.raises(FileNotFoundError):
        tokenize_dataset(tmp_path / "missing", str(images), tmp_path / "x", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        tokenize_dataset(tok, str(empty), tmp_path / "y", progress=False)
    assert not (tmp_path / "y").exists()
    with pytest.raises(ValueError, match="unknown tokenize setting"):
        tokenize_dataset(tok, str(images), tmp_path / "z", bacth_size=3)
    with pytest.raises(ValueError, match="crops"):
        TokenizeConfig(crops=-1)


def test_augmentation_rows_and_sources(tok: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "aug"
    tokenize_dataset(tok, str(images), out, flip=True, crops=3, batch_size=5, progress=False)
    dd = _load(out)
    train = load_images(str(images), 16, 1, split="train")
    val = load_images(str(images), 16, 1, split="validation")
    assert len(dd["train"]) == 5 * len(train) and len(dd["validation"]) == len(val)
    sources = dd["train"]["source"]
    assert list(sources[:5]) == [train.source_of(0) + s for s in ("", "#flip", "#crop0", "#crop1", "#crop2")]
    assert not any("#" in s for s in dd["validation"]["source"])
    labels = list(dd["train"]["label"])
    assert labels[:5] == [train.label_of(0)] * 5
    model = VQGAN.from_pretrained(tok)
    codes = torch.as_tensor(np.asarray(dd["train"].with_format("numpy")[:2]["codes"]), dtype=torch.long)
    image = train[0]["image"]
    assert torch.equal(codes[1], model.encode(image.flip(-1)[None])[0])
    meta = json.loads((out / "vqgpt_tokens.json").read_text())
    assert meta["augmentations"] == {"flip": True, "crops": 3, "crop_resize": 1.0625, "splits": ["train"]}


def test_each_file_is_decoded_once_with_its_crops(tok: Path, images: Path, tmp_path: Path, monkeypatch) -> None:
    """An image and its crops come from one decode, and the rows are exactly what separate reads at
    each size give; a JPEG, whose DCT scaling depends on the size asked, is decoded at each size."""
    from vqgpt.pipeline.data import folder
    from vqgpt.pipeline.data import images as image_io

    decoded: list[tuple[str, int]] = []
    real = image_io.decode_image

    def counting(data, channels, min_size):
        decoded.append((str(data) if isinstance(data, (str, Path)) else f"<{len(data)} bytes>", min_size))
        return real(data, channels, min_size)

    for module in (folder, image_io):
        monkeypatch.setattr(module, "decode_image", counting)
    out = tmp_path / "once"
    summary = tokenize_dataset(tok, str(images), out, crops=2, batch_size=6, num_workers=0, progress=False)
    files = sorted(str(p) for p in images.rglob("*.png"))
    train = load_images(str(images), 16, 1, split="train")
    assert len(decoded) == len(files)  # every file once, its crops included
    assert sorted({size for _, size in decoded}) == [16, 17]  # validation (no crops) at 16, training at 17
    assert summary["train_rows"] == 3 * len(train)
    decoded.clear()
    rows = [train.pixels_at_sizes(0, (16, 17)), [train.pixels_at(0, 16), train.pixels_at(0, 17)]]
    assert len(decoded) == 3 and all(torch.equal(a, b) for a, b in zip(*rows))

    # a 66 × 66 JPEG is DCT-scaled by 4 for 16 px but by 2 for 17 px: decoded twice, each as alone
    jpeg = tmp_path / "jpeg" / "a"
    jpeg.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (66, 66, 3), dtype=np.uint8)).save(jpeg / f"{i}.jpg", quality=90)
    src = load_images(str(jpeg.parent), 16, 3, split="train", val_fraction=0.25)
    decoded.clear()
    both = src.pixels_at_sizes(0, (16, 17))
    assert [size for _, size in decoded] == [16, 17]
    assert torch.equal(both[0], src.pixels_at(0, 16)) and torch.equal(both[1], src.pixels_at(0, 17))

    monkeypatch.setattr(folder, "decode_image", real)
    model = VQGAN.from_pretrained(tok)
    dd = _load(out)
    codes = torch.as_tensor(np.asarray(dd["train"].with_format("numpy")[:1]["codes"]), dtype=torch.long)
    assert torch.equal(codes[0], model.encode(train.image_at(0, 16)[None])[0])


def test_plain_pngs_go_through_libspng_once_and_tokenize_as_through_pillow(tok: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    """Grey PNGs (the tokenizer's mode) are decoded by libspng, once each with their crops, those of one
    shape resized together; the token dataset is the one Pillow's reading of every file gives."""
    from vqgpt.pipeline.data import images as image_io
    from vqgpt.pipeline.data import png

    root = tmp_path / "grey" / "data"
    rng = np.random.default_rng(5)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(8):
            h, w = (24, 24) if i % 2 else (int(rng.integers(16, 40)), int(rng.integers(16, 40)))
            Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(root / cls / f"{i}.png")
    calls = {"libspng": 0, "pillow": 0}
    real_load, real_decode = png.pyspng.load, image_io.decode_image

    class Counting:
        @staticmethod
        def load(data):
            calls["libspng"] += 1
            return real_load(data)

    def decode(*args, **kwargs):
        calls["pillow"] += 1
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(png, "pyspng", Counting)
    monkeypatch.setattr(image_io, "decode_image", decode)
    fast = tokenize_dataset(tok, str(root), tmp_path / "fast", crops=2, batch_size=9, num_workers=0, progress=False)
    assert calls == {"libspng": 16, "pillow": 0}
    monkeypatch.setattr(image_io, "plain_png_pixels", lambda data, channels: None)  # Pillow reads every file
    slow = tokenize_dataset(tok, str(root), tmp_path / "slow", crops=2, batch_size=9, num_workers=0, progress=False)
    assert calls["pillow"] == 16 and fast["train_rows"] == slow["train_rows"] == 3 * (fast["images"] - fast["validation_rows"])
    a, b = _load(tmp_path / "fast"), _load(tmp_path / "slow")
    for split in ("train", "validation"):
        assert a[split]["source"] == b[split]["source"] and a[split]["codes"] == b[split]["codes"]


def test_crops_derived_from_the_data_size(tok: Path, images: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    """Without ``crops`` a small data set gets random crops up to about TARGET_TRAIN_ROWS rows
    (never flips); a data set that is already large enough gets none. Validation stays plain."""
    from vqgpt.pipeline import derived as auto

    train = load_images(str(images), 16, 1, split="train")
    monkeypatch.setattr(auto, "TARGET_TRAIN_ROWS", 4 * len(train))  # → 3 crops per training image
    out = tmp_path / "auto"
    with caplog.at_level("INFO", logger="vqgpt.pipeline.tokens.tokenize_dataset"):
        summary = tokenize_dataset(tok, str(images), out, progress=False)
    assert "derived from the data: 3 random crop(s)" in caplog.text
    meta = json.loads((out / "vqgpt_tokens.json").read_text())
    assert meta["augmentations"] == {"flip": False, "crops": 3, "crop_resize": 1.0625, "splits": ["train"]}
    assert summary["train_rows"] == 4 * len(train) and summary["validation_rows"] == summary["images"] - len(train)
    sources = _load(out)["train"]["source"]
    assert [s.split("#")[-1] for s in sources[:4]] == [train.source_of(0).split("#")[-1], "crop0", "crop1", "crop2"]

    monkeypatch.setattr(auto, "TARGET_TRAIN_ROWS", len(train))  # already enough rows: no copies
    tokenize_dataset(tok, str(images), tmp_path / "plain", progress=False)
    assert json.loads((tmp_path / "plain" / "vqgpt_tokens.json").read_text())["augmentations"]["crops"] == 0
    monkeypatch.undo()  # the real target: a 1,404-image set gets the most crops, a large one none
    assert auto.tokenize_defaults(1404)[0] == auto.MAX_CROPS and auto.tokenize_defaults(50_000)[0] == 0


def test_digits_and_codes_dtype(tok: Path, tmp_path: Path) -> None:
    assert [codes_dtype(k) for k in (2, 256, 257, 65536, 65537)] == ["uint8", "uint8", "uint16", "uint16", "int32"]
    summary = tokenize_dataset(tok, "digits", tmp_path / "d", batch_size=256, shard_size=1000, crops=0, progress=False)
    assert (summary["train_rows"], summary["validation_rows"]) == (1617, 180)
    dd = _load(tmp_path / "d")
    assert dd["validation"][0]["source"].startswith("index:")
    assert json.loads((tmp_path / "d" / "vqgpt_tokens.json").read_text())["class_names"] == [str(d) for d in range(10)]


def test_inspect_tokens(tok: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    tokenize_dataset(tok, str(images), out, crops=0, progress=False)
    report = describe_tokens(out)
    assert report["train_rows"] + report["validation_rows"] == 14
    assert report["grid"] == "8×8" and report["codebook_size"] == 32 and report["classes"] == 2
    assert 1 <= report["codes_used"] <= 32 and 1 <= report["perplexity"] <= 32
    png = tmp_path / "rows.png"
    report = describe_tokens(out, tokenizer=tok, png=png)
    assert report["png"] == str(png) and Image.open(png).size[0] > 8 * 16
    with pytest.raises(ValueError, match="needs the `tokenizer`"):
        describe_tokens(out, png=png)
    with pytest.raises(ValueError, match="made with tokenizer"):
        describe_tokens(out, tokenizer=_tokenizer(tmp_path / "other", seed=3))
    with pytest.raises(ValueError, match="not a token dataset"):
        describe_tokens(images)


class _FakeState:
    """Stands in for accelerate.PartialState: process ``rank`` of ``world`` on the CPU."""

    def __init__(self, rank: int, world: int) -> None:
        self.process_index, self.num_processes = rank, world
        self.is_main_process = self.is_local_main_process = rank == 0
        self.device = torch.device("cpu")

    def wait_for_everyone(self) -> None:
        pass


def test_processes_share_shards_and_assemble_the_same_dataset(
        tok: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import accelerate

    settings = dict(shard_size=2, flip=True, progress=False)
    single = tmp_path / "single"
    tokenize_dataset(tok, str(images), single, **settings)

    out = tmp_path / "multi"
    done: dict[int, list[tuple[str, int]]] = {0: [], 1: []}
    # process 0 encodes its shards; without the barrier the others' are missing at assembly
    monkeypatch.setattr(accelerate, "PartialState", lambda cpu=False: _FakeState(0, 2))
    with pytest.raises(RuntimeError, match="were not written"):
        tokenize_dataset(tok, str(images), out, on_shard=lambda s, i: done[0].append((s, i)), **settings)
    monkeypatch.setattr(accelerate, "PartialState", lambda cpu=False: _FakeState(1, 2))
    tokenize_dataset(tok, str(images), out, on_shard=lambda s, i: done[1].append((s, i)), **settings)
    assert not (out / "vqgpt_tokens.json").exists()  # only the main process assembles
    n_train = len(load_images(str(images), 16, 1, split="train"))
    train_shards = -(-n_train // 2)
    numbers = {r: [i if s == "train" else train_shards + i for s, i in done[r]] for r in done}
    assert numbers[0] and all(g % 2 == 0 for g in numbers[0])
    assert numbers[1] and all(g % 2 == 1 for g in numbers[1])
    assert sorted(numbers[0] + numbers[1]) == list(range(train_shards + 1))
    monkeypatch.setattr(accelerate, "PartialState", lambda cpu=False: _FakeState(0, 2))
    tokenize_dataset(tok, str(images), out, **settings)
    _assert_same(_load(out), _load(single))


def test_a_second_run_into_the_same_output_is_refused_while_the_first_runs(tmp_path):
    """Two tokenize runs into one --out would clash half-way (one's shards vanishing under the other):
    the second is refused at once with one line while the first holds the output."""
    import fcntl

    from vqgpt.tokenizer import PRESETS, VQGAN, VQGANConfig

    VQGAN(VQGANConfig(**PRESETS["tiny"]["model"])).save_pretrained(tmp_path / "tok")
    lock = tmp_path / ".tokens.lock"
    with open(lock, "a") as handle:  # what the first run holds while it writes tmp_path / "tokens"
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(FileExistsError, match="another tokenize run is writing .*tokens; wait for it"):
            tokenize_dataset(tmp_path / "tok", "digits", tmp_path / "tokens", progress=False)
    assert not (tmp_path / "tokens").exists()


def test_cpu_workers_encode_their_own_batches(tok: Path, images: Path, tmp_path: Path) -> None:
    """On the CPU two or more DataLoader workers each encode their batches (one thread each) and
    hand back codes, not pixels; the codes are the model's for the same images, and the dataset
    equals one encoded in this process."""
    import os

    from vqgpt.pipeline.data import load_splits, to_model
    from vqgpt.pipeline.tokens.encode import WorkerEncoder, indexed_batches
    from vqgpt.pipeline.tokens.shards import plan_shards

    model = VQGAN.from_pretrained(tok).eval()
    config = TokenizeConfig(batch_size=4, crops=0, shard_size=5)
    sources = load_splits(str(images), model.config.image_size, model.config.channels, ("train", "validation"),
                          check=False)
    shards = plan_shards({s: len(src) for s, src in sources.items()}, config.shard_size)
    pids: set[int] = set()

    class Spy(WorkerEncoder):
        def __call__(self, batch):
            batch = super().__call__(batch)
            batch["pid"] = os.getpid()
            return batch

    seen = 0
    for shard, _last, batch in indexed_batches(sources, config, shards, 4, 2, False, Spy(model)):
        assert batch["images"] is None and batch["codes"].dtype == np.int32  # a numpy array: pickled, no fd
        src = sources[shard.split]
        names = [src.source_of(i) for i in range(len(src))]
        pixels = torch.stack([src.pixels_at(names.index(s), src.image_size) for s in batch["sources"]])
        with torch.inference_mode():
            np.testing.assert_array_equal(batch["codes"], model.encode(to_model(pixels)).numpy())
        pids.add(batch["pid"])
        seen += batch["num_images"]
    assert seen == sum(len(s) for s in sources.values())
    assert os.getpid() not in pids and len(pids) == 2  # both workers encoded, this process did not

    in_workers = tokenize_dataset(tok, str(images), tmp_path / "workers", num_workers=2, shard_size=5, crops=1,
                                  progress=False)
    here = tokenize_dataset(tok, str(images), tmp_path / "here", num_workers=0, shard_size=5, crops=1,
                            progress=False)
    assert in_workers["train_rows"] == here["train_rows"] > 0
    _assert_same(_load(tmp_path / "workers"), _load(tmp_path / "here"))
