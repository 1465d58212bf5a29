"""Token datasets: the contract's format round-trips into prior sequences; bad input is a clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict

from vqgpt.prior import load_token_dataset, write_token_dataset
from vqgpt.prior.data import TOKENS_FILE, codes_dtype


def make(path, k: int = 300, classes=("a", "b", "c"), n: int = 12, grid=(2, 3), seed: int = 0):
    rng = np.random.default_rng(seed)
    splits = {
        "train": (rng.integers(0, k, (n, *grid)), rng.integers(-1, len(classes), n), [f"index:{i}" for i in range(n)]),
        "validation": (rng.integers(0, k, (4, *grid)), rng.integers(-1, len(classes), 4)),
    }
    write_token_dataset(path, splits, k, classes, tokenizer_fingerprint="fp0", image_size=32, channels=1, data="test")
    return splits


def test_round_trip_gives_condition_token_then_raster_codes(tmp_path):
    splits = make(tmp_path / "tok")
    data = load_token_dataset(tmp_path / "tok")
    assert data.spec.codebook_size == 300 and data.spec.grid == (2, 3) and data.spec.class_names == ("a", "b", "c")
    assert data.meta["tokenizer_fingerprint"] == "fp0" and data.meta["format"] == "vqgpt-tokens"
    assert len(data.train) == 12 and len(data.validation) == 4
    codes, labels, _ = splits["train"]
    for i in range(12):
        seq = data.train[i]
        assert seq.dtype == torch.int64 and seq.shape == (7,)
        expected_cond = 300 + labels[i] if labels[i] >= 0 else 303
        assert seq[0] == expected_cond
        assert seq[1:].tolist() == codes[i].reshape(-1).tolist()
    batch = data.train.__getitems__([3, 0, 5])
    assert torch.equal(torch.stack(batch), torch.stack([data.train[3], data.train[0], data.train[5]]))


def test_written_format_matches_the_contract(tmp_path):
    make(tmp_path / "tok", k=256)
    dsd = DatasetDict.load_from_disk(str(tmp_path / "tok"))
    feats = dsd["train"].features
    assert feats["codes"].shape == (2, 3) and feats["codes"].dtype == "uint8"
    assert feats["label"].dtype == "int32" and feats["source"].dtype == "string"
    meta = json.loads((tmp_path / "tok" / TOKENS_FILE).read_text())
    assert json.loads(dsd["validation"].info.description) == meta
    assert set(meta) == {"format", "version", "tokenizer_fingerprint", "grid", "codebook_size", "class_names",
                         "image_size", "channels", "augmentations", "data", "split"}
    assert meta["split"] == {"seed": 0, "val_fraction": 0.1}
    assert (codes_dtype(256), codes_dtype(257), codes_dtype(70000)) == ("uint8", "uint16", "int32")


def test_metadata_in_info_description_alone_is_enough(tmp_path):
    make(tmp_path / "tok")
    (tmp_path / "tok" / TOKENS_FILE).unlink()
    assert load_token_dataset(tmp_path / "tok").spec.codebook_size == 300


def test_missing_folder_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_token_dataset(tmp_path / "nope")


def test_folder_that_is_not_a_token_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a token dataset"):
        load_token_dataset(tmp_path / "empty")
    DatasetDict({"train": Dataset.from_dict({"x": [1, 2]}), "validation": Dataset.from_dict({"x": [3]})}).save_to_disk(
        str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="not a vqgpt token dataset"):
        load_token_dataset(tmp_path / "plain")
    (tmp_path / "file").write_text("hi")
    with pytest.raises(ValueError, match="is a file"):
        load_token_dataset(tmp_path / "file")


def test_missing_split_is_named(tmp_path):
    make(tmp_path / "tok")
    dsd = DatasetDict.load_from_disk(str(tmp_path / "tok"))
    DatasetDict({"train": dsd["train"]}).save_to_disk(str(tmp_path / "half"))
    (tmp_path / "half" / TOKENS_FILE).write_text((tmp_path / "tok" / TOKENS_FILE).read_text())
    with pytest.raises(ValueError, match="lacks the split"):
        load_token_dataset(tmp_path / "half")


def test_labels_beyond_the_classes_are_rejected(tmp_path):
    make(tmp_path / "tok", classes=("a", "b", "c"))
    meta = json.loads((tmp_path / "tok" / TOKENS_FILE).read_text())
    (tmp_path / "tok" / TOKENS_FILE).write_text(json.dumps({**meta, "class_names": ["a"]}))
    with pytest.raises(ValueError, match="labels span"):
        load_token_dataset(tmp_path / "tok")


def test_writer_refuses_existing_folder_and_bad_codes(tmp_path):
    make(tmp_path / "tok")
    with pytest.raises(FileExistsError):
        make(tmp_path / "tok")
    with pytest.raises(ValueError, match="codes must be in"):
        write_token_dataset(tmp_path / "bad", {"train": (np.full((2, 2, 2), 9), np.zeros(2))}, 5)


def test_codes_outside_the_codebook_are_refused_and_inspect_says_so(tmp_path):
    """A token dataset whose codes reach K or beyond (its metadata edited to a smaller codebook, say)
    would be read as class tokens or index past the vocabulary: refused with one line."""
    import json

    from vqgpt.pipeline.tokens import describe_tokens

    codes = np.random.default_rng(0).integers(0, 12, size=(6, 2, 2))
    write_token_dataset(tmp_path / "t", {"train": (codes, np.zeros(6, int)), "validation": (codes[:2], np.zeros(2, int))},
                        codebook_size=12, class_names=["x"])
    meta_file = tmp_path / "t" / "vqgpt_tokens.json"
    meta = json.loads(meta_file.read_text())
    meta["codebook_size"] = 8  # the file now claims a smaller codebook than its codes use
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"codes span 0\.\.11 but the codebook has 8 codes"):
        load_token_dataset(tmp_path / "t")
    assert describe_tokens(tmp_path / "t")["codes_in_range"].startswith("NO: codes span 0..11")
