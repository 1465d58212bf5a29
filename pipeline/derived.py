"""Defaults that fit the data: what ``train-tokenizer`` and ``train-prior`` choose when not told.

A preset names a model size; everything that depends on the user's data is derived here and
layered *under* the preset, ``--config`` and ``--set`` (any of which wins):

- tokenizer: the channel count (colour stays colour: RGB when a sample of the images has colour,
  grey only when every sampled image is grey or when asked), the resolution (the largest of
  16/32/64/128/256 px not above the images' typical shorter side, capped at 32 px on a CPU),
  the downsampling to an 8×8 code grid at CPU sizes, the codebook size (64 grey, 256 colour
  codes: small enough for the prior to learn on a CPU), and the training length (about eleven
  passes over the data, 600–3,000 steps) with the GAN phase in its last quarter;
- tokenize: random crops of each training image (shifts and a slight zoom; never flips, which
  change the meaning of text) when the data set is small, so that the prior sees about 10,000
  training rows — the prior's main defence against over-fitting a small data set;
- prior: the training length (about 16 passes over the source images, more when augmented rows
  bring variety: see ``prior_defaults``; 200–5,000 steps), held-out evaluation about eight times
  a run with early stopping and best-checkpoint selection, and the regularisation (dropout and
  weight decay by data-set size, token dropout).

Each choice comes with a sentence saying why, printed on the first lines of the command (these
sentences name the command's flags: they are written for it). The measurements behind the values
are in docs/design-notes.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["DataSurvey", "survey", "tokenizer_defaults", "tokenize_defaults", "prior_defaults"]

RESOLUTIONS = (16, 32, 64, 128, 256)
CPU_MAX_RESOLUTION = 32
# Training lengths: as long as the four default commands on a 1,500-image set fit into 15 minutes
# on a 2-core CPU.
PRIOR_PASSES = 16  # over the source images, × √(augmented copies)
TOKENIZER_PASSES = 11  # over the training images
TARGET_TRAIN_ROWS = 10_000  # augmented token rows a small data set is brought up to
MAX_CROPS = 7


@dataclass
class DataSurvey:
    """What a look at (a sample of) the training images says."""

    images: int  # training images
    classes: int
    typical_size: int  # median shorter side of the sampled images, in pixels
    colour_share: float  # share of sampled images with visible colour
    sampled: int


def survey(spec: str, seed: int = 0, val_fraction: float = 0.1, max_images: int = 200) -> DataSurvey:
    """Look at up to ``max_images`` training images of ``spec`` (decoded as RGB, full size)."""
    from .data import load_images

    source = load_images(spec, 32, 3, split="train", seed=seed, val_fraction=val_fraction, check=False)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(source), size=min(max_images, len(source)), replace=False)
    sizes, colourful, sampled = [], 0, 0
    for i in sorted(int(p) for p in picks):
        try:
            img = source.load_pil(i, 1 << 16)  # RGB, transparency on white
        except Exception:  # noqa: BLE001 - unreadable files are counted when the data is really read
            continue
        sampled += 1
        sizes.append(min(img.size))
        small = np.asarray(img.resize((32, 32)), dtype=np.int16)  # (32, 32, 3)
        spread = np.abs(small[..., 0] - small[..., 1]) + np.abs(small[..., 1] - small[..., 2])
        colourful += float(spread.mean()) > 6.0  # a few grey levels of hue: scanner noise is not colour
    if not sampled:
        raise ValueError(f"none of the {len(picks)} images sampled from {spec} could be read")
    return DataSurvey(images=len(source), classes=len(source.class_names), typical_size=int(np.median(sizes)),
                      colour_share=colourful / sampled, sampled=sampled)


def tokenizer_defaults(data: DataSurvey, on_gpu: bool, batch_size: int = 16, image_size: int | None = None,
                       ) -> tuple[dict[str, dict], list[str]]:
    """Overrides {"model": {...}, "train": {...}} derived from the data, and why (one line each).
    image_size: the resolution the user's settings chose (the downsampling is then derived for it)."""
    channels = 3 if data.colour_share > 0.05 else 1
    fitting = [r for r in RESOLUTIONS if r <= max(data.typical_size, RESOLUTIONS[0])]
    size = fitting[-1]
    cap = RESOLUTIONS[-1] if on_gpu else CPU_MAX_RESOLUTION
    why_size = f"images are typically {data.typical_size} px"
    if size > cap:
        size = cap
        why_size += f", capped at {cap} px on a {'GPU' if on_gpu else 'CPU'}"
    if image_size is not None and image_size != size:
        size, why_size = image_size, f"your setting (the images are typically {data.typical_size} px)"
    levels = max(1, int(math.log2(max(size // 8, 1))) + 1)  # an 8×8 code grid at CPU sizes, 16×16 from 256 px
    if size >= 256:
        levels -= 1
    mult = (1, 2, 2, 4, 4)[:levels]
    codebook = 256 if channels == 3 else 64
    steps = int(min(3000, max(600, round(TOKENIZER_PASSES * data.images / batch_size))))
    model = {"channels": channels, "image_size": size, "channel_mult": mult, "codebook_size": codebook}
    train = {"max_steps": steps, "warmup_steps": min(30, steps // 10), "disc_start": int(steps * 0.75),
             "checkpoint_every": max(1, steps // 2), "sample_every": max(1, steps // 3)}
    grid = size // 2 ** (len(mult) - 1)
    colour = (f"RGB: {data.colour_share:.0%} of {data.sampled} sampled images have colour" if channels == 3 else
              f"grey: none of {data.sampled} sampled images has colour (RGB: --set model.channels=3)")
    why = [f"channels {channels} — {colour}",
           f"resolution {size} px → {grid}×{grid} codes — {why_size} (change: --set model.image_size=N)",
           f"codebook {codebook} codes — {'colour' if channels == 3 else 'grey'} images at CPU size "
           f"(change: --set model.codebook_size=K)",
           f"{steps} steps ≈ {steps * batch_size / max(data.images, 1):.1f} passes over {data.images} images "
           f"(change: --set train.max_steps=N)"]
    return {"model": model, "train": train}, why


def tokenize_defaults(train_images: int) -> tuple[int, str]:
    """Random crops per training image for ``tokenize`` (``TokenizeConfig.crops`` left unset), and why.

    A small data set is brought up to about ``TARGET_TRAIN_ROWS`` token rows with crops, the prior's
    main defence against over-fitting it. Crops shift the image by a pixel and zoom it slightly
    (``crop_resize``); flips are never chosen (they change text)."""
    crops = min(MAX_CROPS, max(0, math.ceil(TARGET_TRAIN_ROWS / max(train_images, 1)) - 1))
    if crops:
        why = (f"{crops} random crop(s) of each of the {train_images} training images → {train_images * (crops + 1)} "
               f"training rows, so that the prior does not over-fit a small data set (change: --crops N)")
    else:
        why = f"no augmented copies: {train_images} training images are plenty (change: --crops N)"
    return crops, why


def prior_defaults(rows: int, num_codes: int, batch_size: int = 64, images: int | None = None,
                   ) -> tuple[dict[str, dict], list[str]]:
    """Training overrides for a prior on ``rows`` training sequences of ``num_codes`` codes, made
    from ``images`` source images (fewer than ``rows`` when tokenize stored augmented copies)."""
    images = rows if images is None else max(1, min(images, rows))
    copies = rows / images
    # Augmented copies are not new images, but they are not repeats either: the prior keeps
    # improving on held-out rows for longer, so it trains for √copies × the un-augmented length.
    steps = int(min(5000, max(200, round(PRIOR_PASSES * images * math.sqrt(copies) / batch_size))))
    eval_every = max(10, steps // 8)
    small = rows < 20_000
    train = {"max_steps": steps, "warmup_steps": min(200, max(10, steps // 10)), "eval_every": eval_every,
             "early_stopping_patience": 3, "checkpoint_every": eval_every * 2, "sample_every": eval_every * 2,
             "weight_decay": 0.1 if small else 0.05,
             "token_dropout": 0.1}  # prior/train.py `drop_tokens`
    # Attention dropout only where even augmented rows are few (it slows a CPU step and did not help
    # a set that crops brought to ~11,000 rows).
    model = {"dropout": 0.1 if rows < TARGET_TRAIN_ROWS // 2 else 0.0}
    made = f" ({copies:.0f} per image)" if copies > 1.01 else ""
    why = [f"{steps} steps ≈ {steps * batch_size / max(rows, 1):.1f} passes over {rows} rows{made} of {num_codes} codes "
           f"(change: --set train.max_steps=N)",
           f"held-out evaluation every {eval_every} steps; training stops after 3 without improvement and the best "
           "model is kept",
           f"dropout {model['dropout']}, weight decay {train['weight_decay']} for {rows} training rows, "
           f"token dropout {train['token_dropout']}"]
    return {"model": model, "train": train}, why
