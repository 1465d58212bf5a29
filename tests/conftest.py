"""Shared fixtures: a tiny labelled image folder and a tiny trained run (tokenizer, tokens,
prior) made once per test session with the real training code, in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Tests never reach a hub: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _shape_image(kind: str, rng: np.random.Generator, size: int = 24) -> Image.Image:
    img = np.full((size, size, 3), 20, dtype=np.uint8)
    c = rng.integers(8, size - 8, size=2)
    r = int(rng.integers(4, 7))
    yy, xx = np.mgrid[:size, :size]
    if kind == "circle":
        mask = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= r * r
    else:
        mask = (abs(yy - c[0]) <= r) & (abs(xx - c[1]) <= r)
    img[mask] = rng.integers(150, 255, size=3)
    return Image.fromarray(img)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """``root/{circle,square}/*.png``: 12 images per class (24×24 RGB) and one corrupt file."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for kind in ("circle", "square"):
        (root / kind).mkdir()
        for i in range(12):
            _shape_image(kind, rng).save(root / kind / f"{i:02d}.png")
    (root / "square" / "broken.png").write_bytes(b"not a png at all")
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, image_folder) -> Path:
    """A run folder (tokenizer/, tokens/, prior/) trained for a few steps on ``image_folder``."""
    from vqgpt import prior as pr
    from vqgpt import tokenizer as tk
    from vqgpt.pipeline.settings import build_configs
    from vqgpt.pipeline.data import load_images
    from vqgpt.pipeline.tokens import tokenize_dataset

    run = tmp_path_factory.mktemp("run")
    cfg = build_configs({"model": tk.VQGANConfig, "train": tk.TokenizerTrainConfig}, [tk.PRESETS["tiny"]])
    train = load_images(str(image_folder), cfg["model"].image_size, cfg["model"].channels, split="train")
    val = load_images(str(image_folder), cfg["model"].image_size, cfg["model"].channels, split="validation")
    tk.train_tokenizer(cfg["model"], cfg["train"], train, val, run / "tokenizer")
    tokenize_dataset(run / "tokenizer", str(image_folder), run / "tokens", progress=False)
    pcfg = build_configs({"model": pr.PriorConfig, "train": pr.PriorTrainConfig},
                         [pr.PRESETS["tiny"], {"train": {"max_steps": 6, "checkpoint_every": 0, "eval_every": 3}}])
    pr.train_prior(pcfg["model"], pcfg["train"], run / "tokens", run / "prior")
    return run


@pytest.fixture
def interrupted_tokenize():
    """``run(tokenizer, data, out, after=2, **settings)``: a ``tokenize_dataset`` run stopped (as by
    Ctrl-C) once ``after`` shards are written; returns the (split, index) of the shards written."""
    from vqgpt.pipeline.tokens import tokenize_dataset

    def run(tokenizer, data, out, after: int = 2, **settings) -> list[tuple[str, int]]:
        written: list[tuple[str, int]] = []

        def stop(split: str, index: int) -> None:
            written.append((split, index))
            if len(written) == after:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            tokenize_dataset(tokenizer, data, out, on_shard=stop, **settings)
        return written

    return run
