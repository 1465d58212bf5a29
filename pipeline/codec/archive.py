"""The archive file of ``vqgpt compress``: what is stored, byte by byte, and how it is checked.

    "VQGA"  version (1 byte)  header length (varint)  header  CRC32 of everything before it (4 bytes)
    stream 0, stream 1, …     (each image's range-coded codes, concatenated)

The header (integers as LEB128 varints):

    tokenizer fingerprint (8 bytes)  prior fingerprint (8 bytes)  grid h, w  codebook size K
    classes C  coder batch size  numerics (length + UTF-8: device type and torch version)
    images N  names (length + zlib of the "\\n"-joined names; length 0: none stored)
    per image: class + 1 (0 = coded with the "no class" token), stream length in bytes, CRC32 of its codes

So the overhead is one header per archive plus, per image, a class byte, one or two length bytes
and the 4-byte CRC beyond the coded bits (and its share of the compressed names). The table of
stream lengths lives in the CRC-checked header: a damaged or truncated stream costs that image
only, never the ones after it; a damaged header refuses the file.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

__all__ = ["MAGIC", "VERSION", "Archive", "ImageRecord", "codes_crc", "pack", "unpack"]

MAGIC = b"VQGA"
VERSION = 1
MAX_NAMES_BYTES = 1 << 30


def codes_crc(codes: np.ndarray) -> int:
    """CRC32 of one grid's codes (raster order, as little-endian int32)."""
    return zlib.crc32(np.ascontiguousarray(codes, dtype="<i4").tobytes())


@dataclass(frozen=True)
class ImageRecord:
    label: int  # class index, -1: coded with the "no class" token
    crc: int  # CRC32 of the codes (`codes_crc`)
    stream: bytes  # the range-coded codes (may be short: the file was truncated)
    complete: bool = True  # False: the file ends inside this image's stream


@dataclass(frozen=True)
class Archive:
    tokenizer: str  # 16 hex chars
    prior: str  # 16 hex chars
    grid: tuple[int, int]
    codebook_size: int
    num_classes: int
    batch_size: int  # the coder's fixed batch shape (part of the streams' definition)
    numerics: str  # "cpu torch 2.14.1": where the probabilities were computed
    images: list[ImageRecord]
    names: list[str] = field(default_factory=list)  # one per image, or none stored
    header_bytes: int = 0  # size of everything before the first stream (filled by `unpack`)


def _varint(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"a varint cannot hold {value}")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _Reader:
    """Reads the header; running out of bytes is a ValueError naming the file as truncated."""

    def __init__(self, data: bytes, where: str):
        self.data, self.pos, self.where = data, 0, where

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"{self.where} is truncated: it ends inside the archive header")
        chunk = self.data[self.pos: self.pos + n]
        self.pos += n
        return chunk

    def varint(self) -> int:
        value = shift = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise ValueError(f"{self.where} is damaged: a header number is too long")


def pack(archive: Archive) -> bytes:
    """The archive as bytes (see the module's doc)."""
    if archive.names and len(archive.names) != len(archive.images):
        raise ValueError(f"{len(archive.names)} names for {len(archive.images)} images")
    names = zlib.compress("\n".join(archive.names).encode(), 9) if archive.names else b""
    numerics = archive.numerics.encode()
    header = bytearray()
    header += bytes.fromhex(archive.tokenizer) + bytes.fromhex(archive.prior)
    for value in (*archive.grid, archive.codebook_size, archive.num_classes, archive.batch_size, len(numerics)):
        header += _varint(value)
    header += numerics + _varint(len(archive.images)) + _varint(len(names)) + names
    for record in archive.images:
        header += _varint(record.label + 1) + _varint(len(record.stream)) + struct.pack("<I", record.crc)
    head = MAGIC + bytes([VERSION]) + _varint(len(header)) + bytes(header)
    return head + struct.pack("<I", zlib.crc32(head)) + b"".join(r.stream for r in archive.images)


def unpack(data: bytes, where: str = "the archive") -> Archive:
    """Parse and check an archive. Not an archive, another version, a damaged or truncated header:
    one-line ValueError. Streams cut short by truncation come back with ``complete=False``."""
    if len(data) < len(MAGIC) + 1 or data[: len(MAGIC)] != MAGIC:
        raise ValueError(f"{where} is not a vqgpt archive (it does not start with {MAGIC.decode()!r})")
    if data[len(MAGIC)] != VERSION:
        raise ValueError(f"{where} is a version {data[len(MAGIC)]} vqgpt archive; this vqgpt reads version {VERSION}")
    reader = _Reader(data, where)
    reader.pos = len(MAGIC) + 1
    length = reader.varint()
    reader.take(length)
    head_end = reader.pos
    (stored,) = struct.unpack("<I", reader.take(4))
    if zlib.crc32(data[:head_end]) != stored:
        raise ValueError(f"{where} is damaged: its header fails its CRC32 check")
    reader.pos = head_end - length
    tokenizer, prior = reader.take(8).hex(), reader.take(8).hex()
    h, w, codebook, classes, batch, numerics_len = (reader.varint() for _ in range(6))
    numerics = reader.take(numerics_len).decode("utf-8", "replace")
    count = reader.varint()
    names_len = reader.varint()
    if names_len > MAX_NAMES_BYTES:
        raise ValueError(f"{where} is damaged: its names block claims {names_len} bytes")
    names_blob = reader.take(names_len)
    table = [(reader.varint() - 1, reader.varint(), struct.unpack("<I", reader.take(4))[0]) for _ in range(count)]
    if reader.pos != head_end:
        raise ValueError(f"{where} is damaged: its header holds {head_end - reader.pos} unexpected bytes")
    names: list[str] = []
    if names_blob:
        try:
            names = zlib.decompress(names_blob).decode("utf-8").split("\n")
        except (zlib.error, UnicodeDecodeError):
            raise ValueError(f"{where} is damaged: its image names cannot be read") from None
        if len(names) != count:
            raise ValueError(f"{where} is damaged: {len(names)} names for {count} images")
    images, pos = [], head_end + 4
    for label, size, crc in table:
        stream = data[pos: pos + size]
        images.append(ImageRecord(label, crc, stream, complete=len(stream) == size))
        pos += size
    return Archive(tokenizer, prior, (h, w), codebook, classes, batch, numerics, images, names, head_end + 4)
