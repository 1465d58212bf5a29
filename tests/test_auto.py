"""Defaults derived from the data (pipeline/auto.py) and the split an evaluation scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqgpt.pipeline import derived as auto
from vqgpt.pipeline.cli import main


def _folder(root: Path, n: int, size: int, colour: bool, alpha: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            grey = rng.integers(0, 255, (size, size), dtype=np.uint8)
            pixels = np.stack([grey, np.roll(grey, 3, 1), 255 - grey], -1) if colour else np.stack([grey] * 3, -1)
            img = Image.fromarray(pixels)
            if alpha:
                img.putalpha(Image.fromarray(np.full((size, size), 200, np.uint8)))
            img.save(root / c / f"{i:03d}.png")
    return root


@pytest.mark.parametrize("colour, alpha, channels", [(True, False, 3), (False, False, 1), (True, True, 3)])
def test_channels_follow_the_colour_of_the_images(tmp_path, colour, alpha, channels):
    survey = auto.survey(str(_folder(tmp_path / "d", 12, 40, colour, alpha)))
    derived, why = auto.tokenizer_defaults(survey, on_gpu=False)
    assert derived["model"]["channels"] == channels
    assert why[0].startswith(f"channels {channels}")


@pytest.mark.parametrize("typical, on_gpu, size, grid", [(24, False, 16, 8), (40, False, 32, 8), (300, False, 32, 8),
                                                         (90, True, 64, 8), (300, True, 256, 16), (8, False, 16, 8)])
def test_resolution_from_the_typical_size_capped_on_a_cpu(typical, on_gpu, size, grid):
    survey = auto.DataSurvey(images=1000, classes=0, typical_size=typical, colour_share=0.0, sampled=100)
    model = auto.tokenizer_defaults(survey, on_gpu)[0]["model"]
    assert model["image_size"] == size
    assert size // 2 ** (len(model["channel_mult"]) - 1) == grid


def test_a_resolution_the_user_sets_gets_its_own_downsampling(tmp_path, capsys):
    """--set model.image_size=64 on 8 px images: the downsampling follows (8×8 codes, not 32×32)."""
    survey = auto.DataSurvey(images=1000, classes=0, typical_size=8, colour_share=0.0, sampled=100)
    model, why = auto.tokenizer_defaults(survey, False, image_size=64)
    assert model["model"]["image_size"] == 64 and 64 // 2 ** (len(model["model"]["channel_mult"]) - 1) == 8
    assert "your setting" in why[1] and "8×8" in why[1]
    data = _folder(tmp_path / "d", 6, 20, colour=False)
    code = main(["train-tokenizer", "--data", str(data), "--out", str(tmp_path / "tok"),
                 "--set", "model.image_size=32", "--set", "train.max_steps=1", "--set", "train.batch_size=2"])
    assert code == 0
    config = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert config["image_size"] == 32 and 32 // 2 ** (len(config["channel_mult"]) - 1) == 8
    assert "resolution 32 px → 8×8 codes — your setting" in capsys.readouterr().out


@pytest.mark.parametrize("images, steps", [(200, 600), (1400, 962), (100_000, 3000)])
def test_tokenizer_training_length_from_the_data_size(images, steps):
    survey = auto.DataSurvey(images=images, classes=0, typical_size=32, colour_share=0.0, sampled=100)
    train = auto.tokenizer_defaults(survey, False, batch_size=16)[0]["train"]
    assert train["max_steps"] == steps and train["disc_start"] == int(steps * 0.75)


@pytest.mark.parametrize("rows, images, steps, dropout", [(300, None, 200, 0.1), (1500, None, 375, 0.1),
                                                            (1_000_000, None, 5000, 0.0),
                                                            (11232, 1404, 993, 0.0)])  # 8 rows per image: √8 × longer
def test_prior_training_length_and_regularisation_from_the_data_size(rows, images, steps, dropout):
    derived, why = auto.prior_defaults(rows, 64, batch_size=64, images=images)
    assert derived["train"]["max_steps"] == steps and derived["train"]["early_stopping_patience"] == 3
    assert derived["model"]["dropout"] == dropout and len(why) == 3
    assert derived["train"]["token_dropout"] == 0.1 and "token dropout 0.1" in why[2]
    assert ("8 per image" in why[0]) == (images is not None)


def test_train_tokenizer_without_preset_keeps_colour_and_records_its_source(capsys, image_folder, tmp_path):
    out = tmp_path / "tok"
    code = main(["train-tokenizer", "--data", str(image_folder), "--out", str(out), "--set", "train.max_steps=2",
                 "--set", "model.base_channels=8", "--set", "train.batch_size=4", "--set", "train.checkpoint_every=0"])
    stdout = capsys.readouterr().out
    assert code == 0 and "derived from the data: channels 3" in stdout and "resolution 16 px" in stdout
    assert "your settings replace: train.max_steps=2" in stdout  # a derived value the user overrode is named
    config = json.loads((out / "config.json").read_text())
    assert config["channels"] == 3 and config["image_size"] == 16  # the shapes are 24 px colour images
    assert config["trained_on"] == str(image_folder.resolve()) and config["trained_val_fraction"] == 0.1

    grid = tmp_path / "r.png"
    assert main(["reconstruct", "--tokenizer", str(out), "--data", str(image_folder), "--out", str(grid)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("scored"))
    assert "the validation split (the images the models never saw)" in line  # its own source: held out only
    other = _folder(tmp_path / "other", 5, 24, colour=True)
    assert main(["reconstruct", "--tokenizer", str(out), "--data", str(other), "--out", str(grid), "--overwrite"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("scored"))
    assert line.startswith("scored 10 of 10 images") and "the all split" in line  # another source: all of it
