"""Data sources: images in, ``ImageSource`` datasets out (the ``--data`` of every verb).

    from vqgpt.pipeline.data import load_images, held_out_split
    train = load_images("digits", image_size=32, channels=1, split="train")

- ``load.py``: the entry point — ``load_images`` picks the source, ``held_out_split`` decides which
  images an evaluation scores;
- ``source.py``: ``ImageSource`` (what every source is) and the seeded train/validation split;
- ``folder.py``, ``tars.py``, ``hf.py``, ``bundled.py``: image folders, WebDataset tar shards,
  ``datasets`` folders and hub datasets, the bundled ``digits`` and ``photos``;
- ``stream.py``: a hub dataset read as a stream (``tokenize --streaming``), never downloaded whole;
- ``images.py``: how an image is read and converted wherever it enters or leaves (PIL ⇄ tensors);
- ``png.py``: plain PNGs decoded by libspng, the pixels Pillow gives, faster.

Imports nothing else of the pipeline.
"""

from .images import fit_image, from_pil, load_image_file, read_pixels_many, to_model, to_pil, to_uint8
from .load import BUNDLED, HeldOut, canonical_spec, held_out_split, load_images, load_splits
from .source import SPLITS, ImageSource, split_indices
from .stream import HubStream, hub_download_bytes, open_hub_stream, wants_stream
from .tars import TarShardSource, read_images

__all__ = ["BUNDLED", "SPLITS", "HeldOut", "HubStream", "ImageSource", "hub_download_bytes", "open_hub_stream", "wants_stream", "TarShardSource", "canonical_spec", "held_out_split",
           "load_images", "load_splits", "split_indices", "read_images", "fit_image", "from_pil", "load_image_file",
           "read_pixels_many", "to_model", "to_pil", "to_uint8"]
