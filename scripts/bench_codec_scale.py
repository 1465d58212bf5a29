"""Benchmark ``vqgpt compress`` / ``decompress`` as the data set grows: images/s and peak memory.

    python scripts/bench_codec_scale.py --run demo-run                       # 2,000 and 20,000 images
    python scripts/bench_codec_scale.py --run runs/letters --sizes 1000 10000 50000 --rate-weight 0.02

``--run`` is a run folder (``tokenizer/`` and ``prior/``, as ``vqgpt demo`` or the default commands
make it). The script writes a folder of smooth random PNGs at the tokenizer's size and colour mode
(``bench_tokenize.py``'s), then runs, each in its own subprocess so its peak RSS can be read alone
(``os.wait4`` rusage), ``compress_source`` on the first N images and ``decompress_to_folder`` on that
archive, for every N in ``--sizes``. It prints images/s and peak RSS per run. Goal: peak RSS flat as
N grows (the verbs hold one chunk of images — ``CHUNK_IMAGES`` — not the data set), beyond the
archive's own bytes and one name per image. The images are not what the prior was trained on, so
the archive sizes say nothing about compression (``bench_codec.py`` measures that).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # run from a checkout without installing


def _bench_tokenize():
    """The sibling script's helpers (machine line, image generator, child runner)."""
    spec = importlib.util.spec_from_file_location("bench_tokenize", Path(__file__).with_name("bench_tokenize.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _models(run: str):
    from vqgpt.pipeline.generation import Pipeline

    return Pipeline.from_pretrained(run).codec_models()


def _child(args: argparse.Namespace) -> dict:
    import logging

    from vqgpt.pipeline.codec import compress_source, decompress_to_folder
    from vqgpt.resources import keep_freed_memory

    keep_freed_memory()  # as the vqgpt command does at start
    logging.disable(logging.WARNING)
    models = _models(args.run)
    start = time.perf_counter()
    if args.child == "compress":
        stats = compress_source(models, args.data, args.out, rate_weight=args.rate_weight, overwrite=True)
        images, size = stats.images, stats.archive_bytes
    else:
        written = decompress_to_folder(models, args.data, args.out, overwrite=True)
        images, size = written.images, Path(args.data).stat().st_size
    seconds = time.perf_counter() - start
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds, "archive_bytes": size}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="demo-run", help="run folder with tokenizer/ and prior/ (default: demo-run)")
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000], help="images per run")
    p.add_argument("--rate-weight", type=float, default=0.0, help="compress --rate-weight (λ > 0 also keeps the encoder's vectors)")
    p.add_argument("--child", choices=["compress", "decompress"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return

    helpers = _bench_tokenize()
    config = _models(args.run).tokenizer.config
    print(f"machine: {helpers._machine()}")
    print(f"run {args.run}: {config.channels}×{config.image_size}² images, rate weight {args.rate_weight:g}")
    with tempfile.TemporaryDirectory(prefix="bench_codec_scale_") as tmp:
        tmp_path = Path(tmp)
        start = time.perf_counter()
        folders = {}
        for n in sorted(set(args.sizes)):
            folders[n] = tmp_path / f"images_{n}"
            helpers._make_images(folders[n], n, config.image_size, config.channels)
        print(f"generated {sum(folders)} PNGs in {time.perf_counter() - start:.1f}s")
        env = {**os.environ, "TQDM_DISABLE": "1"}  # the children's progress bars would interleave with the table
        for n, folder in folders.items():
            archive = tmp_path / f"{n}.vqga"
            common = ["--run", args.run, "--rate-weight", str(args.rate_weight)]
            packed, rss_c = helpers._run_child(["--child", "compress", "--data", str(folder), "--out", str(archive),
                                                *common], __file__, env)
            unpacked, rss_d = helpers._run_child(["--child", "decompress", "--data", str(archive), "--out",
                                                  str(tmp_path / f"restored_{n}"), *common], __file__, env)
            print(f"{n:>8,} images: compress {packed['images_per_s']:6.1f} images/s, peak RSS {rss_c:7.1f} MiB; "
                  f"decompress {unpacked['images_per_s']:6.1f} images/s, peak RSS {rss_d:7.1f} MiB "
                  f"(archive {packed['archive_bytes'] / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
