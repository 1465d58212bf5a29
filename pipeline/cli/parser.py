"""The ``vqgpt`` command line: the parser and the entry point.

The parser is built from torch-free settings modules only (presets, config dataclasses), so
``vqgpt --help`` answers at once; a verb's function (``verbs.py``) imports what it needs when
it runs. User mistakes (bad paths, bad values, impossible configs) become one ``error: ...``
line and exit code 2; ``--debug`` shows the traceback instead.

Only the command line speaks of flags. The library names its parameters, in backticks where an
error message names one (`keep_rows`); here such a name becomes the verb's flag (``--keep-rows``).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from .messages import flags_named

__all__ = ["main", "build_parser"]

logger = logging.getLogger(__name__)

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


# --------------------------------------------------------------------------- helpers


def _configure_logging(verbose: bool) -> None:
    """Log to stderr from the main process only (other ranks keep warnings and errors). The rank
    comes from the launcher's environment: an accelerate state made here, before the stage's own
    ``Accelerator``, would fix the process layout too early (e.g. ignore ``ACCELERATE_USE_CPU``)."""
    is_main = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0
    level = logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("vqgpt",):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.setLevel(level if is_main else logging.WARNING)
        log.propagate = False


def _add_config_args(p: argparse.ArgumentParser, presets: list[str], default: str) -> None:
    p.add_argument("--preset", default=default, help=f"size preset: {', '.join(presets)} (default: {default})")
    p.add_argument("--config", metavar="JSON", help='JSON file {"model": {...}, "train": {...}} layered over the preset')
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", default=[],
        help="override one setting, e.g. --set model.codebook_size=512 --set train.max_steps=2000 (repeatable; "
             "both stages name their training settings alike: max_steps, learning_rate, batch_size, …)",
    )
    p.add_argument("--report-to", metavar="TRACKERS",
                   help="experiment trackers through accelerate: none, tensorboard, wandb, trackio, all, or several "
                        "comma-separated (default: none; metrics.jsonl and loss_curve.png are always written)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a finished model in --out")


def _add_dataclass_args(p: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per dataclass field (``top_k`` → ``--top-k``), help from field metadata."""
    import dataclasses

    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if "default:" not in help_text:
            help_text += f" (default: {f.default})"
        if f.type in (bool, "bool", "bool | None"):
            p.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            p.add_argument(flag, dest=f.name, default=None, help=help_text)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from vqgpt.prior.presets import DEFAULT_PRESET as PRIOR_DEFAULT
    from vqgpt.prior.presets import PRESETS as PRIOR_PRESETS
    from vqgpt.tokenizer.presets import DEFAULT_PRESET as TOKENIZER_DEFAULT
    from vqgpt.tokenizer.presets import PRESETS as TOKENIZER_PRESETS

    from ..settings import SampleConfig, TokenizeConfig

    parser = argparse.ArgumentParser(prog="vqgpt", description="vqgpt: two-stage image generation — a VQGAN tokenizer turns images into code grids, a GPT prior learns them, the pipeline samples and decodes.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help: str, device: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func="cmd_" + name.replace("-", "_"), parser=p)  # the function in verbs.py
        if device:  # training verbs take their devices from accelerate (`accelerate launch`/config)
            p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda when available)")
        return p

    data_help = ("image folder (sub-folders = classes), WebDataset tar shards ('shards/train-{00000..00099}.tar'), "
                 "a save_to_disk folder, hf:owner/name, "
                 "or a bundled set: digits, photos")

    p = verb("train-tokenizer", "train the VQGAN tokenizer (stage 1) on a data source",
             device=False)
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--out", required=True, help="output folder (config.json, model.safetensors, samples, checkpoints)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the train/validation split (default: 0)")
    _add_config_args(p, list(TOKENIZER_PRESETS), TOKENIZER_DEFAULT)

    p = verb("import-tokenizer", "a published VQGAN (taming-transformers, LlamaGen, diffusers) → a vqgpt tokenizer folder",
             device=False)
    p.add_argument("--from", dest="family", required=True, choices=["taming", "llamagen", "diffusers"],
                   help="the family the checkpoint comes from")
    p.add_argument("--checkpoint", required=True,
                   help="taming: the Lightning .ckpt; llamagen: the .pt (vq_ds16_c2i.pt); diffusers: the VQModel folder")
    p.add_argument("--config", help="taming: its model.yaml (required); diffusers: a config.json other than the folder's")
    p.add_argument("--image-size", type=int, help="resolution to run at (default: taming's recorded resolution, else 256)")
    p.add_argument("--out", required=True, help="output tokenizer folder (config.json, model.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace a tokenizer already in --out")

    p = verb("reconstruct", "encode+decode images; write a side-by-side grid, print PSNR/SSIM/usage")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--out", required=True, help="PNG file for the side-by-side grid")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--split", choices=["train", "validation", "all"],
                   help="images scored (default: the validation split of the source the tokenizer was trained on — "
                        "the images evaluate scores too — all of any other source)")
    p.add_argument("--num", type=int, default=32, help="images shown in the grid")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data-seed", type=int, help="seed of the train/validation split (default: the tokenizer's)")

    p = verb("tokenize", "turn a data source into a token dataset (or --inspect one)")
    p.add_argument("--tokenizer", help="tokenizer folder")
    p.add_argument("--data", help=data_help)
    p.add_argument("--out", help="output folder for the token dataset")
    p.add_argument("--overwrite", action="store_true", help="replace a finished token dataset")
    _add_dataclass_args(p, TokenizeConfig)
    p.add_argument("--inspect", metavar="DIR", help="print what a token dataset holds")
    p.add_argument("--png", help="with --inspect and --tokenizer: write a PNG of decoded rows")

    p = verb("train-prior", "train the GPT prior (stage 2) on a token dataset", device=False)
    p.add_argument("--tokens", required=True, help="token dataset folder (from vqgpt tokenize)")
    p.add_argument("--out", required=True, help="output folder for the prior")
    p.add_argument("--tokenizer", help="tokenizer folder: also write decoded sample grids during training")
    _add_config_args(p, list(PRIOR_PRESETS), PRIOR_DEFAULT)

    def stage_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--run", help="run folder holding tokenizer/ and prior/ (from vqgpt demo)")
        p.add_argument("--tokenizer", help="tokenizer folder (with --prior)")
        p.add_argument("--prior", help="prior folder (with --tokenizer)")

    p = verb("sample", "draw images from the prior and decode them")
    stage_args(p)
    p.add_argument("--class", dest="classes", action="extend", nargs="+", default=[], metavar="LABEL",
                   help="class names or indices: --class A B C (or --class repeated); each class gets --num images")
    _add_dataclass_args(p, SampleConfig, skip=("class_labels",))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")

    p = verb("complete", "keep the top rows of an image's codes and let the prior complete the rest")
    stage_args(p)
    p.add_argument("--image", required=True, help="image file to complete")
    p.add_argument("--keep-rows", type=int, required=True, help="code rows kept from the top")
    p.add_argument("--class", dest="classes", action="append", default=[], metavar="LABEL",
                   help="condition on this class (default: no class)")
    _add_dataclass_args(p, SampleConfig, skip=("class_labels",))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")

    p = verb("compress", "images → one archive file: their codes, range-coded with the prior's probabilities")
    stage_args(p)
    p.add_argument("--data", required=True, help=data_help + "; every image of it is compressed")
    p.add_argument("--out", required=True, help="archive file to write")
    p.add_argument("--unconditional", action="store_true",
                   help="code every image with the \"no class\" token (default: under its class, when the source has classes)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="grids per pass of the prior, recorded in the archive (default: 16)")
    p.add_argument("--rate-weight", type=float, default=0.0, metavar="λ",
                   help="trade quality for size: each code is the one minimising its squared distance to the "
                        "encoder's vector + λ × its bits under the prior (default: 0, the tokenizer's own codes; "
                        "0.01–0.04: 9–17 %% fewer bytes for 0.3–1.5 dB on unseen letters; decoding needs nothing)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    p = verb("decompress", "an archive from vqgpt compress → one PNG per image and manifest.json")
    p.add_argument("archive", help="archive file")
    stage_args(p)
    p.add_argument("--out", required=True, help="output folder (PNGs at the images' source paths, manifest.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--exact-pixels", action="store_true",
                   help="decode pixels in float64: the same PNGs on any machine, not only the same codes "
                        "(about 7× the tokenizer's decoding time; without it a value may differ by one level "
                        "of 255 between CPU instruction sets)")

    p = verb("evaluate", "tokenizer metrics (PSNR, SSIM, LPIPS, codebook usage, rFID) and prior metrics "
             "(held-out bits per code, gFID, per class) under one printed protocol")
    p.add_argument("what", nargs="?", default="all", choices=["tokenizer", "prior", "all"],
                   help="what to evaluate (default: all that --run or the folders given hold)")
    stage_args(p)
    p.add_argument("--data", help="data source of the real images (default: the one the token dataset names)")
    p.add_argument("--tokens", help="token dataset: held-out bits per code, its data source and split (--run: tokens/)")
    p.add_argument("--split", choices=["validation", "train", "all"],
                   help="split of the real images (default: validation — the images the models never saw — of the "
                        "source they were trained on; all of any other source)")
    p.add_argument("--num-samples", type=int, metavar="N",
                   help="prior: samples drawn (default: as many as the split has images); tokenizer: a seeded "
                        "subset of N images of the split (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and of a --num-samples subset (default: 0)")
    p.add_argument("--data-seed", type=int, help="seed of the train/validation split (default: the token dataset's, else 0)")
    p.add_argument("--inception-weights", metavar="FILE",
                   help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth; default: looked for in the "
                        "torch hub checkpoints folder; never downloaded — without them FID is reported absent)")
    p.add_argument("--vgg-weights", metavar="FILE",
                   help="torchvision vgg16 weights for LPIPS (default: vgg16-397923af.pth in the torch hub checkpoints folder)")
    p.add_argument("--stats-cache", metavar="DIR",
                   help="where reference statistics are cached (default: inside the token dataset, else ~/.cache/vqgpt)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    _add_dataclass_args(p, SampleConfig, skip=("num", "class_labels", "seed", "batch_size"))
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")

    p = verb("demo", "the whole chain on the bundled digits, end to end, on a CPU")
    p.add_argument("--out", default="demo-run", help="run folder (default: demo-run)")
    p.add_argument("--overwrite", action="store_true", help="start again in an existing run folder")
    p.add_argument("--quick", action="store_true", help="a much shorter run, for a smoke test")
    return parser


def _disk_full(path: str | None) -> str:
    """One line for ENOSPC: where, how much is free there, and that nothing earlier was lost."""
    import shutil

    probe = os.path.abspath(path or ".")
    while not os.path.exists(probe):  # the file itself may not exist: measure the nearest existing folder
        probe = os.path.dirname(probe)
    free = shutil.disk_usage(probe).free
    return (f"no space left on the device while writing {path or 'a result'} ({free / 2**20:.0f} MiB free there); "
            "the previous results and the last good checkpoint are intact: free some space and run again "
            "(with --resume for training)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vqgpt`` console script."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    verb_parser = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        verb_parser = args.parser
        _configure_logging(args.verbose)
        from vqgpt.resources import keep_freed_memory

        keep_freed_memory()  # a third of the CPU's time otherwise goes to faulting freed pages back in
        from . import verbs

        return int(getattr(verbs, args.func)(args) or 0)
    except USER_ERRORS as err:
        if debug:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, (FileNotFoundError, NotADirectoryError)) and err.filename and str(err.filename) not in message:
            message = f"{message}: {err.filename}"
        print(f"error: {flags_named(message, verb_parser)}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk is one line too; everything is written atomically, so nothing is lost
        if debug or err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: {_disk_full(err.filename)}", file=sys.stderr)
        return 1
    except FloatingPointError as err:  # training diverged: not a user mistake, but no traceback either
        if debug:
            raise
        print(f"error: {flags_named(str(err), verb_parser)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        from vqgpt.checkpoints import Preempted  # imported only once a trainer has stopped

        if not debug and isinstance(err, RuntimeError) and "unexpected pos" in str(err):  # torch.save, disk full
            print(f"error: {_disk_full(None)}", file=sys.stderr)
            return 1
        if not isinstance(err, Preempted) or debug:
            raise
        print(f"{flags_named(str(err), verb_parser)}", file=sys.stderr)  # a cluster's stop, not an error
        return 143  # 128 + SIGTERM, as a process killed by it would report

