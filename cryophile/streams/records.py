"""A walker over a stream of records: a fixed-size header, then a body whose
length the header gives.

The bytes go by once, as they arrive, in buffers cut anywhere.  Bodies are
skipped by counting (no copy, O(1) per buffer); only headers that straddle
two buffers, and the few small bodies a parser asks to keep, are copied.
The Python work is therefore per record, not per byte.
"""

from __future__ import annotations

KEEP_LIMIT = 1 << 20      # longest body a parser may keep (metadata, not data)


class Walker:
    """Subclasses set ``header_size`` (which ``header`` may change for the
    next record) and implement ``header``; they may call ``keep()`` from
    ``header`` to receive the body in ``body``."""

    header_size = 512

    def __init__(self) -> None:
        self.offset = 0                 # stream bytes seen
        self.record = 0                 # stream offset of the current record
        self.partial = bytearray()      # a header cut by a buffer boundary
        self.skip = 0                   # body bytes still to pass
        self.kept: bytearray | None = None
        self.failure: str | None = None
        self.ended = False              # the stream's end mark was seen

    # --- for subclasses -----------------------------------------------------

    def header(self, head: memoryview) -> int:
        """Take one header; return the length of the body that follows."""
        raise NotImplementedError

    def body(self, data: bytes) -> None:
        """A body asked for with keep()."""

    def keep(self, length: int) -> bool:
        """Ask for the next body (if it is small enough to be metadata)."""
        if length > KEEP_LIMIT:
            return False
        self.kept = bytearray()
        return True

    def fail(self, reason: str) -> None:
        self.failure = self.failure or f"{reason} (at byte {self.record})"

    # --- driving ------------------------------------------------------------

    def feed(self, view: memoryview) -> None:
        n = len(view)
        pos = 0
        while pos < n and self.failure is None:
            if self.skip or self.partial:
                pos = self._resume(view, pos)
                continue
            size = self.header_size
            if n - pos < size:
                self.partial += view[pos:]
                break
            self.record = self.offset + pos
            pos += size
            skip = self.header(view[pos - size:pos])
            if not skip:
                self._kept()
            elif self.kept is None and skip <= n - pos:
                pos += skip                 # a body within this buffer: passed at once
            else:
                self.skip = skip
        self.offset += n

    def _resume(self, view: memoryview, pos: int) -> int:
        """Go on with a body or a header that the previous buffer cut; return
        where in ``view`` the next record starts (or its end)."""
        n = len(view)
        if self.skip:
            take = min(self.skip, n - pos)
            if self.kept is not None:
                self.kept += view[pos:pos + take]
            self.skip -= take
            if not self.skip:
                self._kept()
            return pos + take
        size = self.header_size
        take = min(size - len(self.partial), n - pos)
        self.partial += view[pos:pos + take]
        pos += take
        if len(self.partial) < size:
            return pos
        head = memoryview(bytes(self.partial))
        self.partial.clear()
        self.record = self.offset + pos - size
        self.skip = self.header(head)
        if not self.skip:
            self._kept()
        return pos

    def _kept(self) -> None:
        if self.kept is not None:
            data, self.kept = bytes(self.kept), None
            self.body(data)

    def verdict(self) -> tuple[bool, str | None]:
        """(complete, reason): did the stream end where its kind says it ends?"""
        if self.failure is not None:
            return False, self.failure
        at = self.offset - len(self.partial)
        if self.partial and self.ended:
            return False, f"data after the end of the stream (at byte {at})"
        if self.partial:
            return False, f"the stream is cut short inside the record header at byte {at}"
        if self.skip:
            return False, f"the stream is cut short inside the record at byte {self.record}"
        if not self.ended:
            return False, self.missing_end()
        return True, None

    def missing_end(self) -> str:
        return f"the stream stops after {self.offset} bytes without its end mark"
