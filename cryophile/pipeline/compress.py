"""Compression: independent frames, so a reader can start at any frame.

Each frame holds FRAME_SIZE bytes of input (the last one less).  The
concatenation of lz4 frames (or zstd frames) is what ``lz4 -d`` (``zstd -d``)
reads, so the disaster-recovery recipe needs nothing of ours.  Frames carry
a checksum of their content (lz4's content checksum, zstd's checksum),
which both the tools and ``decompress`` verify: a reader that lands in the
wrong place, or a decoder bug, cannot pass garbage on silently.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from typing import Callable, Iterable, Iterator

import lz4.block
import lz4.frame
import zstandard

from ..errors import IntegrityError, UsageError
from . import lz4raw

try:
    import xxhash
except ImportError:       # an install older than this dependency: lz4 checks frames itself
    xxhash = None

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


def decompress(name: str, chunks: Iterable[bytes], frame_size: int | None = None,
               checked: Callable[[bool], None] | None = None,
               workers: int = 1) -> Iterator[bytes]:
    """Decompress a sequence of frames given as arbitrary chunks.

    With ``frame_size``, every frame but the last must hold exactly that
    many bytes (as the writer cuts them).  Each frame's extent is read from
    its block headers and the frame decompressed in one call: a frame lying
    within one chunk is not copied, and one spread over chunks once.
    ``checked(bool)`` is told, frame by frame, whether the frame carried a
    content checksum (verified by then).  With ``workers`` > 1, that many
    threads decompress frames side by side (the decoders release the GIL),
    a few frames ahead; results come in order all the same.
    """
    if name == "none":
        yield from chunks
    elif name in ("lz4", "zstd"):
        frames = _split(chunks, name)
        whole = _decompress_lz4 if name == "lz4" else _decompress_zstd
        if workers > 1:
            done = _in_threads(whole, frames, frame_size, workers)
        else:
            done = ((whole(f, size, frame_size), summed) for f, size, summed in frames)
        yield from _checked(done, frame_size, checked)
    else:
        raise IntegrityError(f"archive uses unknown compression {name!r}")


def _split(chunks: Iterable[bytes], codec: str) -> Iterator[tuple]:
    """(frame, its stated content size, has a checksum) for each frame."""
    scan = _Scanner(codec)
    parts: list = []                  # of the frame being gathered
    whole = _zstd_whole if codec == "zstd" else None
    for data in chunks:
        view = memoryview(data)
        while view:
            if whole is not None and not parts:
                # a frame starting here and ending in this chunk (most of them):
                # its block headers walked in one loop, without the scanner
                found = whole(view)
                if found is not None:
                    end, size, summed = found
                    yield view[:end], size, summed
                    view = view[end:]
                    continue
            end = scan.feed(view)
            if end < 0:
                parts.append(view)
                break
            parts.append(view[:end])
            view = view[end:]
            # a frame over several chunks goes on as its parts: joined where it
            # is decoded (or, a stored lz4 block, its checksum computed), in the
            # decompressing threads rather than here
            yield parts[0] if len(parts) == 1 else parts, scan.content_size, scan.checksum
            parts = []
            scan = _Scanner(codec)
    if scan.started:
        raise IntegrityError("compressed stream ends inside a frame: archive truncated")


def _checked(done: Iterator[tuple], frame_size: int | None,
             checked: Callable[[bool], None] | None) -> Iterator[bytes]:
    short = False                     # an earlier frame was short
    try:
        for out, summed in done:
            if short:
                raise IntegrityError("compressed frame of unexpected size: archive damaged")
            pieces = out if isinstance(out, list) else [out]
            size = sum(map(len, pieces))
            if frame_size is not None:
                if size > frame_size:
                    raise IntegrityError("compressed frame of unexpected size: "
                                         "archive damaged")
                short = size != frame_size
            if checked is not None:
                checked(summed)
            for piece in pieces:
                if piece:
                    yield piece
    finally:
        done.close()                  # (threads: stops them at once)


def _in_threads(whole: Callable, frames: Iterator[tuple], frame_size: int | None,
                workers: int) -> Iterator[tuple]:
    """Decompress frames in a pool, at most 2 × workers ahead, in order.
    Closing the generator drops what is still pending.  A failure to read
    the next frame is raised after the frames before it, where reading them
    one by one would meet it: reading ahead fails nothing a reader does not
    reach (a byte range, or a read that stops before a missing fragment)."""
    pool = concurrent.futures.ThreadPoolExecutor(workers, "cryophile-decompress")
    pending: collections.deque = collections.deque()
    try:
        try:
            for frame, size, summed in frames:
                if len(pending) >= 2 * workers:
                    yield pending[0][0].result(), pending.popleft()[1]
                pending.append((pool.submit(whole, frame, size, frame_size), summed))
        except Exception as exc:
            failure = exc
        else:
            failure = None
        while pending:
            yield pending[0][0].result(), pending.popleft()[1]
        if failure is not None:
            raise failure
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _decompress_lz4(frame, content_size: int | None, frame_size: int | None):
    """The frame's content: bytes, or (a stored block over several chunks,
    without a content checksum) a list of views of them."""
    _check_size(content_size, frame_size)
    if isinstance(frame, list):
        if xxhash is not None and content_size is not None:
            out = _lz4_stored_parts(frame, content_size)
            if out is not None:
                return out
        frame = b"".join(frame)
    if xxhash is not None and content_size is not None:
        out = _lz4_one_block(memoryview(frame), content_size)
        if out is not None:
            return out
    try:
        return lz4.frame.decompress(frame)
    except Exception as exc:          # lz4 raises RuntimeError
        raise IntegrityError(f"decompression failed: {exc}") from None


def _lz4_header(head) -> tuple[int, int, int]:
    """FLG, the first block's size and its stored bit, from the first 19
    bytes of a frame whose content size is in its header; the header's
    checksum is verified."""
    if (xxhash.xxh32(head[4:14]).intdigest() >> 8) & 0xFF != head[14]:
        raise IntegrityError("decompression failed: lz4 frame header checksum mismatch: "
                             "archive damaged")
    word = int.from_bytes(head[15:19], "little")
    return head[4], word & 0x7FFFFFFF, word >> 31


def _lz4_one_block(frame: memoryview, content_size: int):
    """A frame of one block (as the writer makes them), decompressed as a
    raw block and its checksums verified with xxhash: python-lz4's frame
    decoder costs about twice as much (its XXH32 is slow, and it copies its
    output), and a stored block needs no copy at all.  None: another kind
    of frame, for lz4.frame."""
    if frame[4] >> 6 != 1 or frame[4] & 0x11:   # version 01; no block checksums, no dictionary
        return None
    flg, size, stored = _lz4_header(frame)
    end = 19 + size
    if size == 0:
        block = frame[19:19]
        end = 15                      # no block: the end mark follows the header
    elif frame[end:end + 4] != b"\0\0\0\0":
        return None                   # more blocks (maybe linked): lz4.frame
    else:
        block = frame[19:end]
    tail = frame[end + 4:]
    if len(tail) != (4 if flg & 0x04 else 0):
        raise IntegrityError("decompression failed: lz4 frame of unexpected length: "
                             "archive damaged")
    if stored or size == 0:
        out = block
    elif content_size > size * 255:   # more than lz4 can expand: refused before allocating
        raise IntegrityError("decompression failed: lz4 frame of unexpected size: "
                             "archive damaged")
    elif lz4raw.decompress is not None:   # straight into the result: no copy
        out = lz4raw.decompress(block, content_size)
        if out is None:
            raise IntegrityError("decompression failed: lz4 block does not decode to its "
                                 "stated size: archive damaged")
    else:
        try:
            out = lz4.block.decompress(block, uncompressed_size=content_size)
        except Exception as exc:      # lz4.block.LZ4BlockError
            raise IntegrityError(f"decompression failed: {exc}") from None
    if len(out) != content_size:
        raise IntegrityError("decompression failed: lz4 frame holds other than its stated "
                             "size: archive damaged")
    # one call (it releases the GIL): xxhash's streaming update runs at half the speed
    if flg & 0x04 and xxhash.xxh32_intdigest(out) != int.from_bytes(tail, "little"):
        raise IntegrityError("decompression failed: lz4 content checksum mismatch: "
                             "archive damaged")
    return out


_zstd_local = threading.local()


def _span(parts: list, start: int, end: int) -> list:
    """Views of bytes start…end of the concatenation of ``parts``."""
    out, pos = [], 0
    for part in parts:
        lo, hi = max(start - pos, 0), min(end - pos, len(part))
        if lo < hi:
            out.append(part[lo:hi])
        pos += len(part)
    return out


def _lz4_stored_parts(parts: list, content_size: int) -> bytes | list | None:
    """A one-block frame whose block is stored, over several chunks: its
    content (joined when it carries a checksum, else as views of them),
    checked as _lz4_one_block checks it (header, end mark, length, content
    checksum).  None: another kind of frame."""
    total = sum(map(len, parts))
    head = b"".join(_span(parts, 0, 19))
    if len(head) < 19 or head[4] >> 6 != 1 or head[4] & 0x11 or not head[4] & 0x08:
        return None                   # (_lz4_one_block or lz4.frame judge it)
    flg, size, stored = _lz4_header(head)
    end = 19 + size
    if not stored or size == 0 or b"".join(_span(parts, end, end + 4)) != b"\0\0\0\0":
        return None
    if total != end + 4 + (4 if flg & 0x04 else 0):
        raise IntegrityError("decompression failed: lz4 frame of unexpected length: "
                             "archive damaged")
    if size != content_size:
        raise IntegrityError("decompression failed: lz4 frame holds other than its stated "
                             "size: archive damaged")
    out = _span(parts, 19, end)
    if flg & 0x04:
        # joined once and hashed in one call: xxhash's streaming update runs at
        # half the speed, which costs more than the copy (and a reader wanting
        # the MiB in one piece, as the mount's, would copy it anyway)
        out = b"".join(out)
        if xxhash.xxh32_intdigest(out) != int.from_bytes(b"".join(_span(parts, end + 4, total)),
                                                         "little"):
            raise IntegrityError("decompression failed: lz4 content checksum mismatch: "
                                 "archive damaged")
    return out


def _decompress_zstd(frame, content_size: int | None, frame_size: int | None) -> bytes:
    _check_size(content_size, frame_size)
    if isinstance(frame, list):       # over several chunks
        frame = b"".join(frame)
    try:
        if content_size is None:      # not written by us: no size in the header
            dec = zstandard.ZstdDecompressor().decompressobj()
            return dec.decompress(frame)
        try:
            ctx = _zstd_local.ctx     # one per thread: a context is not shared, and
        except AttributeError:        # making one per frame costs a few percent
            ctx = _zstd_local.ctx = zstandard.ZstdDecompressor()
        return ctx.decompress(frame)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"decompression failed: {exc}") from None


def _check_size(content_size: int | None, frame_size: int | None) -> None:
    """A header claiming more than a frame holds is refused before anything is allocated."""
    if content_size is not None and frame_size is not None and content_size > frame_size:
        raise IntegrityError("compressed frame of unexpected size: archive damaged")


LZ4_MAGIC = b"\x04\x22\x4d\x18"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _Scanner:
    """Finds where a frame ends from its header and block headers, fed the
    stream piece by piece; keeps only the few header bytes it parses."""

    def __init__(self, codec: str):
        self.steps = (_lz4_layout if codec == "lz4" else _zstd_layout)(self)
        self.want = next(self.steps)          # ("read", n) or ("skip", n)
        self.head = bytearray()
        self.started = False
        self.content_size: int | None = None
        self.checksum = False             # the frame carries a content checksum

    def feed(self, view: memoryview) -> int:
        """Offset in ``view`` just past the frame's end, or -1: all of it belongs."""
        pos = 0
        self.started = True
        while True:
            kind, n = self.want
            if kind == "skip":
                take = min(n, len(view) - pos)
                pos += take
                n -= take
                if n:
                    self.want = ("skip", n)
                    return -1
            else:
                take = min(n - len(self.head), len(view) - pos)
                self.head += view[pos:pos + take]
                pos += take
                if len(self.head) < n:
                    return -1
            got, self.head = bytes(self.head), bytearray()
            try:
                self.want = self.steps.send(got if kind == "read" else None)
            except StopIteration:
                return pos


def _lz4_layout(scan: _Scanner):
    """lz4 frame format: header, blocks (4-octet sizes), end mark, content checksum."""
    head = yield ("read", 7)
    if head[:4] != LZ4_MAGIC:
        raise IntegrityError("decompression failed: not an lz4 frame: archive damaged")
    flg = head[4]
    scan.checksum = bool(flg & 0x04)
    extra = (8 if flg & 0x08 else 0) + (4 if flg & 0x01 else 0)
    if extra:
        more = yield ("read", extra)
        if flg & 0x08:
            scan.content_size = int.from_bytes(head[6:7] + more[:7], "little")
    while True:
        size = int.from_bytes((yield ("read", 4)), "little") & 0x7FFFFFFF
        if size == 0:
            break
        yield ("skip", size + (4 if flg & 0x10 else 0))
    if flg & 0x04:
        yield ("skip", 4)


def _zstd_whole(view: memoryview) -> tuple[int, int | None, bool] | None:
    """(end, content size, has a checksum) of the zstd frame at the start of
    ``view`` if it ends within it, else None (the scanner then reads it from
    its first byte).  The same layout and checks as _zstd_layout, without
    the scanner's generator step at each block header (about eight per MiB),
    in the one thread that hands frames to the decompressing threads."""
    n = len(view)
    if n < 5:
        return None
    if view[:4] != ZSTD_MAGIC:
        raise IntegrityError("decompression failed: not a zstd frame: archive damaged")
    fhd = view[4]
    single = fhd >> 5 & 1
    fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
    if pos > n:
        return None
    content_size = None
    if fcs:
        value = int.from_bytes(view[pos - fcs:pos], "little")
        content_size = value + 256 if fcs == 2 else value
    while True:
        if pos + 3 > n:
            return None
        block = int.from_bytes(view[pos:pos + 3], "little")
        kind = block >> 1 & 3
        if kind == 3:
            raise IntegrityError("decompression failed: reserved zstd block type: "
                                 "archive damaged")
        pos += 4 if kind == 1 else 3 + (block >> 3)
        if block & 1:
            break
    if fhd & 0x04:
        pos += 4
    return (pos, content_size, bool(fhd & 0x04)) if pos <= n else None


def _zstd_layout(scan: _Scanner):
    """zstd frame format: header, blocks (3-octet headers), optional checksum."""
    head = yield ("read", 5)
    if head[:4] != ZSTD_MAGIC:
        raise IntegrityError("decompression failed: not a zstd frame: archive damaged")
    fhd = head[4]
    scan.checksum = bool(fhd & 0x04)
    single = fhd >> 5 & 1
    fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    rest = (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
    if rest:
        more = yield ("read", rest)
        if fcs:
            value = int.from_bytes(more[rest - fcs:], "little")
            scan.content_size = value + 256 if fcs == 2 else value
    while True:
        block = int.from_bytes((yield ("read", 3)), "little")
        kind, size = block >> 1 & 3, block >> 3
        if kind == 3:
            raise IntegrityError("decompression failed: reserved zstd block type: "
                                 "archive damaged")
        yield ("skip", 1 if kind == 1 else size)
        if block & 1:
            break
    if fhd & 0x04:
        yield ("skip", 4)
