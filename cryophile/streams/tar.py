"""tar archives: 512-byte headers, each followed by ceil(size / 512) blocks
of data; the archive ends with two zero blocks (then, as GNU tar writes
it, zero padding up to the record size).

Sizes come from the header (octal, or GNU base-256 for large files) or
from a preceding pax extended header's ``size`` record.  Links, devices,
directories and FIFOs carry no data, as Python's tarfile reads them; old
GNU sparse headers may be followed by extension headers.
"""

from __future__ import annotations

import re
import zlib
from zlib import adler32

from .records import Walker

BLOCK = 512
MAGICS = (b"ustar\x0000", b"ustar  \x00")
NO_DATA = frozenset(b"123456")      # hard link, symlink, char, block, directory, FIFO
PAX_HEADERS = frozenset(b"xg")      # extended headers: a size there is for the next member
PAX, SPARSE = ord("x"), ord("S")
SLOW_KINDS = frozenset(b"xgS")       # read by ``header`` alone
PAX_SIZE = re.compile(rb"(?:^|\n)\d+ size=(\d+)\n")
ZERO = bytes(BLOCK)


def _sum(data) -> int:
    """The sum of up to 256 bytes, in C: Adler-32's low half is 1 + that sum
    (which stays below its modulus, 65521, for 256 bytes)."""
    return (zlib.adler32(data) & 0xFFFF) - 1


def checksum_ok(h) -> bool:
    """The header's checksum field matches the sum of its bytes (the field
    itself counted as spaces), unsigned as POSIX says or signed as old tars
    wrote it.  This runs for every member: with no byte above 127 (most
    headers) the block sums to less than Adler-32's modulus, so that one
    call in C gives the sum."""
    h = bytes(h[:BLOCK])
    field = h[148:156]
    try:
        want = int(field.replace(b"\0", b" "), 8)    # int() skips the blanks
    except ValueError:
        return False
    if h.isascii():
        return want == adler32(h) % 65536 - adler32(field) % 65536 + 8 * 32
    unsigned = _sum(h[:256]) + _sum(h[256:BLOCK]) - sum(field) + 8 * 32
    if want == unsigned:
        return True
    signed = unsigned - 256 * sum(1 for b in h if b >= 128)
    return want == signed + 256 * sum(1 for b in field if b >= 128)


def is_header(h) -> bool:
    """A ustar/GNU header with a valid checksum (what recognises tar)."""
    return len(h) >= BLOCK and bytes(h[257:265]) in MAGICS and checksum_ok(h)


def number(field) -> int | None:
    field = bytes(field)
    if field and field[0] & 0x80:                       # GNU base-256
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.replace(b"\0", b" ")
    try:
        value = int(text, 8)                            # int() skips the blanks
    except ValueError:
        return None if text.strip() else 0              # all blank: 0
    return value if value >= 0 else None     # int() takes a sign: no tar writes one


def blocks(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


class TarStream(Walker):
    header_size = BLOCK

    def __init__(self) -> None:
        super().__init__()
        self.zeros = 0              # zero blocks in a row at a header position
        self.pax_size: int | None = None
        self.sparse_ext = False     # old GNU sparse extension headers follow
        self.sparse_size = 0
        self.pax_body = False

    def feed(self, view: memoryview) -> None:
        """``Walker.feed`` with the usual member read inline: a header of ASCII
        bytes, not a pax or sparse one, at a header position with nothing
        pending.  Such a header takes one pass of a few bytecodes instead of
        four calls; anything else (zero blocks, pax, sparse, bytes above
        127, a header or body cut by the buffer, a bad field or checksum)
        goes through ``header`` as before, so the verdicts are the same."""
        n = len(view)
        pos = 0
        fast = self._fast()
        while pos < n and self.failure is None:
            if self.skip or self.partial:
                pos = self._resume(view, pos)
                fast = self._fast()
                continue
            end = pos + BLOCK
            if end > n:
                self.partial += view[pos:]
                break
            h = view[pos:end].tobytes()
            length = -1
            if fast and h[156] not in SLOW_KINDS and h.isascii():
                field = h[148:156]
                try:
                    want = int(field.replace(b"\0", b" "), 8)
                    size = int(h[124:136].replace(b"\0", b" "), 8)
                except ValueError:
                    pass        # blank or bad: header() says which
                else:
                    if size >= 0 and want == adler32(h) % 65536 - adler32(field) % 65536 + 256:
                        length = 0 if h[156] in NO_DATA else (size + 511) & -512
            if length < 0:
                self.record = self.offset + pos
                length = self.header(memoryview(h))
                fast = self._fast()
                if not length:
                    self._kept()
                    pos = end
                    continue
                if self.kept is not None:
                    self.skip = length
                    pos = end
                    continue
            if length <= n - end:
                pos = end + length      # a body within this buffer: passed at once
            else:
                self.record = self.offset + pos
                self.skip = length
                pos = end
        self.offset += n

    def _fast(self) -> bool:
        """The next header may be read inline (nothing carried from the last)."""
        return not self.sparse_ext and not self.zeros and self.pax_size is None

    def header(self, h: memoryview) -> int:
        if self.sparse_ext:
            self.sparse_ext = bool(h[504])
            return 0 if self.sparse_ext else blocks(self.sparse_size)
        h = bytes(h)            # one copy: the fields below are then read from bytes
        if h == ZERO:
            self.zeros += 1
            self.ended = self.ended or self.zeros >= 2
            return 0
        if self.zeros and not self.ended:
            self.fail("a lone zero block inside the tar archive")
            return 0
        if not checksum_ok(h):
            self.fail("data after the end-of-archive blocks" if self.ended
                      else "a tar header with a bad checksum")
            return 0
        self.ended, self.zeros = False, 0     # after an end: another archive (as tar -i reads)
        size = number(h[124:136])
        if size is None:
            self.fail("a tar header with a bad size field")
            return 0
        kind = h[156]
        if self.pax_size is not None and kind not in PAX_HEADERS:
            size, self.pax_size = self.pax_size, None
        if kind == SPARSE and h[482]:
            self.sparse_ext, self.sparse_size = True, size
            return 0
        if kind in NO_DATA:
            return 0
        length = blocks(size)
        self.pax_body = kind == PAX and self.keep(length)
        return length

    def body(self, data: bytes) -> None:
        if self.pax_body:
            m = PAX_SIZE.search(data)
            if m:
                self.pax_size = int(m.group(1))
            self.pax_body = False

    def missing_end(self) -> str:
        if self.zeros == 1:
            return "the tar archive ends with one zero block instead of two"
        return f"the tar archive stops after {self.offset} bytes without its two zero blocks"

    def identity(self) -> tuple[dict, dict]:
        return {}, {}
