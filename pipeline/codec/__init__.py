"""The image codec: images ⇄ one archive file — the tokenizer's codes, range-coded with the prior's
probabilities (``vqgpt compress`` / ``vqgpt decompress``, ``Pipeline.compress`` / ``decompress``).

- ``archive.py``: the file format, byte by byte, and its checks;
- ``codec.py``: images → grids → archive and back;
- ``files.py``: the files the verbs read and write.

Reads images through ``vqgpt.pipeline.data``.
"""

from .archive import Archive, ImageRecord, pack, unpack
from .codec import (
    CodecModels,
    CompressStats,
    Decoded,
    Restored,
    compress_grids,
    compress_images,
    decode_archive,
    decode_pixels,
    pixel_decoder,
)
from .files import compress_source, decompress_to_folder, output_names

__all__ = ["Archive", "ImageRecord", "pack", "unpack", "CodecModels", "CompressStats", "Decoded", "Restored", "compress_grids",
           "compress_images", "compress_source", "decode_archive", "decode_pixels", "decompress_to_folder", "output_names",
           "pixel_decoder"]
