"""The ``vqgpt`` command line: one verb per stage of the chain.

Each verb is a thin function over the library: it builds configs (preset → ``--config`` →
``--set``), calls the stage, and prints the figures a person wants to see. User mistakes
(bad paths, bad values, impossible configs) become one ``error: ...`` line and exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable

__all__ = ["main", "build_parser"]

logger = logging.getLogger(__name__)

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


# --------------------------------------------------------------------------- helpers


def _configure_logging(verbose: bool) -> None:
    """Log to stderr from the main process only (other ranks keep warnings and errors)."""
    from accelerate import PartialState

    is_main = PartialState().is_main_process
    level = logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("tokenizer", "prior", "pipeline"):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.setLevel(level if is_main else logging.WARNING)
        log.propagate = False


def _is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _print(*parts: Any) -> None:
    """Results go to stdout, from the main process only."""
    if _is_main():
        print(*parts, flush=True)


def _layers(preset_registry: dict[str, dict], preset: str | None, config: str | None, sets: list[str] | None) -> list[dict]:
    from .config import parse_sets, read_config_file

    layers: list[dict] = []
    if preset is not None:
        if preset not in preset_registry:
            raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(preset_registry)}")
        layers.append(preset_registry[preset])
    if config:
        layers.append(read_config_file(config))
    layers.append(parse_sets(sets))
    return layers


def _add_config_args(p: argparse.ArgumentParser, presets: list[str], default: str) -> None:
    p.add_argument("--preset", default=default, help=f"size preset: {', '.join(presets)} (default: {default})")
    p.add_argument("--config", metavar="JSON", help='JSON file {"model": {...}, "train": {...}} layered over the preset')
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", default=[],
        help="override one setting, e.g. --set model.codebook_size=512 --set train.steps=2000 (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a finished model in --out")


def _add_dataclass_args(p: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per dataclass field (``top_k`` → ``--top-k``), help from field metadata."""
    import dataclasses

    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "") + f" (default: {f.default})"
        if f.type in (bool, "bool"):
            p.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            p.add_argument(flag, dest=f.name, default=None, help=help_text)


def _dataclass_from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    import dataclasses
    import typing

    from .config import coerce

    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = dict(fixed)
    for f in dataclasses.fields(cls):
        if f.name in values:
            continue
        raw = getattr(args, f.name, None)
        if raw is not None:
            values[f.name] = coerce(raw, hints[f.name], "--" + f.name.replace("_", "-"))
    return cls(**values)


# --------------------------------------------------------------------------- verbs


def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    import tokenizer as tk

    from .config import build_configs
    from .data import load_images

    cfg = build_configs(
        {"model": tk.VQGANConfig, "train": tk.TokenizerTrainConfig},
        _layers(tk.PRESETS, args.preset, args.config, args.set),
    )
    model_cfg, train_cfg = cfg["model"], cfg["train"]
    train = load_images(args.data, model_cfg.image_size, model_cfg.channels, split="train", seed=args.data_seed)
    val = load_images(args.data, model_cfg.image_size, model_cfg.channels, split="validation", seed=args.data_seed)
    _print(f"data: {args.data} — {len(train)} train / {len(val)} validation images, "
           f"{model_cfg.image_size}px, {model_cfg.channels} channel(s)")
    summary = tk.train_tokenizer(model_cfg, train_cfg, train, val, args.out, resume=args.resume, overwrite=args.overwrite)
    for src in (train, val):
        if src.skipped:
            _print(src.skip_report())
    _print(_format_metrics("tokenizer", summary))
    _print(f"tokenizer saved to {args.out}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    import tokenizer as tk

    from .data import load_images
    from .reconstruct import reconstruct

    device = _device(args.device)
    model = tk.VQGAN.from_pretrained(args.tokenizer, device=device)
    data = load_images(args.data, model.config.image_size, model.config.channels, split=args.split, seed=args.data_seed)
    result = reconstruct(model, data, args.out, num_images=args.num, batch_size=args.batch_size)
    if data.skipped:
        _print(data.skip_report())
    _print(_format_metrics(f"reconstruct ({args.split}, {len(data)} images)", result))
    _print(f"side-by-side grid (originals | reconstructions) written to {args.out}")
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from .tokenize import TokenizeConfig, inspect_tokens, tokenize_dataset

    if args.inspect:
        given = [f"--{f}" for f in ("data", "out") if getattr(args, f) is not None]
        if given:
            raise ValueError(f"--inspect reads a token dataset; {', '.join(given)} cannot be used with it")
        report = inspect_tokens(args.inspect, tokenizer=args.tokenizer, png=args.png)
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
    _print(f"token dataset written to {args.out}")
    return 0


def cmd_train_prior(args: argparse.Namespace) -> int:
    import prior as pr

    from .config import build_configs

    cfg = build_configs(
        {"model": pr.PriorConfig, "train": pr.PriorTrainConfig},
        _layers(pr.PRESETS, args.preset, args.config, args.set),
    )
    callback = None
    if args.tokenizer:
        from .pipeline import sample_grid_writer

        callback = sample_grid_writer(args.tokenizer, Path(args.out) / "samples", tokens_dir=args.tokens)
    summary = pr.train_prior(cfg["model"], cfg["train"], args.tokens, args.out, resume=args.resume,
                             overwrite=args.overwrite, sample_callback=callback)
    _print(_format_metrics("prior", summary))
    _print(f"prior saved to {args.out}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .pipeline import SampleConfig, prepare_out, write_samples

    pipe = _load_pipeline(args)
    labels = pipe.resolve_classes(args.classes)
    settings = _dataclass_from_args(SampleConfig, args, class_labels=labels)
    out = prepare_out(args.out, args.overwrite)
    images = pipe.generate(settings)
    paths = write_samples(images, settings, pipe, out)
    _print(f"{len(images)} images written to {args.out} (grid: {paths['grid']}, settings: {paths['settings']})")
    return 0


def cmd_complete(args: argparse.Namespace) -> int:
    from .pipeline import SampleConfig

    pipe = _load_pipeline(args)
    labels = pipe.resolve_classes(args.classes)
    if labels and len(labels) != 1:
        raise ValueError("complete takes at most one --class")
    settings = _dataclass_from_args(SampleConfig, args, class_labels=labels)
    paths = pipe.complete_to_files(args.image, args.keep_rows, settings, args.out, overwrite=args.overwrite)
    _print(f"{settings.num} completions of {args.image} (top {args.keep_rows} code rows kept) "
           f"written to {args.out} (grid: {paths['grid']})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run

    report = evaluate_run(run=args.run, tokenizer=args.tokenizer, prior=args.prior, data=args.data,
                          tokens=args.tokens, num_samples=args.num_samples, seed=args.seed,
                          device=_device(args.device))
    for section, figures in report.items():
        _print(_format_metrics(section, figures))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, overwrite=args.overwrite, device=_device(args.device), quick=args.quick)
    return 0


def _load_pipeline(args: argparse.Namespace):
    from .pipeline import Pipeline

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


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    import prior as pr
    import tokenizer as tk

    from .pipeline import SampleConfig
    from .tokenize import TokenizeConfig

    parser = argparse.ArgumentParser(prog="vqgpt", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, fn: Callable, help: str, device: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=fn)
        if device:  # training verbs take their devices from accelerate (`accelerate launch`/config)
            p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda when available)")
        return p

    data_help = ("image folder (sub-folders = classes), a save_to_disk folder, hf:owner/name, "
                 "or a bundled set: digits, photos")

    p = verb("train-tokenizer", cmd_train_tokenizer, "train the VQGAN tokenizer (stage 1) on a data source",
             device=False)
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--out", required=True, help="output folder (config.json, model.safetensors, samples, checkpoints)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the train/validation split")
    _add_config_args(p, list(tk.PRESETS), tk.DEFAULT_PRESET)

    p = verb("reconstruct", cmd_reconstruct, "encode+decode images; write a side-by-side grid, print PSNR/SSIM/usage")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--out", required=True, help="PNG file for the side-by-side grid")
    p.add_argument("--split", default="validation", choices=["train", "validation", "all"])
    p.add_argument("--num", type=int, default=32, help="images shown in the grid")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data-seed", type=int, default=0)

    p = verb("tokenize", cmd_tokenize, "turn a data source into a token dataset (or --inspect one)")
    p.add_argument("--tokenizer", help="tokenizer folder")
    p.add_argument("--data", help=data_help)
    p.add_argument("--out", help="output folder for the token dataset")
    p.add_argument("--overwrite", action="store_true", help="replace a finished token dataset")
    _add_dataclass_args(p, TokenizeConfig)
    p.add_argument("--inspect", metavar="DIR", help="print what a token dataset holds")
    p.add_argument("--png", help="with --inspect and --tokenizer: write a PNG of decoded rows")

    p = verb("train-prior", cmd_train_prior, "train the GPT prior (stage 2) on a token dataset", device=False)
    p.add_argument("--tokens", required=True, help="token dataset folder (from vqgpt tokenize)")
    p.add_argument("--out", required=True, help="output folder for the prior")
    p.add_argument("--tokenizer", help="tokenizer folder: also write decoded sample grids during training")
    _add_config_args(p, list(pr.PRESETS), pr.DEFAULT_PRESET)

    def stage_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--run", help="run folder holding tokenizer/ and prior/ (from vqgpt demo)")
        p.add_argument("--tokenizer", help="tokenizer folder (with --prior)")
        p.add_argument("--prior", help="prior folder (with --tokenizer)")

    p = verb("sample", cmd_sample, "draw images from the prior and decode them")
    stage_args(p)
    p.add_argument("--class", dest="classes", action="append", default=[], metavar="LABEL",
                   help="class name or index (repeatable; each class gets --num images)")
    _add_dataclass_args(p, SampleConfig, skip=("class_labels",))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")

    p = verb("complete", cmd_complete, "keep the top rows of an image's codes and let the prior complete the rest")
    stage_args(p)
    p.add_argument("--image", required=True, help="image file to complete")
    p.add_argument("--keep-rows", type=int, required=True, help="code rows kept from the top")
    p.add_argument("--class", dest="classes", action="append", default=[], metavar="LABEL",
                   help="condition on this class (default: no class)")
    _add_dataclass_args(p, SampleConfig, skip=("class_labels",))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")

    p = verb("evaluate", cmd_evaluate, "tokenizer and prior metrics on held-out data")
    stage_args(p)
    p.add_argument("--data", help="data source for tokenizer metrics (validation split)")
    p.add_argument("--tokens", help="token dataset for held-out prior loss (validation split)")
    p.add_argument("--num-samples", type=int, default=200, help="samples drawn for sample metrics")
    p.add_argument("--seed", type=int, default=0)

    p = verb("demo", cmd_demo, "the whole chain on the bundled digits, end to end, on a CPU")
    p.add_argument("--out", default="demo-run", help="run folder (default: demo-run)")
    p.add_argument("--overwrite", action="store_true", help="start again in an existing run folder")
    p.add_argument("--quick", action="store_true", help="a much shorter run, for a smoke test")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vqgpt`` console script."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        _configure_logging(args.verbose)
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        if debug:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, (FileNotFoundError, NotADirectoryError)) and err.filename and str(err.filename) not in message:
            message = f"{message}: {err.filename}"
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
