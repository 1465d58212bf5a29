"""``vqgpt tokenize --inspect DIR``: describe a token dataset, and decode some rows to a PNG."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqgpt.prior.data import code_counts, code_range, read_token_meta
from vqgpt.tokenizer import VQGAN

from .tokenize_dataset import code_summary, load_tokenizer

__all__ = ["describe_tokens"]


def describe_tokens(directory: str | os.PathLike, tokenizer: "str | os.PathLike | VQGAN | None" = None,
                   png: str | os.PathLike | None = None, num_images: int = 16) -> dict[str, Any]:
    """Describe a token dataset: rows per split, grid, codebook, classes, fingerprint,
    code histogram (used codes, perplexity, most common codes). With ``tokenizer`` (whose
    fingerprint must match) and ``png``, also decodes the first ``num_images`` validation
    rows (then train rows) into a PNG grid."""
    import datasets

    path = Path(directory).expanduser()
    meta = read_token_meta(path)
    if png is not None and tokenizer is None:
        raise ValueError("writing a PNG of decoded rows needs the `tokenizer`")
    dd = datasets.load_from_disk(str(path))
    K = int(meta["codebook_size"])
    counts = code_counts([dd[s] for s in dd], K)
    ranges = [code_range(dd[s]) for s in dd if len(dd[s])]
    low, high = min(r[0] for r in ranges) if ranges else 0, max(r[1] for r in ranges) if ranges else -1
    by_label = Counter()
    for s in dd:
        for batch in dd[s].select_columns(["label"]).with_format("numpy").iter(batch_size=65536):
            by_label.update(np.asarray(batch["label"]).tolist())
    names = meta.get("class_names") or []
    report: dict[str, Any] = {
        "dir": str(path),
        **{f"{s}_rows": len(dd[s]) for s in dd},
        "grid": "×".join(str(g) for g in meta["grid"]),
        "codebook_size": K,
        "codes_dtype": dd[next(iter(dd))].features["codes"].dtype,
        "classes": len(names),
        "class_names": ", ".join(names[:20]) + (" …" if len(names) > 20 else ""),
        "rows_without_class": by_label.get(-1, 0),
        "image_size": meta["image_size"],
        "channels": meta["channels"],
        "tokenizer_fingerprint": meta["tokenizer_fingerprint"],
        "augmentations": json.dumps(meta.get("augmentations", {})),
        "data": meta.get("data"),
        **code_summary(counts),
        # codes outside 0..K-1 mean an altered dataset: train-prior and evaluate refuse it
        "codes_in_range": "yes" if 0 <= low and high < K else f"NO: codes span {low}..{high}, the codebook 0..{K - 1}",
    }
    if tokenizer is not None:
        model = load_tokenizer(tokenizer, torch.device("cpu"))
        fingerprint = model.fingerprint()
        if fingerprint != meta["tokenizer_fingerprint"]:
            raise ValueError(f"{path} was made with tokenizer {meta['tokenizer_fingerprint']}, not "
                             f"{fingerprint}; give the tokenizer it was made with")
        if png is not None:
            from torchvision.utils import save_image

            picked = []  # validation rows first, then train rows
            for split in ("validation", "train"):
                take = min(num_images - sum(len(p) for p in picked), len(dd[split]))
                if take > 0:
                    picked.append(np.asarray(dd[split].select(range(take)).with_format("numpy")[:]["codes"]))
            codes = torch.as_tensor(np.concatenate(picked), dtype=torch.long)  # (B, h, w)
            with torch.inference_mode():
                images = model.decode(codes)  # (B, C, H, W) in [-1, 1]
            png = Path(png).expanduser()
            png.parent.mkdir(parents=True, exist_ok=True)
            save_image((images.float() + 1) / 2, str(png), nrow=min(8, len(codes)))
            report["png"] = str(png)
    return report

