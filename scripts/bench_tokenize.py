"""Benchmark ``vqgpt tokenize``: throughput against bare ``encode``, and peak memory.

    python scripts/bench_tokenize.py                      # digits preset, 2,000 and 20,000 images
    python scripts/bench_tokenize.py --preset small --sizes 1000 10000 --batch-size 32
    python scripts/bench_tokenize.py --preset llamagen-vq16 --sizes 64 256 --batch-size 8   # 256 px, 72 M
    python scripts/bench_tokenize.py --shards             # the same images also as WebDataset tar shards

It builds a random-init tokenizer from a preset, or in the layout of a published tokenizer as
``vqgpt import-tokenizer`` makes it (``llamagen-vq16``: LlamaGen's VQ-16, 256 px → 16×16 codes of
16,384; throughput does not depend on the weights),
generates a folder of PNG images at the preset's resolution, and runs, each in its own
subprocess so its peak RSS can be read alone (``os.wait4`` rusage):

1. bare ``model.encode`` on in-memory batches of the same size (the ceiling), before the first
   tokenize run and after each one;
2. ``tokenize_dataset`` on the first N images, for every N in ``--sizes``;
3. with ``--shards``, ``tokenize_dataset`` on the same N images packed into WebDataset tar shards
   of 1,000 (read as a stream).

It prints images/s for both (goal: tokenize ≥ 90% of bare encode), each tokenize run against the
mean of the two bare runs beside it (a machine whose speed drifts moves them together) and
against the fastest bare run of the series (stricter), and each run's peak
RSS (goal: flat as N grows, i.e. memory does not scale with the data set). With the default
threads it also prints bare encode as one one-thread process per core side by side: on the CPU
tokenize's workers encode that way, so that figure, not one process's, is the ceiling there.
Every run sets glibc's malloc as the ``vqgpt`` command does (``keep_freed_memory``); one more bare
encode with glibc's defaults shows what that is worth (``--default-malloc`` leaves it everywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # run from a checkout without installing


def _machine() -> str:
    import torch

    mem = ""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        mem = f", {pages * size / 2**30:.1f} GiB RAM"
    except (ValueError, OSError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.platform()}; {platform.processor() or platform.machine()}; "
            f"{os.cpu_count()} CPUs{mem}; {gpu}; python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


# Architectures of published tokenizers, as `vqgpt import-tokenizer` configures them.
IMPORTED_LAYOUTS = {
    "llamagen-vq16": {"image_size": 256, "channels": 3, "base_channels": 128, "channel_mult": (1, 1, 2, 2, 4),
                      "num_res_blocks": 2, "attn_resolutions": (16,), "attn_at_lowest": True, "norm_groups": 32,
                      "z_channels": 256, "codebook_size": 16384, "codebook_dim": 8, "codebook_norm": "l2",
                      "kmeans_init": False},
}


def _layout(preset: str) -> dict:
    from vqgpt.tokenizer import PRESETS

    return IMPORTED_LAYOUTS[preset] if preset in IMPORTED_LAYOUTS else PRESETS[preset]["model"]


def _make_tokenizer(preset: str, out: Path) -> None:
    import torch

    from vqgpt.tokenizer import VQGAN, VQGANConfig

    torch.manual_seed(0)
    VQGAN(VQGANConfig(**_layout(preset))).eval().save_pretrained(out)


def _make_images(folder: Path, count: int, size: int, channels: int) -> None:
    """``count`` smooth random PNGs (a little larger than ``size``, so resizing runs)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    side = size + size // 4
    for i in range(count):
        low = rng.integers(0, 256, (side // 4, side // 4, channels), dtype=np.uint8)
        img = Image.fromarray(low[..., 0] if channels == 1 else low).resize((side, side), Image.BILINEAR)
        img.save(folder / f"{i:06d}.png", compress_level=1)


def _make_shards(folder: Path, out: Path, per_shard: int = 1000) -> str:
    """The PNGs of ``folder`` as WebDataset shards ``out/shard-NNNNN.tar`` (key = file stem); their pattern."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    files = sorted(folder.glob("*.png"))
    count = (len(files) + per_shard - 1) // per_shard
    for k in range(count):
        with wds.TarWriter(str(out / f"shard-{k:05d}.tar")) as sink:
            for f in files[k * per_shard:(k + 1) * per_shard]:
                sink.write({"__key__": f.stem, "png": f.read_bytes()})
    return str(out / f"shard-{{00000..{count - 1:05d}}}.tar")


def _child_bare(tokenizer: str, batch_size: int, images: int) -> dict:
    import torch

    from vqgpt.tokenizer import VQGAN

    model = VQGAN.from_pretrained(tokenizer)
    c, s = model.config.channels, model.config.image_size
    batch = torch.rand(batch_size, c, s, s, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        model.encode(batch)  # warm-up
        n, start = 0, time.perf_counter()
        while n < images:
            model.encode(batch)
            n += batch_size
        seconds = time.perf_counter() - start
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds}


def _child_tokenize(tokenizer: str, data: str, out: str, batch_size: int, workers: int | None) -> dict:
    import datasets  # noqa: F401  (import time is not tokenize time)

    from vqgpt.pipeline.tokens import tokenize_dataset

    start = time.perf_counter()
    # crops=0: each image encoded once, as bare encode does (left unset, tokenize derives crops for
    # small sets and would encode every image up to 8 times)
    summary = tokenize_dataset(tokenizer, data, out, batch_size=batch_size, num_workers=workers, crops=0,
                               progress=False)
    seconds = time.perf_counter() - start
    return {"images": summary["images"], "seconds": seconds, "images_per_s": summary["images"] / seconds}


def _run_child(args: list[str], script: str = __file__, env: dict | None = None) -> tuple[dict, float]:
    """Run ``script`` (this one by default) as a child; return its JSON result and its own peak RSS in MiB."""
    proc = subprocess.Popen([sys.executable, script, *args], stdout=subprocess.PIPE, cwd=ROOT, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child {args[:2]} failed with exit code {proc.returncode}")
    rss_mib = usage.ru_maxrss / 1024 if sys.platform != "darwin" else usage.ru_maxrss / 2**20
    return json.loads(out.decode().strip().splitlines()[-1]), rss_mib


def _run_children_together(args: list[str], count: int) -> float:
    """Run ``count`` copies of this script as children at the same time; their summed images/s."""
    procs = [subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, cwd=ROOT)
             for _ in range(count)]
    total = 0.0
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"child {args[:2]} failed with exit code {proc.returncode}")
        total += json.loads(out.decode().strip().splitlines()[-1])["images_per_s"]
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small", help="tokenizer preset, or llamagen-vq16 (random init)")
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000], help="images per tokenize run")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, help="DataLoader workers of tokenize (default: tokenize's own)")
    p.add_argument("--shards", action="store_true", help="also tokenize the images from WebDataset tar shards")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's malloc settings alone in every run (the command changes them: keep_freed_memory)")
    p.add_argument("--child", choices=["bare", "tokenize"], help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--images", type=int, default=2000, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child and not args.default_malloc:
        from vqgpt.resources import keep_freed_memory

        keep_freed_memory()  # as the vqgpt command does at start, for bare encode and tokenize alike
    if args.child and args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child == "bare":
        print(json.dumps(_child_bare(args.tokenizer, args.batch_size, args.images)))
        return
    if args.child == "tokenize":
        print(json.dumps(_child_tokenize(args.tokenizer, args.data, args.out, args.batch_size, args.workers)))
        return

    model_cfg = _layout(args.preset)
    size, channels = model_cfg.get("image_size", 32), model_cfg.get("channels", 1)
    print(f"machine: {_machine()}")
    threads = args.threads or "default"
    workers = "tokenize's default" if args.workers is None else args.workers
    print(f"tokenizer preset {args.preset!r} (random init): {channels}×{size}², "
          f"batch size {args.batch_size}, DataLoader workers: {workers}, {threads} torch threads")
    with tempfile.TemporaryDirectory(prefix="bench_tokenize_") as tmp:
        tmp_path = Path(tmp)
        tok = tmp_path / "tokenizer"
        _make_tokenizer(args.preset, tok)
        start = time.perf_counter()
        folders, patterns = {}, {}
        for n in sorted(set(args.sizes)):
            folders[n] = tmp_path / f"images_{n}"
            _make_images(folders[n], n, size, channels)
            if args.shards:
                patterns[n] = _make_shards(folders[n], tmp_path / f"shards_{n}")
        print(f"generated {sum(args.sizes)} PNGs{' and their shards' if args.shards else ''} in "
              f"{time.perf_counter() - start:.1f}s")

        common = ["--batch-size", str(args.batch_size), "--threads", str(args.threads)] + (
            ["--default-malloc"] if args.default_malloc else [])
        # as many images as the largest tokenize run: a second or less of encoding swings by half on a
        # shared machine
        bare_args = ["--child", "bare", "--tokenizer", str(tok), "--images", str(max(args.sizes)), *common]
        # bare encode runs before, between and after the tokenize runs: this machine's speed drifts
        # by a third within minutes, so each tokenize run is compared with the bare runs on either side
        # of it, and (the stricter figure) with the fastest bare run of the series
        bare = [_run_child(bare_args)]
        runs = []
        worker_args = [] if args.workers is None else ["--workers", str(args.workers)]
        for kind, data in [("folder", folders), ("shards", patterns)]:
            for n in sorted(data):
                result, rss = _run_child(["--child", "tokenize", "--tokenizer", str(tok), "--data", str(data[n]),
                                          "--out", str(tmp_path / f"tokens_{kind}_{n}"), *worker_args, *common])
                runs.append((f"{n:>7,} images" + (" (tar shards)" if kind == "shards" else ""), result, rss))
                bare.append(_run_child(bare_args))
        best, bare_rss = max(bare, key=lambda r: r[0]["images_per_s"])
        every = ", ".join(f"{r['images_per_s']:.0f}" for r, _ in bare)
        print(f"bare encode:            {best['images_per_s']:9.1f} images/s (best of {every}, in order; "
              f"peak RSS {bare_rss:7.1f} MiB)")
        # the other ceiling: one single-thread encode process per core, side by side (what tokenize's
        # CPU workers do); shown so the two can be told apart
        cores = os.cpu_count() or 1
        if cores > 1 and args.threads == 0:
            side = _run_children_together([*bare_args[:-2], "--threads", "1"], cores)
            print(f"bare encode, {cores} one-thread processes side by side: {side:9.1f} images/s "
                  f"({100 * side / best['images_per_s']:.0f}% of one process)")
        if not args.default_malloc:  # what keep_freed_memory is worth
            plain, _ = _run_child([*bare_args, "--default-malloc"])
            print(f"bare encode, glibc's default malloc settings: {plain['images_per_s']:9.1f} images/s "
                  f"(the command's keep_freed_memory: {100 * best['images_per_s'] / plain['images_per_s'] - 100:+.0f}%)")
        for k, (what, result, rss) in enumerate(runs):
            beside = (bare[k][0]["images_per_s"] + bare[k + 1][0]["images_per_s"]) / 2
            print(f"tokenize {what}: {result['images_per_s']:9.1f} images/s = {100 * result['images_per_s'] / beside:5.1f}% "
                  f"of the bare runs beside it ({beside:.0f}), {100 * result['images_per_s'] / best['images_per_s']:5.1f}% "
                  f"of the fastest, {result['seconds']:6.1f}s end to end (peak RSS {rss:7.1f} MiB)")


if __name__ == "__main__":
    main()
