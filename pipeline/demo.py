"""``vqgpt demo``: the whole chain on the bundled digits, end to end, on a CPU.

train the tokenizer → reconstruct held-out digits (figures from ``evaluate``'s code) → tokenize → train the class-conditional
prior → sample a grid of every class → judge the samples with an independent classifier → compress the
held-out digits into one archive with the prior as the entropy model and decode it back.
Finished stages in an existing run folder are reused; ``--overwrite`` starts again.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch

from vqgpt import prior as pr
from vqgpt import tokenizer as tk
from vqgpt.checkpoints import CHECKPOINT_DIR, latest_checkpoint

from .codec import compress_images, decode_archive
from .data import load_images
from .evaluation import Evaluator, Images, evaluate_tokenizer, write_reconstruction_grid
from .evaluation.digits import check_digit_samples
from .generation import Pipeline
from .generation.files import write_samples
from .generation.training_hooks import checked_tokenizer, decoded_pixel_features, sample_grid_writer
from .settings import SampleConfig, build_configs
from .tokens import tokenize_dataset

__all__ = ["run_demo", "DEMO_SETTINGS"]

# Everything the demo chooses, in one place: its own settings of each stage (the commands for
# your data derive theirs from the data instead), tuned on the bundled digits.
DEMO_TOKENIZER = {
    "model": {"image_size": 32, "channels": 1, "base_channels": 16, "channel_mult": (1, 2, 2), "num_res_blocks": 1,
              "z_channels": 32, "norm_groups": 8, "codebook_size": 64, "codebook_dim": 8},
    "train": {"max_steps": 300, "batch_size": 16, "learning_rate": 2e-3, "adam_beta1": 0.9, "adam_beta2": 0.99, "warmup_steps": 30,
              "disc_weight": 0.05, "disc_start": 220, "disc_channels": 16, "disc_layers": 2, "checkpoint_every": 150,
              "sample_every": 100},
}
DEMO_PRIOR = {
    "model": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 384, "dropout": 0.1},
    # The demo's goal is digits a classifier recognises (≥ 95 %), so its sampling choice may move
    # further from plain sampling's Fréchet ratio than a user's (35 % vs 25 %), on 500 draws per
    # candidate (docs/design-notes.md).
    "train": {"batch_size": 32, "max_steps": 800, "learning_rate": 2e-3, "warmup_steps": 40, "weight_decay": 0.1,
              "label_dropout": 0.1, "eval_every": 100, "early_stopping_patience": 3, "checkpoint_every": 400,
              "sample_every": 200, "log_every": 10, "selection_samples": 500, "selection_max_fd_increase": 0.35},
}
DEMO_SETTINGS = {
    "data": "digits",
    "tokenize": {"flip": False, "crops": 0, "batch_size": 128},
    # Sampling: none set here — the prior chooses its guidance and temperature on held-out digits
    # at the end of training, exactly as for any user's data (prior/selection.py).
    "check_samples": 200,
}

# --quick: the same chain with a fraction of the steps (used by the end-to-end test).
QUICK_OVERRIDES = {
    "tokenizer": {"train.max_steps": 20, "train.warmup_steps": 2, "train.sample_every": 10, "train.checkpoint_every": 0},
    "prior": {"train.max_steps": 20, "train.selection_samples": 20, "train.warmup_steps": 2, "train.eval_every": 10,
              "train.sample_every": 10, "train.checkpoint_every": 0},
}


# What the demo writes into its run folder (and so may remove with --overwrite).
DEMO_ARTEFACTS = {"tokenizer", "tokens", "prior", "samples", "prior_samples", "reconstructions.png", "demo_figures.json",
                  "held_out_digits.vqga"}


def _stage_mode(stage_dir: Path) -> dict:
    """How to (re)start an unfinished stage: resume from its checkpoints, else start afresh."""
    if latest_checkpoint(stage_dir / CHECKPOINT_DIR):
        return {"resume": True}
    return {"overwrite": stage_dir.exists()}


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(out: str | Path = "demo-run", overwrite: bool = False, device: str = "cpu", quick: bool = False) -> dict:
    """Run every stage into ``out``; returns the figures of each stage."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"`out` {out} exists and is not a folder")
    if overwrite and out.exists():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in DEMO_ARTEFACTS)
        if foreign:
            raise ValueError(f"`overwrite` refused: {out} holds files the demo did not write ({', '.join(foreign[:3])}); "
                             "choose another `out`")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, dict] = {}
    start = time.perf_counter()

    # 1. tokenizer ------------------------------------------------------------------------
    t0 = time.perf_counter()
    tok_dir = out / "tokenizer"
    cfg = build_configs({"model": tk.VQGANConfig, "train": tk.TokenizerTrainConfig},
                        [DEMO_TOKENIZER, QUICK_OVERRIDES["tokenizer"] if quick else {}])
    train = load_images("digits", cfg["model"].image_size, cfg["model"].channels, split="train")
    val = load_images("digits", cfg["model"].image_size, cfg["model"].channels, split="validation")
    if (tok_dir / tk.model.WEIGHTS_NAME).is_file():
        _say(f"[1/6] tokenizer: reusing {tok_dir}")
    else:
        _say(f"[1/6] training the tokenizer on {len(train)} digits ({len(val)} held out)…")
        model_cfg = dataclasses.replace(cfg["model"], trained_on="digits", trained_val_fraction=val.split_fraction)
        tk.train_tokenizer(model_cfg, cfg["train"], train, val, tok_dir, **_stage_mode(tok_dir))
    model = tk.VQGAN.from_pretrained(tok_dir, device=device)
    fingerprint = model.fingerprint()
    write_reconstruction_grid(model, val, out / "reconstructions.png", num=32)
    # The figures come from `vqgpt evaluate tokenizer`'s own code (rFID when the Inception
    # weights file is in the torch hub cache, else a one-line reason).
    recon = evaluate_tokenizer(model, Images(val, "validation", 0, val.split_fraction),
                               Evaluator.create(lpips=True, device=device, batch_size=128))
    figures["tokenizer"] = {**recon, "seconds": round(time.perf_counter() - t0, 1)}
    _say(f"      held-out PSNR {recon['psnr']:.2f} dB, SSIM {recon['ssim']:.3f}, "
         f"codebook usage {recon['codebook_usage']:.1f}%, perplexity {recon['perplexity']:.1f} "
         f"→ {out / 'reconstructions.png'}")
    _say(f"      rFID {recon['rfid']:.2f} ({recon['protocol']})" if recon["rfid"] is not None
         else f"      rFID absent: {recon['rfid_absent']}")

    # 2. tokenize --------------------------------------------------------------------------
    t0 = time.perf_counter()
    tokens_dir = out / "tokens"
    made_by = None  # the tokenizer fingerprint of a finished token dataset found in the run
    if pr.data.is_token_dataset(tokens_dir):
        made_by = pr.read_token_meta(tokens_dir)["tokenizer_fingerprint"]
    if made_by == fingerprint:
        _say(f"[2/6] tokens: reusing {tokens_dir}")
        summary = {}
    else:
        _say("[2/6] tokenizing the digits…")
        summary = tokenize_dataset(tok_dir, "digits", tokens_dir, device=device, overwrite=made_by is not None,
                                   **DEMO_SETTINGS["tokenize"])
    figures["tokenize"] = {**{k: v for k, v in summary.items() if isinstance(v, (int, float, str))},
                           "seconds": round(time.perf_counter() - t0, 1)}
    _say(f"      token dataset → {tokens_dir}")

    # 3. prior -----------------------------------------------------------------------------
    t0 = time.perf_counter()
    prior_dir = out / "prior"
    prior_done = (prior_dir / pr.model.SPEC_FILE).is_file()
    prior_ok = prior_done and pr.model.read_spec(prior_dir).tokenizer_fingerprint == fingerprint
    if prior_ok:
        _say(f"[3/6] prior: reusing {prior_dir}")
        prior_summary = {}
    else:
        _say("[3/6] training the class-conditional prior…")
        pcfg = build_configs({"model": pr.PriorConfig, "train": pr.PriorTrainConfig},
                             [DEMO_PRIOR, QUICK_OVERRIDES["prior"] if quick else {}])
        tokenizer = checked_tokenizer(tok_dir, tokens_dir, device=device)
        callback = sample_grid_writer(tokenizer, prior_dir.parent / "prior_samples")
        mode = _stage_mode(prior_dir) if not prior_done else {"overwrite": True}
        prior_summary = pr.train_prior(pcfg["model"], pcfg["train"], tokens_dir, prior_dir, sample_callback=callback,
                                       grid_features=decoded_pixel_features(tokenizer), **mode)
    figures["prior"] = {**{k: v for k, v in prior_summary.items() if isinstance(v, (int, float, str))},
                        "seconds": round(time.perf_counter() - t0, 1)}
    if prior_summary:
        bits = prior_summary.get("val_bits_per_code")
        _say(f"      held-out {bits:.3f} bits/code → {prior_dir}" if isinstance(bits, float) else f"      → {prior_dir}")

    # 4. sample ----------------------------------------------------------------------------
    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained(out, device=device)
    settings = pipe.resolve(SampleConfig(num=10, class_labels=tuple(range(pipe.spec.num_classes)), seed=0))
    images = pipe(settings)
    paths = write_samples(images, settings, pipe, out / "samples", overwrite=True)
    figures["sample"] = {"images": len(images), "seconds": round(time.perf_counter() - t0, 1)}
    _say(f"[4/6] sampled 10 images of every class with the prior's defaults (guidance {settings.guidance}, "
         f"temperature {settings.temperature}, chosen on held-out digits) → {paths['grid']}")

    # 5. check -----------------------------------------------------------------------------
    t0 = time.perf_counter()
    n = 50 if quick else DEMO_SETTINGS["check_samples"]
    check = check_digit_samples(pipe, num_samples=n, seed=1)  # with the prior's own defaults, as `vqgpt sample`
    figures["check"] = {**check, "seconds": round(time.perf_counter() - t0, 1)}
    _say(f"[5/6] an SVM trained on real digits ({100 * check['real_digit_accuracy']:.1f}% on held-out real digits) "
         f"recognises {100 * check['conditional_accuracy']:.1f}% of {n} class-conditional samples; "
         f"near-copies of training digits: {100 * check['near_copy_share']:.1f}%; Fréchet distance to held-out "
         f"digits {check['fd_ratio']:.2f}× the training digits'")

    # 6. compress --------------------------------------------------------------------------
    t0 = time.perf_counter()
    held_out = [val[i] for i in range(len(val))]
    labels = [item["label"] for item in held_out]
    images = torch.stack([item["image"] for item in held_out])
    archive, stats = compress_images(pipe.codec_models(), images, labels)
    (out / "held_out_digits.vqga").write_bytes(archive)
    decoded = decode_archive(archive, pipe.codec_models())
    with torch.inference_mode():
        exact = bool(torch.equal(decoded.grids, pipe.tokenizer.encode(images.to(device)).cpu()))
    figures["compress"] = {**stats.summary(), "exact": exact, "seconds": round(time.perf_counter() - t0, 1)}
    c = figures["compress"]
    _say(f"[6/6] compressed the {c['images']} held-out digits with the prior as entropy model: {c['bytes_per_image']:.1f} "
         f"bytes per image ({c['bits_per_code']:.2f} bits per code, {100 * c['saving_vs_raw_indices']:.0f}% below raw "
         f"indices), decoded {'bit-exactly' if exact else 'WITH ERRORS'} → {out / 'held_out_digits.vqga'}")

    figures["total_seconds"] = round(time.perf_counter() - start, 1)
    (out / "demo_figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    _say(f"done in {figures['total_seconds']:.0f} s — samples: {paths['grid']}, figures: {out / 'demo_figures.json'}")
    return figures
