"""Compression: independent frames, so a reader can start at any frame.

Each frame holds FRAME_SIZE bytes of input (the last one less).  The
concatenation of lz4 frames (or zstd frames) is what ``lz4 -d`` (``zstd -d``)
reads, so the disaster-recovery recipe needs nothing of ours.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import lz4.frame
import zstandard

from ..errors import IntegrityError, UsageError

FRAME_SIZE = 1 << 20
CODECS = ("none", "lz4", "zstd")
ZSTD_LEVEL = 1


def check_codec(name: str) -> str:
    if name not in CODECS:
        raise UsageError(f"unknown compression {name!r}: use none, lz4 or zstd")
    return name


def compressor(name: str) -> Callable[[bytes], bytes]:
    """A function compressing one frame; thread-safe (one context per call for zstd)."""
    if name == "lz4":
        return lambda data: lz4.frame.compress(
            data, compression_level=0, block_size=lz4.frame.BLOCKSIZE_MAX1MB,
            content_checksum=False, store_size=True)
    if name == "zstd":
        return lambda data: zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
    return bytes


def decompress(name: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Decompress a sequence of frames given as arbitrary chunks."""
    if name == "none":
        yield from chunks
    elif name == "lz4":
        yield from _frames(chunks, lambda: lz4.frame.LZ4FrameDecompressor())
    elif name == "zstd":
        yield from _frames(chunks, lambda: zstandard.ZstdDecompressor().decompressobj())
    else:
        raise IntegrityError(f"archive uses unknown compression {name!r}")


def _frames(chunks: Iterable[bytes], new) -> Iterator[bytes]:
    dec, started = new(), False
    for data in chunks:
        while data:
            try:
                out = dec.decompress(data)
            except Exception as exc:   # lz4/zstd raise their own error types
                raise IntegrityError(f"decompression failed: {exc}") from None
            started = True
            if out:
                yield out
            if _finished(dec):
                data, dec, started = dec.unused_data, new(), False
            else:
                data = b""
    if started:
        raise IntegrityError("compressed stream ends inside a frame: archive truncated")


def _finished(dec) -> bool:
    return bool(getattr(dec, "eof", False))
