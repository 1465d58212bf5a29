"""The archive file of ``vqgpt compress``: what is stored, byte by byte, and how it is checked.

    "VQGA"  version (1 byte)  header length (varint)  header  CRC32 of everything before it (4 bytes)
    stream 0, stream 1, …     (each image's range-coded codes, concatenated)

The header (integers as LEB128 varints):

    tokenizer fingerprint (8 bytes)  prior fingerprint (8 bytes)  grid h, w  codebook size K
    classes C  coder batch size  numerics (length + UTF-8: `entropy_coding.numerics`)
    images N  names (length + zlib of the "\\n"-joined names; length 0: none stored)
    the table of classes and stream lengths (versions 2 and 3, below)
    per image: the CRC32 of its codes (4 bytes)

The table (versions 2 and 3) is itself range-coded (constriction), with models that need no floating-point
function beyond division, so every platform reads it alike:

    class mode: 0, then class + 1 (every image has that class; 0 = the "no class" token),
                or 1: each image's class + 1 uniform over 0 … C
    lengths: the shortest L0, bucket width W, buckets B (at most 64), then B counts; each image's
             length is its bucket (categorical with those counts, not coded when B = 1) and its
             offset in the bucket (uniform over W, not coded when W = 1)
    the coded table: its length, then its bytes (the shortest that still decode, as the streams)

So the overhead is one header per archive plus, per image, the 4-byte CRC and about a byte of table
(on the 156 held-out letters: log2 27 = 4.75 bits of class, about 3.5 bits of length) beyond the
coded bits (and its share of the compressed names). Version 1 stored a class byte and a one- or
two-byte length per image instead; it is still read. The table lives in the CRC-checked header: a
damaged or truncated stream costs that image only, never the ones after it; a damaged header
refuses the file.

Version 3 has version 2's layout; its streams are coded portably (`GridCoder(portable=True)`: the
prior in float64, its logits rounded to 1/64 nat and turned into probabilities through an integer
table), so they decode alike on every CPU and GPU. Versions 1 and 2 were coded from float32 logits:
exact only where the prior computes like the machine that wrote them (`numerics` says which).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from vqgpt.prior.entropy_coding import load_constriction, shortest_stream, stream_bytes, stream_words

__all__ = ["MAGIC", "VERSION", "Archive", "ImageRecord", "codes_crc", "pack", "unpack"]

MAGIC = b"VQGA"
VERSION = 3
READABLE = (1, 2, 3)
WRITABLE = (2, 3)  # the same layout; version 3 streams are coded portably
MAX_BUCKETS = 64  # stream-length buckets of the table's model
MAX_NAMES_BYTES = 1 << 30


def codes_crc(codes: np.ndarray) -> int:
    """CRC32 of one grid's codes (raster order, as little-endian int32)."""
    return zlib.crc32(np.ascontiguousarray(codes, dtype="<i4").tobytes())


@dataclass(frozen=True, slots=True)  # slots: compress keeps one per image until it writes the file
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
    numerics: str  # "cpu torch 2.14.1 x86_64 AVX512 GenuineIntel": where the probabilities were computed
    images: list[ImageRecord]
    names: list[str] = field(default_factory=list)  # one per image, or none stored
    header_bytes: int = 0  # size of everything before the first stream (filled by `unpack`)
    version: int = VERSION  # 3: portable coding (float64 prior, logits in steps); 2, 1: float32, machine-bound

    @property
    def portable(self) -> bool:
        """Its streams were coded with `GridCoder(portable=True)`: they decode alike on any machine."""
        return self.version >= 3


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


def _length_model(lengths: list[int]) -> tuple[int, int, list[int]]:
    """(shortest length, bucket width, count per bucket): at most ``MAX_BUCKETS`` buckets."""
    lo, hi = min(lengths), max(lengths)
    width = -(-(hi - lo + 1) // MAX_BUCKETS)
    counts = [0] * ((hi - lo) // width + 1)
    for n in lengths:
        counts[(n - lo) // width] += 1
    return lo, width, counts


def _table_models(counts: list[int], width: int, num_classes: int, uniform_classes: bool) -> list[tuple[str, object]]:
    """The table's symbol groups in coding order, each with its constriction model (groups whose
    symbol is known without coding are left out). Integer counts divided once: no platform's libm."""
    model = load_constriction().stream.model
    models: list[tuple[str, object]] = []
    if uniform_classes:
        models.append(("class", model.Uniform(num_classes + 1)))
    if len(counts) > 1:
        probs = np.asarray(counts, dtype=np.float64) / float(sum(counts))
        models.append(("bucket", model.Categorical(probs, perfect=False)))
    if width > 1:
        models.append(("offset", model.Uniform(width)))
    return models


def _pack_table(labels: list[int], lengths: list[int], num_classes: int) -> bytes:
    """The classes and stream lengths of the images, range-coded (see the module's doc)."""
    if not labels:
        return b""
    if not all(-1 <= label < num_classes for label in labels):
        raise ValueError(f"class indices must lie in -1 … {num_classes - 1}")
    uniform = len(set(labels)) > 1
    out = bytearray(_varint(1) if uniform else _varint(0) + _varint(labels[0] + 1))
    lo, width, counts = _length_model(lengths)
    out += _varint(lo) + _varint(width) + _varint(len(counts)) + b"".join(_varint(c) for c in counts)
    symbols = {"class": np.asarray(labels, dtype=np.int32) + 1,
               "bucket": (np.asarray(lengths, dtype=np.int32) - lo) // width,
               "offset": (np.asarray(lengths, dtype=np.int32) - lo) % width}
    models = _table_models(counts, width, num_classes, uniform)
    queue = load_constriction().stream.queue
    encoder = queue.RangeEncoder()
    for name, m in models:
        encoder.encode(symbols[name], m)

    def decodes(candidate: bytes) -> bool:
        decoder = queue.RangeDecoder(stream_words(candidate))
        return all(np.array_equal(decoder.decode(m, len(labels)), symbols[name]) for name, m in models)

    coded = shortest_stream(stream_bytes(encoder.get_compressed()), decodes) if models else b""
    return bytes(out) + _varint(len(coded)) + coded


def _unpack_table(reader: "_Reader", count: int, num_classes: int) -> tuple[list[int], list[int]]:
    """``_pack_table`` read back: (class per image, -1 = none; stream length per image)."""
    if not count:
        return [], []
    where = reader.where
    mode = reader.varint()
    if mode not in (0, 1):
        raise ValueError(f"{where} is damaged: its table has class mode {mode}")
    label = reader.varint() - 1 if mode == 0 else None
    lo, width, buckets = reader.varint(), reader.varint(), reader.varint()
    if not 1 <= buckets <= MAX_BUCKETS or width < 1:
        raise ValueError(f"{where} is damaged: its table claims {buckets} length buckets of width {width}")
    counts = [reader.varint() for _ in range(buckets)]
    coded = reader.take(reader.varint())
    if (mode == 1 and num_classes < 1) or sum(counts) != count:
        raise ValueError(f"{where} is damaged: its table does not match its {count} images")
    symbols = {"class": np.full(count, 0 if label is None else label + 1), "bucket": np.zeros(count, dtype=np.int64),
               "offset": np.zeros(count, dtype=np.int64)}
    decoder = load_constriction().stream.queue.RangeDecoder(stream_words(coded))
    try:
        for name, m in _table_models(counts, width, num_classes, mode == 1):
            symbols[name] = np.asarray(decoder.decode(m, count), dtype=np.int64)
    except (ValueError, RuntimeError, AssertionError, OverflowError):
        raise ValueError(f"{where} is damaged: its table of classes and lengths cannot be decoded") from None
    lengths = lo + symbols["bucket"] * width + symbols["offset"]
    return (symbols["class"] - 1).tolist(), lengths.tolist()


def pack(archive: Archive) -> bytes:
    """The archive as bytes (see the module's doc)."""
    if archive.version not in WRITABLE:
        raise ValueError(f"archives of version {archive.version} are read, not written")
    if archive.names and len(archive.names) != len(archive.images):
        raise ValueError(f"{len(archive.names)} names for {len(archive.images)} images")
    names = zlib.compress("\n".join(archive.names).encode(), 9) if archive.names else b""
    numerics = archive.numerics.encode()
    header = bytearray()
    header += bytes.fromhex(archive.tokenizer) + bytes.fromhex(archive.prior)
    for value in (*archive.grid, archive.codebook_size, archive.num_classes, archive.batch_size, len(numerics)):
        header += _varint(value)
    header += numerics + _varint(len(archive.images)) + _varint(len(names)) + names
    header += _pack_table([r.label for r in archive.images], [len(r.stream) for r in archive.images], archive.num_classes)
    header += b"".join(struct.pack("<I", r.crc) for r in archive.images)
    head = MAGIC + bytes([archive.version]) + _varint(len(header)) + bytes(header)
    return head + struct.pack("<I", zlib.crc32(head)) + b"".join(r.stream for r in archive.images)


def unpack(data: bytes, where: str = "the archive") -> Archive:
    """Parse and check an archive. Not an archive, another version, a damaged or truncated header:
    one-line ValueError. Streams cut short by truncation come back with ``complete=False``."""
    if len(data) < len(MAGIC) + 1 or data[: len(MAGIC)] != MAGIC:
        raise ValueError(f"{where} is not a vqgpt archive (it does not start with {MAGIC.decode()!r})")
    version = data[len(MAGIC)]
    if version not in READABLE:
        raise ValueError(f"{where} is a version {version} vqgpt archive; this vqgpt reads versions "
                         f"{', '.join(map(str, READABLE))}")
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
    if count > len(data):
        raise ValueError(f"{where} is damaged: its header claims {count} images")
    if version == 1:
        table = [(reader.varint() - 1, reader.varint(), struct.unpack("<I", reader.take(4))[0]) for _ in range(count)]
    else:
        labels, lengths = _unpack_table(reader, count, classes)
        crcs = struct.unpack(f"<{count}I", reader.take(4 * count))
        table = list(zip(labels, lengths, crcs))
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
    return Archive(tokenizer, prior, (h, w), codebook, classes, batch, numerics, images, names, head_end + 4, version)
