"""Compression: independent frames, so a reader can start at any frame.

Each frame holds FRAME_SIZE bytes of input (the last one less).  The
concatenation of lz4 frames (or zstd frames) is what ``lz4 -d`` (``zstd -d``)
reads, so the disaster-recovery recipe needs nothing of ours.  Frames carry
a checksum of their content (lz4's content checksum, zstd's checksum),
which both the tools and ``decompress`` verify: a reader that lands in the
wrong place, or a decoder bug, cannot pass garbage on silently.
"""

from __future__ import annotations

import threading
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
    """A function compressing one frame; thread-safe (one zstd context per
    thread, kept: making one per frame costs more than compressing a frame
    of incompressible data)."""
    if name == "lz4":
        return lambda data: lz4.frame.compress(
            data, compression_level=0, block_size=lz4.frame.BLOCKSIZE_MAX1MB,
            content_checksum=True, store_size=True)
    if name == "zstd":
        local = threading.local()

        def zstd(data) -> bytes:
            try:
                ctx = local.ctx
            except AttributeError:
                ctx = local.ctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
            return ctx.compress(data)
        return zstd
    return bytes


def decompress(name: str, chunks: Iterable[bytes], frame_size: int | None = None
               ) -> Iterator[bytes]:
    """Decompress a sequence of frames given as arbitrary chunks.

    With ``frame_size``, every frame but the last must hold exactly that
    many bytes (as the writer cuts them).
    """
    if name == "none":
        yield from chunks
    elif name == "lz4":
        yield from _frames(chunks, lambda: lz4.frame.LZ4FrameDecompressor(), frame_size)
    elif name == "zstd":
        yield from _frames(chunks, lambda: zstandard.ZstdDecompressor().decompressobj(),
                           frame_size)
    else:
        raise IntegrityError(f"archive uses unknown compression {name!r}")


def _frames(chunks: Iterable[bytes], new, frame_size: int | None) -> Iterator[bytes]:
    dec, started = new(), False
    size, short = 0, False          # of the current frame; an earlier frame was short
    for data in chunks:
        while data:
            try:
                out = dec.decompress(data)
            except Exception as exc:   # lz4/zstd raise their own error types
                raise IntegrityError(f"decompression failed: {exc}") from None
            started = True
            size += len(out)
            if frame_size is not None and (short or size > frame_size):
                raise IntegrityError("compressed frame of unexpected size: archive damaged")
            if out:
                yield out
            if _finished(dec):
                short = size != frame_size
                data, dec, started, size = dec.unused_data, new(), False, 0
            else:
                data = b""
    if started:
        raise IntegrityError("compressed stream ends inside a frame: archive truncated")


def _finished(dec) -> bool:
    return bool(getattr(dec, "eof", False))
