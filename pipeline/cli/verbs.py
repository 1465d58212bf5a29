"""The ``vqgpt`` verbs: one function per verb, each a thin layer over the library.

``parser.py`` parses the command line (without importing torch) and calls ``cmd_<verb>`` here;
each builds its configs (preset → ``--config`` → ``--set``), calls its stage and prints the
figures a person wants to see. Results go to stdout from the main process only.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

__all__ = ["cmd_train_tokenizer", "cmd_import_tokenizer", "cmd_reconstruct", "cmd_tokenize", "cmd_train_prior", "cmd_sample",
           "cmd_complete", "cmd_compress", "cmd_decompress", "cmd_evaluate", "cmd_demo"]


def _is_main() -> bool:
    """Rank 0 of a launched job (or a plain process), read from the launcher's environment:
    no accelerate state is created before the stage's own ``Accelerator``."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def _print(*parts: Any) -> None:
    """Results go to stdout, from the main process only."""
    if _is_main():
        print(*parts, flush=True)


def _layers(preset_registry: dict[str, dict], preset: str | None, config: str | None, sets: list[str] | None,
            derived: dict | None = None) -> list[dict]:
    """Settings layers, later ones winning: derived from the data → preset → --config → --set."""
    from ..settings import parse_sets, read_config_file

    layers: list[dict] = [derived] if derived else []
    if preset is not None:
        if preset not in preset_registry:
            raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(preset_registry)}")
        layers.append(preset_registry[preset])
    if config:
        layers.append(read_config_file(config))
    layers.append(parse_sets(sets))
    return layers


def _report_to(args: argparse.Namespace) -> list[dict]:
    """``--report-to`` as the last settings layer (``train.report_to``)."""
    return [{"train": {"report_to": args.report_to}}] if getattr(args, "report_to", None) else []


def _dataclass_from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    import dataclasses
    import typing

    from ..settings import coerce

    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = dict(fixed)
    for f in dataclasses.fields(cls):
        if f.name in values:
            continue
        raw = getattr(args, f.name, None)
        if raw is not None:
            values[f.name] = coerce(raw, hints[f.name], "--" + f.name.replace("_", "-"))
    return cls(**values)


def _print_derived(why: list[str], derived: dict[str, dict], cfg: dict[str, Any]) -> None:
    """The derived defaults and why, then which of them a preset, --config or --set replaced."""
    for line in why:
        _print(f"derived from the data: {line}")
    replaced = [f"{section}.{key}={getattr(cfg[section], key)}" for section, values in derived.items()
                for key, value in values.items() if getattr(cfg[section], key) != value]
    if replaced:
        _print(f"your settings replace: {', '.join(replaced)}")


def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    import torch

    from vqgpt import tokenizer as tk

    from .. import derived
    from ..data import canonical_spec, load_images
    from ..settings import build_configs

    preset = tk.PRESETS.get(args.preset, {})
    batch = preset.get("train", {}).get("batch_size", tk.TokenizerTrainConfig.batch_size)
    data = derived.survey(args.data, seed=args.data_seed)
    defaults, why = derived.tokenizer_defaults(data, torch.cuda.is_available(), batch)

    def configs():
        return build_configs({"model": tk.VQGANConfig, "train": tk.TokenizerTrainConfig},
                             _layers(tk.PRESETS, args.preset, args.config, args.set, defaults) + _report_to(args))
    cfg = configs()
    chosen = cfg["model"]
    if chosen.image_size != defaults["model"]["image_size"] and chosen.channel_mult == defaults["model"]["channel_mult"]:
        # another resolution was asked for and the downsampling was not: derive it for that resolution
        defaults, why = derived.tokenizer_defaults(data, torch.cuda.is_available(), batch, image_size=chosen.image_size)
        cfg = configs()
    _print_derived(why, defaults, cfg)
    model_cfg, train_cfg = cfg["model"], cfg["train"]
    train = load_images(args.data, model_cfg.image_size, model_cfg.channels, split="train", seed=args.data_seed)
    val = load_images(args.data, model_cfg.image_size, model_cfg.channels, split="validation", seed=args.data_seed)
    model_cfg = dataclasses.replace(model_cfg, trained_on=canonical_spec(args.data), trained_split_seed=args.data_seed,
                                    trained_val_fraction=val.split_fraction)
    _print(f"data: {args.data} — {len(train)} train / {len(val)} validation images, "
           f"{model_cfg.image_size}px, {model_cfg.channels} channel(s)")
    summary = tk.train_tokenizer(model_cfg, train_cfg, train, val, args.out, resume=args.resume, overwrite=args.overwrite)
    for src in (train, val):
        if src.skipped or src.left_out:
            _print(src.skip_report())
    _print(_format_metrics("tokenizer", summary))
    _print(f"tokenizer saved to {args.out}")
    return 0


def cmd_import_tokenizer(args: argparse.Namespace) -> int:
    from vqgpt.atomic import write_folder
    from vqgpt.tokenizer.importers import import_tokenizer

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise FileExistsError(f"--out {out} already exists; pass --overwrite to replace it")
    others = sorted(p.name for p in out.iterdir() if p.name not in ("config.json", "model.safetensors")) \
        if out.is_dir() else []
    if others:  # the folder is replaced whole: only ever a tokenizer folder
        raise FileExistsError(f"--overwrite refused: {out} holds files besides a tokenizer ({', '.join(others[:3])}); "
                              "choose another --out")
    if args.image_size is not None and args.image_size < 8:
        raise ValueError(f"--image-size must be at least 8, got {args.image_size}")
    model = import_tokenizer(args.family, args.checkpoint, config=args.config, image_size=args.image_size)
    with write_folder(out) as tmp:  # the whole folder or nothing
        model.save_pretrained(tmp)
    c = model.config
    params = sum(p.numel() for p in model.parameters())
    _print(f"imported {args.family} {c.source_file} (sha256 {c.source_sha256[:16]}…): {params / 1e6:.1f} M parameters, "
           f"{c.image_size} px {c.channels}-channel images → {c.grid_size[0]}×{c.grid_size[1]} codes of {c.codebook_size} "
           f"({c.codebook_norm} codebook, dimension {c.codebook_dim})")
    _print(f"tokenizer saved to {out} (fingerprint {model.fingerprint()})")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from vqgpt import tokenizer as tk

    from ..evaluation import reconstruct

    if Path(args.out).exists() and not args.overwrite:
        raise FileExistsError(f"--out {args.out} already exists; pass --overwrite to replace it")
    model = tk.VQGAN.from_pretrained(args.tokenizer, device=_device(args.device))
    result = reconstruct(model, args.data, args.out, split=args.split, data_seed=args.data_seed, num=args.num,
                         batch_size=args.batch_size)
    if result["skipped"]:
        _print(result["skip_report"])
    _print(f"scored {result['images']} of {result['total']} images of {args.data}: the {result['split']} split "
           f"({result['why']})")
    figures = {k: v for k, v in result.items() if k not in ("split", "why", "total", "skip_report")}
    _print(_format_metrics(f"reconstruct ({result['split']}, {result['images']} images)", figures))
    _print(f"side-by-side grid (originals | reconstructions) written to {args.out}")
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from ..settings import TokenizeConfig
    from ..tokens import describe_tokens, tokenize_dataset

    if args.inspect:
        given = [f"--{f}" for f in ("data", "out") if getattr(args, f) is not None]
        if given:
            raise ValueError(f"--inspect reads a token dataset; {', '.join(given)} cannot be used with it")
        report = describe_tokens(args.inspect, tokenizer=args.tokenizer, png=args.png)
        _print(_format_metrics("tokens", report))
        return 0
    if args.png:
        raise ValueError("--png goes with --inspect DIR --tokenizer DIR")
    for flag in ("tokenizer", "data", "out"):
        if getattr(args, flag) is None:
            raise ValueError(f"tokenize needs --{flag} (or --inspect DIR)")
    config = _dataclass_from_args(TokenizeConfig, args)
    summary = tokenize_dataset(args.tokenizer, args.data, args.out, config, overwrite=args.overwrite,
                               device=_device(args.device))
    _print(_format_metrics("tokenize", summary))
    for line in summary.get("skipped_files", []):
        _print(f"  skipped {line}")
    for line in summary.get("left_out_files", []):
        _print(f"  left out {line}")
    _print(f"token dataset written to {args.out}")
    return 0


def cmd_train_prior(args: argparse.Namespace) -> int:
    from vqgpt import prior as pr

    from .. import derived
    from ..settings import build_configs

    data = pr.load_token_dataset(args.tokens)
    preset = pr.PRESETS.get(args.preset, {})
    batch = preset.get("train", {}).get("batch_size", pr.PriorTrainConfig.batch_size)
    aug = data.meta.get("augmentations") or {}
    copies = 1 + (int(bool(aug.get("flip"))) + int(aug.get("crops") or 0) if "train" in (aug.get("splits") or []) else 0)
    defaults, why = derived.prior_defaults(len(data.train), data.spec.num_codes, batch, images=len(data.train) // copies)
    cfg = build_configs(
        {"model": pr.PriorConfig, "train": pr.PriorTrainConfig},
        _layers(pr.PRESETS, args.preset, args.config, args.set, defaults) + _report_to(args),
    )
    _print_derived(why, defaults, cfg)
    callback = features = None
    if args.tokenizer:  # sample grids during training, and pixels for choosing the sampling defaults
        from ..generation.training_hooks import checked_tokenizer, decoded_pixel_features, sample_grid_writer

        tokenizer = checked_tokenizer(args.tokenizer, args.tokens)
        callback = sample_grid_writer(tokenizer, Path(args.out) / "samples")
        features = decoded_pixel_features(tokenizer)
    summary = pr.train_prior(cfg["model"], cfg["train"], args.tokens, args.out, resume=args.resume,
                             overwrite=args.overwrite, sample_callback=callback, grid_features=features)
    _print(_format_metrics("prior", summary))
    _print(f"prior saved to {args.out}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from ..generation.files import check_out, write_samples
    from ..settings import SampleConfig

    pipe = _load_pipeline(args)
    labels = pipe.resolve_classes(args.classes)
    settings = pipe.resolve(_dataclass_from_args(SampleConfig, args, class_labels=labels))
    check_out(args.out, args.overwrite)  # refuse before the work; the old results are replaced after it
    images = pipe(settings)
    paths = write_samples(images, settings, pipe, args.out, overwrite=args.overwrite)
    _print(f"{len(images)} images written to {args.out} (grid: {paths['grid']}, settings: {paths['settings']})")
    return 0


def cmd_complete(args: argparse.Namespace) -> int:
    from ..generation.files import write_completions
    from ..settings import SampleConfig

    pipe = _load_pipeline(args)
    labels = pipe.resolve_classes(args.classes)
    if labels and len(labels) != 1:
        raise ValueError("complete takes at most one --class")
    settings = _dataclass_from_args(SampleConfig, args, class_labels=labels)
    paths = write_completions(pipe, args.image, args.keep_rows, settings, args.out, overwrite=args.overwrite)
    _print(f"{settings.num} completions of {args.image} (top {args.keep_rows} code rows kept) "
           f"written to {args.out} (grid: {paths['grid']})")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from ..codec import compress_source

    pipe = _load_pipeline(args)
    stats = compress_source(pipe.codec_models(), args.data, args.out, unconditional=args.unconditional,
                            overwrite=args.overwrite, batch_size=args.batch_size, rate_weight=args.rate_weight)
    s = stats.summary()
    _print(f"{s['images']} images → {args.out}: {s['bytes']:,} bytes ({s['bytes_per_image']:.1f} per image, "
           f"{s['bits_per_pixel']:.3f} bits per pixel); {s['bits_per_code']:.3f} bits per code coded, "
           f"{s['model_bits_per_code']:.3f} by the prior's model, {stats.versus_raw()}; "
           f"header and per-image table {s['header_bytes']:,} bytes"
           + (f"; rate weight {args.rate_weight:g}: {s['changed_codes']:.1%} of the codes are not the tokenizer's nearest"
              if args.rate_weight > 0 else "")
           + _not_archived(stats.skipped, stats.left_out))
    return 0


def _not_archived(skipped: int, left_out: int) -> str:
    """The end of compress's summary: what of the source is not in the archive (named in the warning
    printed when the source was listed, which a long progress bar may have pushed out of sight)."""
    parts = []
    if skipped:
        parts.append(f"{skipped} file{'s' if skipped != 1 else ''} that could not be decoded")
    if left_out:
        parts.append(f"{left_out} non-image entr{'ies' if left_out != 1 else 'y'}")
    return f"; not in the archive: {' and '.join(parts)} (named in the warning above)" if parts else ""


def cmd_decompress(args: argparse.Namespace) -> int:
    from ..codec import decompress_to_folder

    pipe = _load_pipeline(args)
    written = decompress_to_folder(pipe.codec_models(), args.archive, args.out, overwrite=args.overwrite,
                                   exact_pixels=args.exact_pixels)
    _print(f"{written.restored} images written to {args.out} (manifest: {Path(args.out) / 'manifest.json'})")
    if written.errors:  # the others are written; the damaged ones are named in the manifest
        raise ValueError(written.first_error(args.archive))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from ..evaluation import evaluate
    from ..evaluation.report import format_report
    from ..settings import SampleConfig
    from .messages import flags_named

    sampling_flags = [f"--{n.replace('_', '-')}" for n in ("guidance", "temperature", "top_k", "top_p")
                      if getattr(args, n) is not None]
    if args.what == "tokenizer" and (sampling_flags or args.prior):
        raise ValueError(f"{', '.join(sampling_flags or ['--prior'])} belong to evaluate prior, not evaluate tokenizer")
    if args.what == "prior" and args.vgg_weights:
        raise ValueError("--vgg-weights (LPIPS) belongs to evaluate tokenizer, not evaluate prior")
    sampling = _dataclass_from_args(SampleConfig, args, seed=args.seed, batch_size=args.batch_size)
    report = evaluate(args.what, run=args.run, tokenizer=args.tokenizer, prior=args.prior, data=args.data,
                      tokens=args.tokens, split=args.split, num_samples=args.num_samples, seed=args.seed,
                      data_seed=args.data_seed, inception_weights=args.inception_weights,
                      vgg_weights=args.vgg_weights, stats_cache=args.stats_cache, sampling=sampling,
                      batch_size=args.batch_size, device=_device(args.device))
    # the report's reasons name the library's parameters (`inception_weights`): shown as this verb's flags
    _print(flags_named(json.dumps(report, indent=2) if args.json else format_report(report), args.parser))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.out, overwrite=args.overwrite, device=_device(args.device), quick=args.quick)
    return 0


def _load_pipeline(args: argparse.Namespace):
    from ..generation import Pipeline

    if args.run and (args.tokenizer or args.prior):
        raise ValueError("give either --run DIR or --tokenizer DIR --prior DIR, not both")
    if args.run:
        return Pipeline.from_pretrained(args.run, device=_device(args.device))
    if not (args.tokenizer and args.prior):
        raise ValueError("give --run DIR, or both --tokenizer DIR and --prior DIR")
    return Pipeline.from_pretrained(args.tokenizer, args.prior, device=_device(args.device))


def _device(name: str | None) -> str:
    import torch

    if not name:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here")
    return name


def _format_metrics(title: str, figures: dict[str, Any]) -> str:
    parts = []
    for key, value in figures.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif isinstance(value, (int, str)):
            parts.append(f"{key}={value}")
    return f"{title}: " + "  ".join(parts)
