"""Benchmark ``vqgpt compress`` against WebP, AVIF, JPEG and JPEG XL on held-out images.

    python scripts/bench_codec.py --set digits=demo-run --set letters=runs/letters --set photos=runs/photos \\
        --out docs/codec [--num 200] [--vgg-weights vgg16-397923af.pth]

Each ``NAME=RUN`` is a run folder (``tokenizer/``, ``tokens/``, ``prior/``, as ``vqgpt demo`` or the
default commands make it). The images are the held-out split of the source its token dataset was
made from (the rows the prior never trained on), or with ``--held-out NAME=SRC`` every image of
another source the run never saw, prepared as the tokenizer sees them (its size and colour mode);
``--num`` of them, evenly spread over the split, are measured.

For every image:

- **vqgpt**: the archive of all of them (`compress_images`: header and per-image table included,
  divided by the number of images; without file names, as a WebP file has none — what the names
  `vqgpt compress` stores add is printed apart), decoded back (checked bit-exact against the encoded
  codes) and decoded to pixels; PSNR and SSIM against the prepared original. With
  ``--rate-weights 0 0.01 0.02`` once per rate weight (``vqgpt compress --rate-weight``): vqgpt's
  own rate–distortion curve, each point matched by the codecs at its own PSNR.
- **at matched PSNR**: for WebP, AVIF, JPEG (Pillow) and JPEG XL (`pillow-jxl-plugin`), the
  smallest file whose PSNR is at least vqgpt's on that image (a binary search over the quality
  setting, which PSNR follows monotonically up to rare ties; a codec that cannot reach it at its
  highest quality is counted at its lossless size, or its largest for JPEG, and flagged);
- lossless PNG and WebP sizes, for reference;
- rate–distortion curves (mean bytes, PSNR, SSIM over a sweep of quality settings) for the plot.

Writes ``OUT/codec_bench.json``, ``OUT/codec_bench.md`` (the table) and ``OUT/codec_bench.png``
(bits per pixel against PSNR and SSIM, one row per set), and prints the table with the machine.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # run from a checkout without installing

from vqgpt import prior as pr  # noqa: E402
from vqgpt.pipeline.codec import compress_images, decode_archive, decode_pixels, pixel_decoder  # noqa: E402
from vqgpt.pipeline.data import held_out_split, load_images, to_uint8  # noqa: E402
from vqgpt.pipeline.generation import Pipeline  # noqa: E402
from vqgpt.tokenizer.metrics import ssim as ssim_metric  # noqa: E402

SWEEP = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)
PSNR_CAP = 100.0  # an exact reconstruction


def _jxl() -> bool:
    try:
        import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)
        return True
    except ImportError:
        return False


def codecs() -> dict[str, dict]:
    """Lossy codecs by name: Pillow's save options for a quality q, and the lossless options."""
    found = {
        "JPEG": {"format": "JPEG", "lossy": lambda q: {"quality": max(q, 1), "optimize": True}, "lossless": None},
        "WebP": {"format": "WEBP", "lossy": lambda q: {"quality": q, "method": 6},
                 "lossless": {"lossless": True, "quality": 100, "method": 6}},
        "AVIF": {"format": "AVIF", "lossy": lambda q: {"quality": q, "speed": 0}, "lossless": None},
    }
    if _jxl():
        found["JPEG XL"] = {"format": "JXL", "lossy": lambda q: {"quality": min(max(q, 1), 99), "effort": 9},  # 100 is lossless only
                            "lossless": {"lossless": True, "effort": 9}}
    return found


def encode(image: Image.Image, fmt: str, options: dict) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def decode(data: bytes, mode: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert(mode))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM as vqgpt's own metrics compute it (torchmetrics, data range 1)."""
    def tensor(x):
        x = torch.from_numpy(x.astype(np.float32) / 127.5 - 1)
        return (x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None])

    return float(ssim_metric(tensor(a), tensor(b))[0])


def matched(image: Image.Image, original: np.ndarray, target: float, codec: dict) -> dict:
    """The smallest file of ``codec`` with PSNR ≥ ``target`` (binary search over quality 0…100)."""
    mode = image.mode
    cache: dict[int, tuple[bytes, float]] = {}

    def at(q: int) -> tuple[bytes, float]:
        if q not in cache:
            data = encode(image, codec["format"], codec["lossy"](q))
            cache[q] = (data, psnr(decode(data, mode), original))
        return cache[q]

    lo, hi = 0, 100
    if at(hi)[1] < target:
        if codec["lossless"] is not None:
            data = encode(image, codec["format"], codec["lossless"])
            return {"bytes": len(data), "psnr": psnr(decode(data, mode), original), "quality": "lossless",
                    "data": data, "reached": True}
        data, value = at(hi)
        return {"bytes": len(data), "psnr": value, "quality": hi, "data": data, "reached": False}
    while lo < hi:
        mid = (lo + hi) // 2
        if at(mid)[1] >= target:
            hi = mid
        else:
            lo = mid + 1
    data, value = at(hi)
    return {"bytes": len(data), "psnr": value, "quality": hi, "data": data, "reached": True}


def held_out(run: Path, pipe: Pipeline, num: int, other: str | None = None):
    """``num`` held-out images (evenly spread) of the run's source (or every image of ``other``, a source
    the run never saw): FloatTensor[N, C, S, S], labels, names, the source, its size."""
    cfg = pipe.tokenizer.config
    if other is not None:
        data = other
        source = load_images(other, cfg.image_size, cfg.channels, split="all")
    else:
        meta = pr.read_token_meta(run / "tokens")
        data, split = meta["data"], meta.get("split") or {}
        chosen = held_out_split(data, data, int(split.get("seed", 0)), split.get("val_fraction"))
        source = load_images(data, cfg.image_size, cfg.channels, split=chosen.split, seed=chosen.seed,
                             val_fraction=chosen.val_fraction)
    n = min(num, len(source))
    # spread over the whole split: sources list an image's crops together (bundled photos: 256 per photograph)
    chosen_rows = np.linspace(0, len(source) - 1, n).round().astype(int).tolist() if n < len(source) else range(n)
    items = [source[i] for i in chosen_rows]
    images = torch.stack([item["image"] for item in items])
    names = [source.class_names[item["label"]] if item["label"] >= 0 else "" for item in items]
    labels = [pipe.spec.class_names.index(c) if c in pipe.spec.class_names else -1 for c in names]
    return images, labels, [item["source"] for item in items], data, len(source)


def vqgpt_point(pipe: Pipeline, images: torch.Tensor, labels: list[int], names: list[str], originals: np.ndarray,
                vgg: str | None, rate_weight: float) -> tuple[dict, list[float]]:
    """vqgpt's archive of the images at one rate weight: its size, quality and speed (and each image's PSNR)."""
    models = pipe.codec_models()
    n = len(images)
    start = time.perf_counter()
    # as a codec: no file names (a WebP file has none either)
    archive, stats = compress_images(models, images, labels, rate_weight=rate_weight)
    encode_s = time.perf_counter() - start
    named, _ = compress_images(models, images, labels, names, rate_weight=rate_weight)  # as `vqgpt compress` writes it
    start = time.perf_counter()
    decoded = decode_archive(archive, models)
    recon = decode_pixels(decoded.grids, pixel_decoder(models))  # as `vqgpt decompress` does
    decode_s = time.perf_counter() - start
    exact = int((decoded.grids.flatten(1) == stats.codes).all(1).sum())  # the codes the encoder coded
    recon_u8 = to_uint8(recon).permute(0, 2, 3, 1).numpy()
    recon_u8 = recon_u8[..., 0] if recon_u8.ndim == 4 and recon_u8.shape[-1] == 1 else recon_u8
    v_psnr = [psnr(r, o) for r, o in zip(recon_u8, originals)]
    summary = stats.summary()
    vq = {"rate_weight": rate_weight, "bytes": len(archive) / n, "psnr": float(np.mean(v_psnr)),
          "ssim": float(np.mean([ssim(r, o) for r, o in zip(recon_u8, originals)])),
          "encode_images_per_s": n / encode_s, "decode_images_per_s": n / decode_s,
          "bits_per_code": summary["bits_per_code"], "model_bits_per_code": summary["model_bits_per_code"],
          "raw_index_bytes": stats.raw_bits / 8 / n, "saving_vs_raw_indices": summary["saving_vs_raw_indices"],
          "stream_bytes": stats.stream_bytes / n, "header_bytes": stats.header_bytes, "exact": exact,
          "names_bytes": (len(named) - len(archive)) / n, "changed_codes": summary["changed_codes"]}
    if vgg:
        vq["lpips"] = float(lpips_of(vgg, recon, images).mean())
    return vq, v_psnr


def matched_rows(pil: list[Image.Image], originals: np.ndarray, targets: list[float], vgg: str | None,
                 images: torch.Tensor) -> tuple[dict, np.ndarray]:
    """Every codec's smallest file per image at PSNR ≥ the target: a row per codec, and the best codec's
    bytes for each image."""
    mode, n = pil[0].mode, len(pil)
    rows = {}
    for cname, codec in codecs().items():
        start = time.perf_counter()
        found = [matched(im, o, t, codec) for im, o, t in zip(pil, originals, targets)]
        search_s = time.perf_counter() - start
        start = time.perf_counter()
        for f in found:
            decode(f["data"], mode)
        dec_s = time.perf_counter() - start
        start = time.perf_counter()
        for im, f in zip(pil, found):
            encode(im, codec["format"], codec["lossless"] if f["quality"] == "lossless" else codec["lossy"](f["quality"]))
        enc_s = time.perf_counter() - start
        decoded_px = [decode(f["data"], mode) for f in found]
        row = {"bytes": float(np.mean([f["bytes"] for f in found])), "psnr": float(np.mean([f["psnr"] for f in found])),
               "ssim": float(np.mean([ssim(d, o) for d, o in zip(decoded_px, originals)])),
               "unreached": sum(not f["reached"] for f in found), "encode_images_per_s": n / enc_s,
               "decode_images_per_s": n / dec_s, "search_s": search_s, "per_image": [f["bytes"] for f in found]}
        if vgg:
            row["lpips"] = float(lpips_of(vgg, _tensor(decoded_px), images).mean())
        rows[cname] = row
    best = np.min(np.stack([rows[c].pop("per_image") for c in rows]), axis=0)  # the best codec for each image
    return rows, best


def bench_set(name: str, run: Path, num: int, vgg: str | None, other: str | None = None,
              rate_weights: tuple[float, ...] = (0.0,)) -> dict:
    pipe = Pipeline.from_pretrained(run)
    images, labels, names, data_spec, total = held_out(run, pipe, num, other)
    n = len(images)
    originals = to_uint8(images).permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    originals = originals[..., 0] if originals.shape[-1] == 1 else originals
    mode = "L" if originals.ndim == 3 else "RGB"
    pil = [Image.fromarray(o, mode) for o in originals]
    pixels = originals.shape[1] * originals.shape[2]

    points = []
    for rate_weight in rate_weights:
        vq, v_psnr = vqgpt_point(pipe, images, labels, names, originals, vgg, rate_weight)
        rows, best = matched_rows(pil, originals, v_psnr, vgg, images)
        points.append({"vqgpt": vq, "matched": rows, "best_of_codecs_bytes": float(best.mean()),
                       "ratio_vs_best": float(best.mean()) / vq["bytes"]})
    curves = {}
    for cname, codec in codecs().items():
        curve = []
        for q in SWEEP:
            files = [encode(im, codec["format"], codec["lossy"](q)) for im in pil]
            px = [decode(f, mode) for f in files]
            curve.append({"quality": q, "bytes": float(np.mean([len(f) for f in files])),
                          "psnr": float(np.mean([psnr(p, o) for p, o in zip(px, originals)])),
                          "ssim": float(np.mean([ssim(p, o) for p, o in zip(px, originals)]))})
        curves[cname] = curve
    lossless = {"PNG": float(np.mean([len(encode(im, "PNG", {"optimize": True})) for im in pil])),
                "WebP lossless": float(np.mean([len(encode(im, "WEBP", {"lossless": True, "quality": 100, "method": 6}))
                                                for im in pil]))}
    # the first rate weight's point is the set's own (as earlier versions of this file hold it), the others follow
    return {"name": name, "run": str(run), "data": data_spec, "held_out_images": total, "measured": n,
            "image": f"{originals.shape[1]}×{originals.shape[2]} {'grey' if mode == 'L' else 'RGB'}",
            "grid": list(pipe.spec.grid), "codebook_size": pipe.spec.codebook_size, "pixels": pixels,
            **points[0], "rates": points[1:], "lossless": lossless, "curves": curves}


def _tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(arrays).astype(np.float32) / 127.5 - 1)
    return x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)


def lpips_of(vgg: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from vqgpt import tokenizer as tk

    module = tk.LPIPS(vgg_path=vgg).eval()
    expand = (lambda x: x.expand(-1, 3, -1, -1)) if a.shape[1] == 1 else (lambda x: x)
    with torch.inference_mode():
        return module(expand(a.float()), expand(b.float())).flatten()


def points(r: dict) -> list[dict]:
    """A set's vqgpt points: its own (the first rate weight), then those of the other rate weights."""
    return [r, *r.get("rates", [])]


def table(results: list[dict]) -> str:
    lines = ["| set | codec | bytes / image | bits / pixel | PSNR dB | SSIM | × vqgpt's bytes | encode img/s | decode img/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r, point in ((r, point) for r in results for point in points(r)):
        v, px = point["vqgpt"], r["pixels"]
        weight = v.get("rate_weight", 0.0)
        label = f"{r['name']}{f', rate weight {weight:g}' if weight else ''} ({r['measured']} held-out, {r['image']})"
        lines.append(f"| {label} | **vqgpt** | **{v['bytes']:.1f}** | "
                     f"{v['bytes'] * 8 / px:.3f} | {v['psnr']:.2f} | {v['ssim']:.3f} | 1 | {v['encode_images_per_s']:.0f} | "
                     f"{v['decode_images_per_s']:.0f} |")
        for cname, row in point["matched"].items():
            flag = f" ({row['unreached']} at their best, below vqgpt's PSNR)" if row["unreached"] else ""
            lines.append(f"| | {cname} at matched PSNR{flag} | {row['bytes']:.1f} | {row['bytes'] * 8 / px:.3f} | "
                         f"{row['psnr']:.2f} | {row['ssim']:.3f} | {row['bytes'] / v['bytes']:.1f}× | "
                         f"{row['encode_images_per_s']:.0f} | {row['decode_images_per_s']:.0f} |")
        lines.append(f"| | best of them, per image | {point['best_of_codecs_bytes']:.1f} | "
                     f"{point['best_of_codecs_bytes'] * 8 / px:.3f} | | | **{point['ratio_vs_best']:.1f}×** | | |")
        for cname, size in r["lossless"].items():
            lines.append(f"| | {cname} (lossless) | {size:.1f} | {size * 8 / px:.3f} | ∞ | 1 | {size / v['bytes']:.1f}× | | |")
    return "\n".join(lines)


CODEC_COLOURS = {"JPEG": "tab:blue", "WebP": "tab:orange", "AVIF": "tab:green", "JPEG XL": "tab:purple"}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(10, 3.6 * len(results)), squeeze=False)
    for row, r in zip(axes, results):
        px = r["pixels"]
        for ax, metric in zip(row, ("psnr", "ssim")):
            for cname, curve in r["curves"].items():  # no codec in red: red is vqgpt's
                ax.plot([c["bytes"] * 8 / px for c in curve], [c[metric] for c in curve], marker=".", label=cname,
                        color=CODEC_COLOURS.get(cname))
            v = r["vqgpt"]
            ours = sorted((p["vqgpt"] for p in points(r)), key=lambda x: x["bytes"])
            if len(ours) > 1:  # vqgpt's own curve: one point per rate weight
                ax.plot([x["bytes"] * 8 / px for x in ours], [x[metric] for x in ours], "r.-", markersize=7,
                        label="vqgpt, rate weights " + ", ".join(f"{x.get('rate_weight', 0.0):g}" for x in ours))
            ax.plot([v["bytes"] * 8 / px], [v[metric]], "r*", markersize=14,
                    label="vqgpt" if len(ours) == 1 else f"vqgpt, rate weight {v.get('rate_weight', 0.0):g}")
            ax.plot([v["raw_index_bytes"] * 8 / px], [v[metric]], "kx", markersize=9, label="raw code indices")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            if metric == "psnr":  # lossless settings reach the 100 dB cap: keep the lossy range readable
                ax.set_ylim(top=min(60.0, max(c["psnr"] for curve in r["curves"].values() for c in curve) + 2))
            ax.set_xlabel("bits per pixel (log)")
            ax.set_ylabel(metric.upper())
            ax.set_title(f"{r['name']}: {r['image']}, {r['measured']} held-out images")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_table_and_plot(results: list[dict], machine_line: str, out: Path) -> None:
    """OUT/codec_bench.md (the table under the machine line) and OUT/codec_bench.png; prints the table."""
    out.mkdir(parents=True, exist_ok=True)
    text = table(results)
    (out / "codec_bench.md").write_text(f"Machine: {machine_line}\n\n{text}\n")
    plot(results, out / "codec_bench.png")
    print(f"machine: {machine_line}\n{text}")


def machine() -> str:
    mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {mem:.0f} GiB, "
            f"{'no GPU' if not torch.cuda.is_available() else torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
            f"Pillow {Image.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", metavar="NAME=RUN", help="a set name and its run folder")
    parser.add_argument("--held-out", action="append", default=[], metavar="NAME=SRC",
                        help="measure set NAME on every image of SRC (any --data source its run never trained on) "
                             "instead of its token dataset's held-out split")
    parser.add_argument("--replot", metavar="JSON", help="only redraw the table and plot of an earlier codec_bench.json")
    parser.add_argument("--num", type=int, default=200, help="held-out images per set, evenly spread over them (default: 200)")
    parser.add_argument("--out", default="codec-bench", help="folder for the JSON, table and plot")
    parser.add_argument("--vgg-weights", help="torchvision vgg16 weights: LPIPS too")
    parser.add_argument("--rate-weights", type=float, nargs="+", default=[0.0], metavar="λ",
                        help="vqgpt's points: `vqgpt compress --rate-weight` values, each measured against the codecs "
                             "at its own PSNR (default: 0, the tokenizer's own codes)")
    args = parser.parse_args()
    if any(not (math.isfinite(w) and w >= 0) for w in args.rate_weights):
        parser.error("--rate-weights must be numbers ≥ 0")
    if not _jxl():
        print("note: pillow-jxl-plugin is not installed (pip install 'vqgpt[bench]'): JPEG XL is left out")
    out = Path(args.out)
    if args.replot:  # the machine is the one the figures were measured on, recorded in the JSON
        recorded = json.loads(Path(args.replot).read_text())
        write_table_and_plot(recorded["sets"], recorded["machine"], out)
        print(f"written: {out / 'codec_bench.md'}, {out / 'codec_bench.png'}")
        return
    if not args.set:
        parser.error("give at least one --set NAME=RUN (or --replot JSON)")
    others = dict(item.partition("=")[::2] for item in args.held_out)
    unknown = set(others) - {item.partition("=")[0] for item in args.set}
    if unknown:
        parser.error(f"--held-out names set {sorted(unknown)[0]!r}, which no --set gives")
    results = []
    for item in args.set:
        name, _, run = item.partition("=")
        if not run or not Path(run, "tokens").is_dir():
            parser.error(f"--set {item!r}: expected NAME=RUN with RUN/tokens, RUN/tokenizer and RUN/prior")
        print(f"{name}: measuring {run} …", flush=True)
        results.append(bench_set(name, Path(run), args.num, args.vgg_weights, others.get(name), tuple(args.rate_weights)))
    here = machine()
    write_table_and_plot(results, here, out)
    (out / "codec_bench.json").write_text(json.dumps({"machine": here, "sets": results}, indent=2) + "\n")
    for r, v in ((r, point["vqgpt"]) for r in results for point in points(r)):
        weight = f" (rate weight {v['rate_weight']:g}: {v['changed_codes']:.1%} of codes not the nearest)" if v.get("rate_weight") else ""
        print(f"{r['name']}{weight}: {v['exact']}/{r['measured']} decoded bit-exact; {v['bits_per_code']:.3f} bits per code coded "
              f"({v['model_bits_per_code']:.3f} by the model), {v['saving_vs_raw_indices']:.1%} below raw indices "
              f"({v['raw_index_bytes']:.1f} bytes); header and table {v['header_bytes']} bytes per archive; "
              f"the source names (`vqgpt compress` stores them) add {v['names_bytes']:.1f} bytes per image")
    print(f"written: {out / 'codec_bench.md'}, {out / 'codec_bench.png'}, {out / 'codec_bench.json'}")


if __name__ == "__main__":
    main()
