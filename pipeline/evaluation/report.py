"""The report of ``vqgpt evaluate``: its JSON schema, its protocol line and its table.

``evaluate --json`` prints the report as one JSON object (schema ``vqgpt-evaluate/1``)::

    {"schema": "vqgpt-evaluate/1",
     "machine": {"platform", "processor", "cpu_count", "python", "torch", "vqgpt", "device", "gpu"},
     "fid": {"evaluator", "network", "feature", "weights", "weights_sha256", "resize", "absent"},
     "tokenizer": {"path", "fingerprint", "psnr", "ssim", "lpips", "lpips_absent", "codebook_usage",
                   "perplexity", "num_images", "rfid", "rfid_absent", "pixel_fd", "pixel_fd_absent",
                   "reference", "protocol"},
     "prior": {"path", "tokens", "validation_bits_per_code", "train_bits_per_code", "num_samples", "seed",
               "sampling", "sample_codebook_usage", "sample_perplexity", "gfid", "gfid_absent",
               "pixel_fd", "pixel_fd_absent", "reference", "protocol",
               "per_class": [{"class", "validation_bits_per_code", "held_out_rows", "samples", "pixel_fd"}]},
     "digits": {...}}

A figure that could not be computed is ``null`` and its ``<name>_absent`` field says why in one
line (``fid.absent`` for every FID). ``reference`` = {"data", "split", "seed", "val_fraction",
"num_images", "statistics" (the cached .npz or null), "reused"}. Sections that were not asked
for (or could not run) are left out. Two FIDs are comparable only when their ``protocol`` lines
are identical.
"""

from __future__ import annotations

import os
import platform
from typing import Any

__all__ = ["SCHEMA", "machine_info", "protocol_line", "format_report"]

SCHEMA = "vqgpt-evaluate/1"

# section keys the table shows as rows, with their units; anything else is described separately
_UNITS = {"psnr": "dB", "codebook_usage": "%", "sample_codebook_usage": "%"}
_NOT_ROWS = {"path", "tokens", "fingerprint", "reference", "protocol", "per_class", "sampling", "seed"}


def machine_info(device: str) -> dict[str, Any]:
    """Where the figures were measured."""
    import torch

    from vqgpt import __version__

    gpu = torch.cuda.get_device_name(torch.device(device)) if torch.device(device).type == "cuda" else None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "vqgpt": __version__, "device": device, "gpu": gpu}


def protocol_line(inception: Any, absent: str | None, reference: dict, produced: str, config: Any) -> str:
    """One line naming everything two FIDs must share to be compared: evaluator and version,
    network and weights hash, image path and resize, the reference split and both image counts."""
    images = f"images {config.channels}×{config.image_size}×{config.image_size} → uint8"
    if inception is not None:
        d = inception.describe()
        head = (f"FID protocol: {d['evaluator']} {d['network']} pool {d['feature']}-d, weights {inception.weights.name} "
                f"sha256 {d['weights_sha256'][:12]}; {images}{' → RGB' if config.channels == 1 else ''}"
                " → 299×299 TF1-compatible bilinear")
    else:  # the reason is the FID row's; pixel FD still follows this image path
        head = f"FID protocol: none (FID absent: {absent.split(':')[0] if absent else 'no Inception features'}); {images}"
    fraction = reference.get("val_fraction")
    split = f"{reference['split']} split" + (f" (seed {reference['seed']}, val_fraction {fraction})" if fraction else "")
    return f"{head}; real: {reference['data']} {split}, {reference['num_images']} images; vs {produced}"


def _value(section: dict, key: str) -> str:
    value = section[key]
    if value is None:
        return f"absent: {section.get(f'{key}_absent') or 'not computed'}"
    if isinstance(value, float):
        text = f"{value:.4g}" if abs(value) < 1e4 else f"{value:.1f}"
    else:
        text = str(value)
    unit = _UNITS.get(key)
    return f"{text} {unit}" if unit else text


def _rows(section: dict) -> list[str]:
    keys = [k for k in section if k not in _NOT_ROWS and not k.endswith("_absent")]
    width = max((len(k) for k in keys), default=0)
    return [f"  {k:<{width}}  {_value(section, k)}" for k in keys]


def _per_class(rows: list[dict]) -> list[str]:
    columns = [c for c in ("validation_bits_per_code", "held_out_rows", "samples", "pixel_fd")
               if any(c in r for r in rows)]
    width = max([len("class")] + [len(str(r["class"])) for r in rows])
    out = ["  per class:", "    " + f"{'class':<{width}}  " + "  ".join(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            cells.append(f"{'—' if v is None else (f'{v:.4g}' if isinstance(v, float) else v):>{len(c)}}")
        out.append("    " + f"{str(r['class']):<{width}}  " + "  ".join(cells))
    return out


def format_report(report: dict) -> str:
    """The report as a table for people: the protocol line first, then one block per section."""
    lines: list[str] = []
    for name in ("tokenizer", "prior"):
        section = report.get(name)
        if not section:
            continue
        lines.append(f"{name}: {section['path']}")
        if section.get("protocol"):
            lines.append(f"  {section['protocol']}")
        ref = section.get("reference")
        if ref and ref.get("statistics"):
            lines.append(f"  reference statistics {'reused from' if ref['reused'] else 'computed and cached in'} "
                         f"{ref['statistics']}")
        if section.get("sampling"):
            settings = ", ".join(f"{k} {v}" for k, v in section["sampling"].items() if v is not None)
            lines.append(f"  sampling: {settings}, seed {section['seed']}")
        lines += _rows(section)
        if section.get("per_class"):
            lines += _per_class(section["per_class"])
    if report.get("digits"):
        lines.append("digits (an SVM trained on real digits judges the samples):")
        lines += _rows(report["digits"])
    m = report["machine"]
    lines.append(f"machine: {m['processor']}, {m['cpu_count']} cores, {m['platform']}, torch {m['torch']}, "
                 f"device {m['device']}" + (f" ({m['gpu']})" if m.get("gpu") else ""))
    return "\n".join(lines)
