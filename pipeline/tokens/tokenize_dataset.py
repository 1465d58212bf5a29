"""Turn a data source into a token dataset: every image → its tokenizer code grid.

``tokenize_dataset(tokenizer, data, out_dir)`` reads images from any data source, encodes them
with the VQGAN and writes a token dataset in the format ``vqgpt.prior.data`` owns. Each row's
``source`` is the image's relative path / ``index:N``, plus ``#flip`` / ``#cropN`` for augmented
rows; the metadata records the split's seed and fraction so "held-out" can be recomputed exactly.

How it runs:

- Streaming. A DataLoader reads the images (``batch_size``, ``num_workers`` processes decoding
  while the model encodes, ``encode.py``), the model encodes under ``torch.inference_mode``
  (bf16 autocast on CUDA), and every ``shard_size`` source images are written to
  ``out_dir/.partial/`` as an Arrow file as soon as they are done; the final dataset is
  assembled from the memory-mapped shards. Memory does not grow with the size of the data set.
  WebDataset tar shards are read as a stream, each tar once, front to back: there the rows of one
  input tar make one shard per split (``shard_size`` does not apply); a hub dataset read with
  ``streaming`` likewise, one data file at a time (``hub_stream.py``).
- Resumable. ``.partial/manifest.json`` records the settings, the tokenizer fingerprint
  and a digest of the source list (for tar shards: every sample's shard, member and size); the same command after an interruption skips the
  finished shards. Any difference is a ValueError asking for ``overwrite``. Crops are
  seeded by (seed, split, image index), never by a running RNG, so a resumed run writes
  exactly what an uninterrupted one would have.
- Multi-process. Under ``accelerate launch`` shard ``g`` (numbered over train then
  validation; for tar shards, the number of the input tar) is encoded by process
  ``g % world_size``, so each process reads its own tars; after a barrier the main
  process assembles one dataset, identical to a single-process run.
- Safe output. A finished dataset is replaced only with ``overwrite`` and only as a whole (a
  sibling folder swapped in); one run at a time writes an output folder (a lock beside it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from vqgpt.prior.data import (
    SPLITS,
    code_counts,
    is_token_dataset,
    save_token_dataset,
    token_features,
    token_meta,
)
from vqgpt.tokenizer import VQGAN, codebook_stats

from vqgpt.atomic import exclusive, write_json

from ..data import ImageSource, TarShardSource, canonical_spec, load_splits, open_hub_stream, wants_stream
from ..settings import TokenizeConfig
from .encode import WorkerEncoder, encode_shards, indexed_batches, streamed_batches
from .hub_stream import classes_seen, hub_batches, plan_stream_shards
from .shards import Shard, open_shards, plan_shards, plan_tar_shards, shard_done, shard_failures, shard_images

logger = logging.getLogger(__name__)

__all__ = ["tokenize_dataset", "load_tokenizer", "code_summary", "default_workers"]

PARTIAL_NAME = ".partial"
MANIFEST_NAME = "manifest.json"


# --------------------------------------------------------------------------- helpers


def load_tokenizer(tokenizer: "str | os.PathLike | VQGAN", device: torch.device) -> VQGAN:
    """A tokenizer folder or a loaded VQGAN → the VQGAN on ``device``, in eval mode."""
    if isinstance(tokenizer, (str, os.PathLike)):
        return VQGAN.from_pretrained(tokenizer, device=device)
    if not isinstance(tokenizer, VQGAN):
        raise ValueError(f"expected a tokenizer folder or a vqgpt.tokenizer.VQGAN, got {type(tokenizer).__name__}")
    return tokenizer.to(device).eval()


def _digest(source: ImageSource) -> str:
    h = hashlib.sha256()
    for i in range(len(source)):
        h.update(source.identity_of(i).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def default_workers(images: int, device: torch.device) -> int:
    """DataLoader workers when ``num_workers`` is not set: none for a small job (starting a process
    costs more than it saves). On a GPU one per core but one, at most four, decoding while this
    process encodes. On the CPU one per intra-op thread this process was given
    (``torch.get_num_threads()``, e.g. ``OMP_NUM_THREADS``), at most four, each decoding and encoding
    on one core (``encode.WorkerEncoder``); with a single thread, one worker that only decodes."""
    if images < 1024:
        return 0
    if device.type == "cpu":
        return max(1, min(4, torch.get_num_threads()))
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def code_summary(counts: np.ndarray, top: int = 5) -> dict[str, Any]:
    """Codes used, usage, perplexity and the most common codes of a code histogram int[K]."""
    total = int(counts.sum())
    used = int((counts > 0).sum())
    _, perplexity = codebook_stats(torch.from_numpy(counts))
    order = np.argsort(-counts, kind="stable")[:top]
    common = ", ".join(f"{int(c)} ({100 * counts[c] / max(total, 1):.1f}%)" for c in order if counts[c])
    return {"codes_used": used, "code_usage": used / len(counts), "perplexity": perplexity,
            "most_common_codes": common}


@contextmanager
def _datasets_bars(enabled: bool) -> Iterator[None]:
    """Silence ``datasets``' own progress bars for the duration (restored afterwards)."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    if not enabled and not was_disabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            datasets.enable_progress_bars()


def _format_failures(failed: list[tuple[str, str]], limit: int = 20) -> list[str]:
    return [f"{s} ({r})" for s, r in failed[:limit]]


# --------------------------------------------------------------------------- main entry


def tokenize_dataset(
    tokenizer: "str | os.PathLike | VQGAN",
    data: str,
    out_dir: str | os.PathLike,
    config: TokenizeConfig | None = None,
    *,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    on_shard: Callable[[str, int], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Encode every image of ``data`` and save a token dataset in ``out_dir``.

    Args:
        tokenizer: a tokenizer folder (``VQGAN.from_pretrained``) or a loaded ``VQGAN``
            (moved to ``device``). Its ``image_size`` and ``channels`` decide how images
            are read.
        data: any data source (``vqgpt.pipeline.data.load_images``).
        out_dir: the output folder. An unfinished run there (``.partial/``) is resumed. With
            ``overwrite`` a finished dataset there stays intact until the new one replaces it.
        config: a ``TokenizeConfig``; keyword ``overrides`` replace its fields
            (``batch_size=32, flip=True, crops=4, data_seed=1, ...``).
        overwrite: replace a finished token dataset / restart an unfinished one.
        device: where to encode; default ``accelerate.PartialState().device``.
        progress: show a tqdm bar (main process only).
        on_shard: called as ``on_shard(split, shard_index)`` after each shard is on disk.

    Returns:
        A summary: rows per split, images encoded, files skipped (with reasons), codes
        used out of K, perplexity, seconds, images/s.

    Raises:
        FileExistsError: ``out_dir`` holds a finished dataset (and not ``overwrite``) or
            something that is not a token dataset.
        ValueError: bad settings, unusable data, or an unfinished run with different
            settings / tokenizer (pass ``overwrite=True`` to start over).
        FileNotFoundError: the tokenizer or data folder does not exist.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # ACCELERATE_USE_CPU=1 (as for the trainers, whose Accelerator reads it) makes a launched CPU
    # job one gloo group; a bare PartialState() would leave every process believing it is alone.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    out = Path(out_dir).expanduser()
    with exclusive(out, "tokenize run") if state.is_main_process else nullcontext():
        return _tokenize(tokenizer, data, out, config, state, overwrite=overwrite, device=device, progress=progress,
                         on_shard=on_shard, **overrides)


def _tokenize(tokenizer: "str | os.PathLike | VQGAN", data: str, out: Path, config: TokenizeConfig | None, state: Any,
              *, overwrite: bool, device: str | torch.device | None, progress: bool,
              on_shard: Callable[[str, int], None] | None, **overrides: Any) -> dict[str, Any]:
    config = config or TokenizeConfig()
    if overrides:
        known = {f.name for f in dataclasses.fields(TokenizeConfig)}
        renamed = {k: TokenizeConfig.renamed[k] for k in overrides if k in TokenizeConfig.renamed}
        if renamed:
            raise ValueError("tokenize setting(s) renamed: " + ", ".join(f"{k} → {v}" for k, v in renamed.items()))
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown tokenize setting(s): {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        config = dataclasses.replace(config, **overrides)
    started = time.monotonic()
    device = torch.device(device) if device is not None else state.device
    # Shards go inside the output folder while it holds nothing finished; when it holds a finished
    # dataset (being overwritten) they go beside it, so the old dataset stays whole until the new
    # one is swapped in.
    partial = out.parent / f".{out.name}{PARTIAL_NAME}" if is_token_dataset(out) else out / PARTIAL_NAME

    # -- the output folder --------------------------------------------------------------------
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is a file; choose another output folder")
    if is_token_dataset(out) and not overwrite:
        raise FileExistsError(f"{out} already holds a token dataset; pass `overwrite` to replace it")
    foreign = out.is_dir() and not is_token_dataset(out) and any(
        p.name != PARTIAL_NAME for p in out.iterdir())
    if foreign:
        raise FileExistsError(f"{out} exists and is not a token dataset; choose another output folder")

    # -- tokenizer and data -------------------------------------------------------------------
    model = load_tokenizer(tokenizer, device)
    mcfg = model.config
    fingerprint = model.fingerprint()
    grid = tuple(int(g) for g in mcfg.grid_size)
    K = int(mcfg.codebook_size)
    # No up-front decode check: every image is decoded once, when it is encoded, and one that
    # cannot be decoded is counted and reported there (the split does not depend on it).
    hub = open_hub_stream(str(data).strip(), mcfg.image_size, mcfg.channels, config.data_seed,
                          config.val_fraction) if wants_stream(data, config.streaming) else None
    if hub is not None:
        sources: dict[str, Any] = {}
        skipped, left_out = [], []
        known = hub.num_examples.get(next(iter(hub.parts)))
        sizes = {"train": round(known * (1 - (hub.val_fraction or 0))) if known else None}
    else:
        sources = load_splits(data, mcfg.image_size, mcfg.channels, SPLITS, seed=config.data_seed,
                              val_fraction=config.val_fraction, crops_per_photo=config.crops_per_photo, check=False)
        skipped = [fs for s in sources.values() for fs in s.skipped]
        left_out = sources["train"].left_out  # the same folder scan for both splits
        sizes = {split: len(s) for split, s in sources.items()}
    streamed = bool(sources) and all(isinstance(s, TarShardSource) for s in sources.values())
    if config.crops is None:  # not set: as many crops as a data set of this size needs
        from ..derived import tokenize_defaults

        if sizes["train"] is None:
            crops, why = 0, ("no augmented copies: a streamed data set's size is not known before its end "
                             "(change: --crops N)")
        else:
            crops, why = tokenize_defaults(sizes["train"])
        config = dataclasses.replace(config, crops=crops)
        if state.is_main_process:
            logger.info("derived from the data: %s", why)
    features = token_features(grid, K)

    manifest = {
        "format": "vqgpt-tokens-partial",
        "version": 1,
        "tokenizer_fingerprint": fingerprint,
        "data": str(data),
        "image_size": mcfg.image_size,
        "channels": mcfg.channels,
        "settings": {k: getattr(config, k) for k in ("shard_size", "flip", "crops", "crop_resize",
                                                     "augment_validation", "data_seed", "val_fraction",
                                                     "crops_per_photo")},
        "sources": ({"stream": hub.fingerprint()} if hub is not None else
                    {split: {"images": sizes[split], "digest": _digest(s)} for split, s in sources.items()}),
    }

    # -- the partial folder (main process decides, everyone waits) ---------------------------
    if state.is_main_process:
        if overwrite:  # restart an unfinished run; a finished dataset is only replaced at the swap
            shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    manifest_path = partial / MANIFEST_NAME
    if manifest_path.is_file():
        _check_manifest(json.loads(manifest_path.read_text()), manifest, out)
    state.wait_for_everyone()
    if state.is_main_process and not manifest_path.is_file():
        write_json(manifest_path, manifest)

    # -- encode this process's pending shards --------------------------------------------------
    if hub is not None:
        shards = plan_stream_shards(hub)
    else:
        shards = plan_tar_shards(sources) if streamed else plan_shards(sizes, config.shard_size)  # type: ignore[arg-type]
    done_before = [s for s in shards if shard_done(partial, s)]
    mine = [s for s in shards if s.number % state.num_processes == state.process_index
            and not shard_done(partial, s)]
    if done_before:
        logger.info("resuming %s: %d of %d shards already done", out, len(done_before), len(shards))
    if mine:
        rows_per_image = max(len(config.variants(s)) for s in SPLITS)
        images_per_batch = max(1, config.batch_size // rows_per_image)
        pending: int | None = sum(s.stop - s.start for s in mine)
        if hub is not None:  # the hub's own count, when it states one and this process reads everything
            counts = list(hub.num_examples.values())
            pending = sum(counts) if all(counts) and len(mine) == len(shards) else None  # type: ignore[arg-type]
        workers = config.num_workers if config.num_workers is not None else default_workers(pending or 10**9, device)
        if streamed or hub is not None:  # a tar / data file is read by one worker: no more workers than them
            workers = min(workers, len({s.index for s in mine}))
        # on the CPU, two or more workers encode too, one core each (encode.py says why)
        finish = WorkerEncoder(model) if device.type == "cpu" and workers >= 2 else None
        if hub is not None:
            batches = hub_batches(hub, config, mine, images_per_batch, workers, device.type == "cuda", finish)
        else:
            read = streamed_batches if streamed else indexed_batches
            batches = read(sources, config, mine, images_per_batch, workers, device.type == "cuda",  # type: ignore[arg-type]
                           finish)
        encode_shards(model, batches, pending, partial, features, device,
                      progress and state.is_local_main_process, on_shard)
    state.wait_for_everyone()
    finished = all(shard_done(partial, s) for s in shards)
    total = shard_images(partial, shards) if finished else 0
    failed = shard_failures(partial, shards) if finished else []
    if total and len(failed) == total:  # nothing readable: an error, not an empty dataset
        state.wait_for_everyone()
        if state.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        first, reason = failed[0]
        raise ValueError(f"none of the {total} images of {data} could be read (e.g. {first}: {reason}); "
                         "no token dataset was written")
    if hub is not None and finished and not shard_images(partial, [s for s in shards if s.split == "validation"]):
        raise ValueError(f"the validation split of {data} got no images ({total} in all, val_fraction="
                         f"{hub.val_fraction}) (raise val_fraction)")  # as load_images says for other sources

    # -- assemble (main process) ---------------------------------------------------------------
    if hub is not None:
        class_names = hub.class_names if hub.class_names is not None else classes_seen(partial, shards)
        split_fraction = hub.val_fraction
    else:
        class_names, split_fraction = sources["train"].class_names, sources["train"].split_fraction
    meta = token_meta(tokenizer_fingerprint=fingerprint, grid=grid, codebook_size=K,
                      class_names=class_names, image_size=mcfg.image_size,
                      channels=mcfg.channels, augmentations=config.augmentations(), data=canonical_spec(data),
                      split_seed=config.data_seed, val_fraction=split_fraction)
    summary: dict[str, Any] = {}
    if state.is_main_process:
        with _datasets_bars(progress):
            summary = _assemble(out, partial, shards, features, meta, K)
        shutil.rmtree(partial, ignore_errors=True)  # beside the dataset (inside, it went with the swap)
    state.wait_for_everyone()
    if not state.is_main_process:
        summary = _summary_from_disk(out, partial, shards, K) if is_token_dataset(out) else {}
    seconds = time.monotonic() - started
    encoded = total - len(failed)
    summary.update({
        "images": encoded,
        "skipped": len(skipped) + len(failed),
        "skipped_files": _format_failures(skipped + failed),
        "left_out": len(left_out),
        "left_out_files": _format_failures(left_out),
        "resumed_shards": len(done_before),
        "seconds": round(seconds, 2),
        "images_per_s": round(encoded / seconds, 1) if seconds > 0 else 0.0,
    })
    if state.is_main_process:
        logger.info("tokenized %s → %s: %d train / %d validation rows, %d skipped, %d/%d codes "
                    "used, %.1fs", data, out, summary.get("train_rows", 0),
                    summary.get("validation_rows", 0), summary["skipped"],
                    summary.get("codes_used", 0), K, seconds)
        for src in sources.values():
            if src.skipped or src.left_out:
                logger.warning(src.skip_report())
    return summary


def _check_manifest(found: dict[str, Any], expected: dict[str, Any], out: Path) -> None:
    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        items: dict[str, Any] = {}
        for k, v in d.items():
            items.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return items

    a, b = flat(found), flat(expected)
    diffs = [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diffs:
        what = "a different tokenizer" if "tokenizer_fingerprint" in " ".join(diffs) else "different settings"
        raise ValueError(f"{out} holds an unfinished run with {what} ({'; '.join(diffs[:3])}); "
                         "pass `overwrite` to start over")


def _assemble(out: Path, partial: Path, shards: list[Shard], features: Any,
              meta: dict[str, Any], K: int) -> dict[str, Any]:
    """Concatenate the memory-mapped shards and save them as the token dataset (prior's
    writer: a temporary sibling folder swapped into place)."""
    import datasets

    missing = [s.stem for s in shards if not shard_done(partial, s)]
    if missing:
        raise RuntimeError(f"shards {missing[:3]} of {out} were not written; rerun to finish")
    parts: dict[str, Any] = {}
    for split in SPLITS:
        pieces = open_shards(partial, shards, split)
        parts[split] = (datasets.concatenate_datasets(pieces) if pieces else
                        datasets.Dataset.from_dict({"codes": [], "label": [], "source": []}, features=features))
    counts = code_counts(list(parts.values()), K)
    summary = {f"{split}_rows": len(ds) for split, ds in parts.items()}
    summary.update({"codebook_size": K, **code_summary(counts)})
    save_token_dataset(parts, meta, out)
    return summary


def _summary_from_disk(out: Path, partial: Path, shards: list[Shard], K: int) -> dict[str, Any]:
    """Non-main processes: the same summary, read from the assembled dataset."""
    import datasets

    dd = datasets.load_from_disk(str(out))
    counts = code_counts([dd[s] for s in SPLITS], K)
    return {**{f"{s}_rows": len(dd[s]) for s in SPLITS}, "codebook_size": K, **code_summary(counts)}
