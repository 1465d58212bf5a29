"""Data sources: folders, save_to_disk folders, digits, photos, hub names."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqgpt.pipeline.data.bundled import PHOTOS_HELD_OUT
from vqgpt.pipeline.data import load_images, split_indices


def _img(path: Path, size: tuple[int, int] = (20, 12), mode: str = "RGB", color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


@pytest.fixture()
def class_folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for cls, color in (("cat", (250, 0, 0)), ("dog", (0, 250, 0))):
        for i in range(5):
            _img(root / cls / f"{i}.png", color=color)
        _img(root / cls / "x.JPG", color=color)
    _img(root / "dog" / "deeper" / "y.webp", color=(0, 250, 0))  # nested: still class "dog"
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_folder_with_classes(class_folder: Path) -> None:
    src = load_images(str(class_folder), 16, 3, split="all")
    assert src.class_names == ["cat", "dog"]
    assert len(src) == 13 and src.root == class_folder and src.skipped == []
    for item in src:
        assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
        assert -1 <= item["image"].min() and item["image"].max() <= 1
        cls = item["source"].split("/")[0]
        assert item["label"] == src.class_names.index(cls)
        # colour survives: red cats, green dogs
        channel = 0 if cls == "cat" else 1
        assert item["image"][channel].mean() > 0.9
    assert {s.rsplit(".", 1)[-1] for s in (src.source_of(i) for i in range(len(src)))} == {"png", "JPG", "webp"}


def test_folder_reads_gif_and_tiff(tmp_path: Path) -> None:
    """GIF (palette, transparent index composited on white) and TIFF (16-bit grey, CMYK) files are
    images of a folder too: their first frame, prepared as every other image."""
    gif = Image.new("P", (8, 8), 1)
    gif.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    gif.paste(0, (0, 0, 8, 4))  # top half: index 0, transparent
    gif.save(tmp_path / "half.GIF", transparency=0)
    Image.fromarray(np.full((8, 8), 65535 // 2, dtype=np.uint16)).save(tmp_path / "grey16.tif")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "red.tiff")  # red
    (tmp_path / "notes.txt").write_text("not an image")
    src = load_images(str(tmp_path), 8, 3, split="all")
    assert sorted(src.files) == ["grey16.tif", "half.GIF", "red.tiff"] and src.skipped == []
    assert "gif/tif/tiff" in dict(src.left_out)["notes.txt"]
    images = {src.source_of(i): (src[i]["image"] + 1) / 2 for i in range(len(src))}  # in [0, 1]
    assert torch.allclose(images["half.GIF"][:, :4], torch.ones(3, 4, 8), atol=0.02)  # transparent → white
    assert torch.allclose(images["half.GIF"][:, 4:], torch.tensor([200 / 255, 0, 0])[:, None, None].expand(3, 4, 8), atol=0.02)
    assert torch.allclose(images["grey16.tif"], torch.full((3, 8, 8), 0.5), atol=0.01)
    assert images["red.tiff"][0].min() > 0.9 and images["red.tiff"][1:].max() < 0.1


def test_folder_split_is_deterministic_and_disjoint(class_folder: Path) -> None:
    train = load_images(str(class_folder), 16, 3, split="train", seed=3, val_fraction=0.25)
    val = load_images(str(class_folder), 16, 3, split="validation", seed=3, val_fraction=0.25)
    again = load_images(str(class_folder), 16, 3, split="validation", seed=3, val_fraction=0.25)
    assert len(train) + len(val) == 13 and len(val) == round(13 * 0.25)
    assert set(train.files).isdisjoint(val.files)
    assert val.files == again.files
    other = load_images(str(class_folder), 16, 3, split="validation", seed=4, val_fraction=0.25)
    assert len(other) == len(val)


def test_folder_without_classes(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    _img(tmp_path / "sub" / "b.png")
    _img(tmp_path / "sub" / "c.bmp")
    src = load_images(str(tmp_path), 8, 3, split="all")
    assert src.class_names == [] and [src[i]["label"] for i in range(3)] == [-1, -1, -1]
    assert [src[i]["source"] for i in range(3)] == ["a.png", "sub/b.png", "sub/c.bmp"]
    # a single sub-folder holding everything is not a class either
    only = tmp_path / "only"
    _img(only / "imgs" / "a.png")
    _img(only / "imgs" / "b.png")
    assert load_images(str(only), 8, 3, split="all").class_names == []


def test_resize_shorter_side_and_center_crop(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 0))  # a white strip at the left edge, rest black
    img.paste((255, 255, 255), (0, 0, 6, 20))
    img.save(tmp_path / "wide.png")
    x = load_images(str(tmp_path), 10, 3, split="all")[0]["image"]  # resized to 20×10, crop cols 5..15
    assert x.shape == (3, 10, 10)
    assert x.max() < -0.9  # the white strip lies outside the center crop


def test_rgba_and_grey_conversion(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent → white
    rgba.paste((0, 0, 255, 255), (0, 0, 8, 4))  # top half opaque blue
    rgba.save(tmp_path / "a.png")
    Image.new("L", (8, 8), 0).save(tmp_path / "b.png")  # black grey image
    Image.new("I;16", (8, 8), 65535).save(tmp_path / "c.png")  # 16-bit white
    rgb = load_images(str(tmp_path), 8, 3, split="all")
    a, b, c = (rgb[i]["image"] for i in range(3))
    assert a.shape == b.shape == c.shape == (3, 8, 8)
    assert torch.allclose(a[:, 6], torch.ones(3, 8))  # transparent part composited on white
    assert torch.allclose(a[:, 0], torch.tensor([-1.0, -1.0, 1.0])[:, None].expand(3, 8))
    assert torch.all(b == -1) and torch.all(c == 1)
    grey = load_images(str(tmp_path), 8, 1, split="all")
    g = grey[0]["image"]
    assert g.shape == (1, 8, 8) and torch.allclose(g[0, 6], torch.ones(8))
    assert g[0, 0, 0] < -0.5  # blue is dark in grey


def test_corrupt_files_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(4):
        _img(tmp_path / f"good{i}.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good_jpg = tmp_path / "good.jpg"
    _img(good_jpg, size=(64, 64))
    data = good_jpg.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.webp").write_bytes(b"")
    with caplog.at_level("WARNING"):
        src = load_images(str(tmp_path), 8, 3, split="all")
    assert len(src) == 5
    assert sorted(p for p, _ in src.skipped) == ["bad.png", "empty.webp", "truncated.jpg"]
    assert all(reason for _, reason in src.skipped)
    assert "skipped 3" in src.skip_report() and "skipped 3" in caplog.text
    loader = torch.utils.data.DataLoader(src, batch_size=2, num_workers=0)
    assert sum(len(b["source"]) for b in loader) == 5


def test_check_many_keeps_order_and_queues_a_bounded_number_of_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder of a million images must not hold a million Futures: at most 64 per thread wait."""
    import concurrent.futures
    import threading

    from vqgpt.pipeline.data import images

    monkeypatch.setattr(images.os, "cpu_count", lambda: 2)
    live, most, lock = set(), [0], threading.Lock()
    submit = concurrent.futures.ThreadPoolExecutor.submit

    def counting_submit(pool, fn, *args):
        future = submit(pool, fn, *args)
        with lock:
            live.add(future)
            most[0] = max(most[0], len(live))
        future.result = _forget(future, future.result)  # taken: no longer held
        return future

    def _forget(future, result):
        def take(*a):
            with lock:
                live.discard(future)
            return result(*a)
        return take

    monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "submit", counting_submit)
    items = list(range(1000))
    assert images.check_many(items, lambda x: f"odd {x}" if x % 2 else None) == [
        f"odd {x}" if x % 2 else None for x in items]
    assert 64 < most[0] <= 128  # threads ahead, but 2 × 64, not 1,000
    with pytest.raises(ZeroDivisionError):  # a check that fails is not swallowed
        images.check_many(items, lambda x: 1 // (x - 500))


def test_all_corrupt_empty_and_missing_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_images(str(tmp_path / "missing"), 8, 3)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no images \(png/jpg/jpeg/webp/bmp/gif/tif/tiff\) found under"):
        load_images(str(tmp_path / "empty"), 8, 3)
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="could be decoded"):
        load_images(str(bad), 8, 3, split="all")
    with pytest.raises(ValueError, match="unknown data source"):
        load_images("mnist", 8, 3)
    with pytest.raises(ValueError, match="image_size"):
        load_images("digits", 4, 3)
    with pytest.raises(ValueError, match="channels"):
        load_images("digits", 8, 2)
    with pytest.raises(ValueError, match="split"):
        load_images("digits", 8, 3, split="test")
    _img(tmp_path / "one" / "a.png")
    with pytest.raises(ValueError, match="validation split .* has no images"):
        load_images(str(tmp_path / "one"), 8, 3, split="validation")
    with pytest.raises(ValueError, match="has no images"):
        load_images("digits", 8, 3, split="validation", val_fraction=0.0)


def test_save_to_disk_folder(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features({"img": datasets.Image(),
                                  "y": datasets.ClassLabel(names=["red", "blue"]),
                                  "note": datasets.Value("string")})
    images = [Image.new("RGB", (12, 10), (255, 0, 0) if i % 2 == 0 else (0, 0, 255)) for i in range(10)]
    ds = datasets.Dataset.from_dict({"img": images, "y": [i % 2 for i in range(10)],
                                     "note": [str(i) for i in range(10)]}, features=features)
    # a single Dataset: our own deterministic split
    ds.save_to_disk(str(tmp_path / "single"))
    train = load_images(str(tmp_path / "single"), 8, 3, split="train", val_fraction=0.2)
    val = load_images(str(tmp_path / "single"), 8, 3, split="validation", val_fraction=0.2)
    assert (len(train), len(val)) == (8, 2) and train.class_names == ["red", "blue"]
    assert train.root == tmp_path / "single"
    for item in list(train) + list(val):
        row = int(item["source"][len("train["):-1])
        assert item["label"] == row % 2
        assert item["image"].shape == (3, 8, 8)
        assert item["image"][2 * (row % 2)].mean() > 0.9  # red for 0, blue for 1
    # a DatasetDict with its own validation split ("test" counts as one)
    datasets.DatasetDict(train=ds.select(range(7)), test=ds.select(range(7, 10))).save_to_disk(
        str(tmp_path / "dict"))
    train = load_images(str(tmp_path / "dict"), 8, 1, split="train")
    val = load_images(str(tmp_path / "dict"), 8, 1, split="validation")
    assert (len(train), len(val)) == (7, 3) and val[0]["source"] == "test[0]"
    assert val[0]["image"].shape == (1, 8, 8) and val[0]["label"] == 1


def test_save_to_disk_int_labels_and_corrupt_bytes(tmp_path: Path) -> None:
    import io

    import datasets

    def png(color: int) -> bytes:
        buf = io.BytesIO()
        Image.new("L", (9, 9), color).save(buf, format="PNG")
        return buf.getvalue()

    rows = [{"bytes": png(40 * i), "path": None} for i in range(4)] + [{"bytes": b"junk", "path": None}]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"image": rows, "label": [0, 2, 1, 2, 0]}, features=features)
    ds.save_to_disk(str(tmp_path / "d"))
    src = load_images(str(tmp_path / "d"), 8, 3, split="all")
    assert src.class_names == ["0", "1", "2"] and len(src) == 4
    assert src.skipped and src.skipped[0][0] == "train[4]"
    assert [src[i]["label"] for i in range(4)] == [0, 2, 1, 2]


def test_digits() -> None:
    from sklearn.datasets import load_digits

    train = load_images("digits", 16, 1)
    val = load_images("digits", 16, 1, split="validation")
    assert (len(train), len(val)) == (1617, 180)
    assert train.class_names == [str(d) for d in range(10)]
    all_sources = {train.source_of(i) for i in range(len(train))} | {val.source_of(i) for i in range(len(val))}
    assert len(all_sources) == 1797
    perm = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    assert sorted(val.indices) == sorted(perm[-180:].tolist())
    digits = load_digits()
    item = val[7]
    n = int(item["source"].split(":")[1])
    assert item["label"] == digits.target[n]
    x = torch.from_numpy(digits.images[n]).float()[None] / 16
    expected = torch.nn.functional.interpolate(x[None], size=(16, 16), mode="bilinear", align_corners=False)[0] * 2 - 1
    assert torch.equal(item["image"], expected)
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    rgb = load_images("digits", 16, 3, split="validation")[7]["image"]
    assert rgb.shape == (3, 16, 16) and torch.equal(rgb[1], expected[0])
    assert load_images("digits", 16, 1, split="validation", seed=1).indices != val.indices
    assert {train.label_of(i) for i in range(0, len(train), 7)} == set(range(10))


def test_split_indices() -> None:
    train, val = split_indices(10, "train", 0, 0.3), split_indices(10, "validation", 0, 0.3)
    assert len(val) == 3 and sorted(train + val) == list(range(10))
    assert split_indices(10, "validation", 0, 0.3) == val
    assert len(split_indices(3, "validation", 0, 0.1)) == 1  # at least one when asked for any


def test_photos() -> None:
    train = load_images("photos", 32, 3, crops_per_photo=4)
    val = load_images("photos", 32, 3, split="validation", crops_per_photo=4)
    assert len(train) > 0 and len(val) == 4 * len(val.photos) > 0
    item = train[5]
    assert item["image"].shape == (3, 32, 32) and item["label"] == -1
    assert -1 <= item["image"].min() and item["image"].max() <= 1
    assert torch.equal(load_images("photos", 32, 3, crops_per_photo=4)[5]["image"], item["image"])
    assert set(train.photos).isdisjoint(PHOTOS_HELD_OUT)
    assert set(val.photos) <= set(PHOTOS_HELD_OUT)
    assert all(train.source_of(i).split(":")[0] not in PHOTOS_HELD_OUT for i in range(len(train)))
    other_seed = load_images("photos", 32, 3, crops_per_photo=4, seed=1)
    assert not torch.equal(other_seed[5]["image"], item["image"])
    grey = load_images("photos", 32, 1, split="validation", crops_per_photo=2)
    assert grey[0]["image"].shape == (1, 32, 32)


@pytest.mark.timeout(60)  # a hang fails the test; speed itself is not asserted here
def test_hub_name_fails_fast_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets.config

    # an endpoint nobody listens on stands for "no network", whatever this machine has
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", "https://127.0.0.1:9", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(ValueError, match="could not reach the Hugging Face hub for owner/name"):
        load_images("hf:owner/name", 16, 3)
    # offline mode: only the local cache is asked, and it does not hold the dataset
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(ValueError, match="could not reach the Hugging Face hub for owner/name"):
        load_images("hf:owner/name", 16, 3)


def test_items_batch_in_a_dataloader_with_workers(class_folder: Path) -> None:
    src = load_images(str(class_folder), 8, 3, split="all")
    loader = torch.utils.data.DataLoader(src, batch_size=4, num_workers=2)
    batches = list(loader)
    assert sum(b["image"].shape[0] for b in batches) == len(src)
    assert batches[0]["image"].shape == (4, 3, 8, 8) and batches[0]["label"].dtype == torch.int64
    np.testing.assert_array_equal(batches[0]["image"][0].numpy(), src[0]["image"].numpy())


def test_exif_orientation_is_applied_wherever_images_are_read(tmp_path: Path) -> None:
    """A phone photo stored sideways with an EXIF orientation tag (6: rotate 90° clockwise to view)
    is read upright by every source and by `complete --image`, like the same photo stored upright."""
    from vqgpt.pipeline.data import load_image_file

    upright = np.zeros((40, 20, 3), dtype=np.uint8)  # tall: a bright top half, a dark bottom half
    upright[:20] = 230
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1)))  # what the camera wrote: 20 × 40, sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer turns it 90° clockwise
    for name in ("tagged", "plain"):
        (tmp_path / name).mkdir()
    stored.save(tmp_path / "tagged" / "photo.jpg", exif=exif.tobytes(), quality=95)
    Image.fromarray(upright).save(tmp_path / "plain" / "photo.jpg", quality=95)
    assert Image.open(tmp_path / "tagged" / "photo.jpg").size == (40, 20)  # stored sideways

    for name in ("tagged", "plain"):
        image = load_images(str(tmp_path / name), 16, 1, split="all")[0]["image"][0]  # (16, 16), centre crop of the upright photo
        # the crop shows the middle of the tall photo: the bright top half above the dark bottom half
        assert image[:6].mean() > 0.5 and image[-6:].mean() < -0.5, name
        fitted = np.asarray(load_image_file(tmp_path / name / "photo.jpg", 16, 1), dtype=np.float32)
        assert fitted[:6].mean() > 160 and fitted[-6:].mean() < 60, name


def test_links_hidden_and_other_entries_are_followed_inside_only_and_counted(tmp_path: Path) -> None:
    """A link from one class folder into a sibling class is refused (it would file images under the
    wrong class, or turn the labels off); links leaving the data folder are not followed; hidden
    entries and other files are left out and named in the skip report."""
    import os

    root = tmp_path / "data"
    for cls in ("a", "b"):
        for i in range(3):
            _img(root / cls / f"{i}.png")
    _img(root / ".cache" / "x.png")  # a hidden class folder
    (root / "a" / "notes.txt").write_text("words")
    outside = tmp_path / "elsewhere"
    _img(outside / "far.png")
    os.symlink(outside, root / "b" / "far")  # leaves the data folder
    os.symlink(root / "a" / "0.png", root / "a" / "again.png")  # stays in its class: followed
    src = load_images(str(root), 16, 3, split="all")
    assert src.class_names == ["a", "b"] and len(src) == 7
    reasons = dict(src.left_out)
    assert reasons[".cache/"] == "a hidden folder" and "not an image" in reasons["a/notes.txt"]
    assert reasons["b/far"].startswith("a link to") and "outside the data folder" in reasons["b/far"]
    assert "left out 3 other entries" in src.skip_report()

    os.symlink(root / "a", root / "b" / "more")  # class b's folder now links to class a's images
    with pytest.raises(ValueError, match=r"links to .*another class's folder"):
        load_images(str(root), 16, 3, split="all")


def test_a_source_without_one_readable_image_writes_no_token_dataset(tmp_path: Path) -> None:
    from vqgpt.pipeline.tokens import tokenize_dataset
    from vqgpt.tokenizer import PRESETS, VQGAN, VQGANConfig

    VQGAN(VQGANConfig(**PRESETS["tiny"]["model"])).save_pretrained(tmp_path / "tok")
    for i in range(4):
        (tmp_path / "data" / f"{i}.png").parent.mkdir(exist_ok=True)
        (tmp_path / "data" / f"{i}.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="none of the 4 images of .* could be read .* no token dataset was written"):
        tokenize_dataset(tmp_path / "tok", str(tmp_path / "data"), tmp_path / "tokens", progress=False)
    assert not (tmp_path / "tokens" / "dataset_dict.json").exists() and not (tmp_path / "tokens" / ".partial").exists()


def test_read_pixels_gives_pillows_own_reading_of_every_kind_of_file(tmp_path: Path) -> None:
    """The fast reading path (bytes read whole, turned in place, no crop copy when the resize already
    fits, numpy instead of torchvision's pil_to_tensor) gives, pixel for pixel, what the plain Pillow
    steps give, from a path and from bytes, for every mode and orientation a source meets."""
    from PIL import ImageOps
    from torchvision.transforms.functional import pil_to_tensor

    from vqgpt.pipeline.data.images import read_pixels, to_mode

    def resize_then_crop(img: Image.Image, size: int) -> Image.Image:  # the steps spelled out: always crops
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC) if (nw, nh) != (w, h) else img
        left, top = (nw - size) // 2, (nh - size) // 2
        return img.crop((left, top, left + size, top + size))

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (30, 44, 4), dtype=np.uint8)
    files = {
        "grey.png": Image.fromarray(noise[..., 0]),
        "rgb.jpg": Image.fromarray(noise[..., :3]),
        "rgba.png": Image.fromarray(noise),
        "palette.png": Image.fromarray(noise[..., :3]).quantize(16),
        "grey16.png": Image.fromarray(noise[..., 0].astype(np.uint16) * 257),
        "exact.png": Image.fromarray(noise[:16, :16, :3]),  # already 16 × 16: neither resized nor cropped
        "wide_exact_height.webp": Image.fromarray(noise[:16, :, :3]),  # cropped only
    }
    for name, img in files.items():
        img.save(tmp_path / name)
    exif = Image.Exif()
    exif[0x0112] = 8  # stored turned: the viewer turns it 90° counter-clockwise
    Image.fromarray(noise[..., :3]).save(tmp_path / "turned.jpg", exif=exif.tobytes())

    for path in sorted(tmp_path.iterdir()):
        for channels in (1, 3):
            with Image.open(path) as im:
                im.draft("RGB" if channels == 3 else "L", (16, 16))  # JPEGs: decoded small (and grey) by libjpeg
                reference = pil_to_tensor(resize_then_crop(to_mode(ImageOps.exif_transpose(im), channels), 16))
            for data in (path, str(path), path.read_bytes()):
                got = read_pixels(data, channels, 16)
                assert got.dtype == torch.uint8 and got.shape == (channels, 16, 16), path.name
                assert torch.equal(got, reference), (path.name, channels, type(data).__name__)


def _png_variants() -> dict[str, tuple[bytes, set[int]]]:
    """PNG files of every kind that matters to the libspng path → (bytes, the channels for which that
    path may take it; for the others Pillow reads it)."""
    from PIL import PngImagePlugin

    rng = np.random.default_rng(3)
    grey = Image.fromarray(rng.integers(0, 256, (23, 31), dtype=np.uint8))
    rgb = Image.fromarray(rng.integers(0, 256, (23, 31, 3), dtype=np.uint8))

    def png(img: Image.Image, **kw) -> bytes:
        out = io.BytesIO()
        img.save(out, "PNG", **kw)
        return out.getvalue()

    text = PngImagePlugin.PngInfo()
    text.add_text("Software", "a drawing program")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: Pillow turns it upright, so libspng must not read it
    raw_exif = PngImagePlugin.PngInfo()
    raw_exif.add_text("Raw profile type exif", "\nexif\n" + f"{len(exif.tobytes()):8d}\n" + exif.tobytes().hex())
    plain = png(grey)
    bad_header = bytearray(plain)
    bad_header[20] ^= 1  # IHDR's CRC no longer matches: Pillow refuses the file
    bad_adler = bytearray(plain)
    bad_adler[-20] ^= 0xFF  # the zlib stream's checksum (and IDAT's CRC): Pillow refuses, libspng would not
    return {
        "grey": (plain, {1}), "rgb": (png(rgb), {3}), "interlaced": (png(rgb, interlace=1), {3}),
        "optimized": (png(grey, optimize=True), {1}), "text": (png(grey, pnginfo=text), {1}),
        "exif": (png(rgb, exif=exif), set()), "raw-exif": (png(grey, pnginfo=raw_exif), set()),
        "transparent": (png(rgb, transparency=(1, 2, 3)), set()), "palette": (png(rgb.quantize(8)), set()),
        "grey16": (png(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)), set()),
        "rgba": (png(rgb.convert("RGBA")), set()), "bad-header-crc": (bytes(bad_header), set()),
        "bad-adler": (bytes(bad_adler), set()), "truncated": (plain[:-30], set()),
    }


def test_plain_pngs_are_decoded_by_libspng_only_where_pillow_gives_the_same_pixels() -> None:
    """libspng (pyspng) reads a PNG only when its pixels are Pillow's: 8-bit grey/RGB in the mode asked,
    no transparency, no orientation, every CRC right; every file, taken or not, reads exactly as
    Pillow reads it, or fails with Pillow's own error."""
    from vqgpt.pipeline.data.images import decode_image, read_pixels_many, resize_center_crop, pil_to_pixels
    from vqgpt.pipeline.data.png import plain_png_pixels

    variants = _png_variants()
    for name, (data, fast) in variants.items():
        for channels in (1, 3):
            assert (plain_png_pixels(data, channels) is not None) == (channels in fast), (name, channels)
    names = list(variants)
    for channels in (1, 3):
        for sizes in [(16,), (16, 20), (40,)]:
            got = read_pixels_many([variants[n][0] for n in names], channels, sizes)
            for name, result in zip(names, got):
                try:
                    img = decode_image(variants[name][0], channels, max(sizes))
                    want = [pil_to_pixels(resize_center_crop(img, s)) for s in sizes]
                except Exception as err:
                    def reason(e: Exception) -> str:
                        return re.sub(r"0x[0-9a-f]+", "", str(e))  # Pillow names the BytesIO by its address

                    assert isinstance(result, Exception) and type(result) is type(err), name
                    assert reason(result) == reason(err), name
                    continue
                assert isinstance(result, list) and all(torch.equal(a, b) for a, b in zip(result, want)), name


def test_pngs_of_one_shape_are_resized_together_as_pillow_resizes_each() -> None:
    """``resize_together`` (a group's images stacked, each pass one Pillow call for all) gives each
    image what ``resize_center_crop`` gives it alone: down, up, one axis, non-square (cropped), grey
    and RGB, whichever order of passes Pillow takes for the shape."""
    from vqgpt.pipeline.data.images import _pass_order, _resized_shape, pil_to_pixels, resize_center_crop, resize_together

    rng = np.random.default_rng(4)
    for (h, w), size in [((40, 40), 32), ((37, 53), 16), ((20, 61), 32), ((30, 32), 32), ((112, 105), 84),
                         ((9, 9), 32), ((64, 48), 48), ((50, 23), 16), ((68, 18), 16)]:  # tall: Pillow 13 goes down first
        for bands in ((), (3,)):
            arrays = [rng.integers(0, 256, (h, w, *bands), dtype=np.uint8) for _ in range(5)]
            arrays[0][:] = 255  # flat white and black: Pillow's clipping at both ends
            arrays[1][:, : w // 2] = 0
            nw, nh = _resized_shape(w, h, size)
            assert _pass_order(h, w, nh, nw, bands) is not None  # the stacked path is the one checked here
            got = resize_together(arrays, size)
            assert got.shape == (5, 3 if bands else 1, size, size) and got.dtype == torch.uint8
            for a, g in zip(arrays, got):
                assert torch.equal(g, pil_to_pixels(resize_center_crop(Image.fromarray(a), size))), (h, w, size, bands)
