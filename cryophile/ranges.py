"""Byte ranges of an archive's plaintext (``restore --offset/--length``):
which fragments hold a range, and copying it out through the seek index.

A range needs the fragments from the seek index entry at or before its
start to the end of the compressed frame holding its last byte, plus the
fragment(s) holding the session key packets at the start of the message
(chunk.1: the session key is needed to decrypt from anywhere).  A range
reaching the end of the archive reads on to the end of the message, which
checks the trailer (MDC) as a whole restore does.  Every fragment read is
checked against its SHA-256 in chunk.0 and every frame against its
checksum; from a seek the MDC cannot be checked (as in the mount).

Blocking: call from a thread.
"""

from __future__ import annotations

import bisect
from typing import BinaryIO, Callable

from . import errors
from .manifest import ClearInfo
from .pipeline import openpgp
from .pipeline.plainreader import PlainReader

BLOCK = 1 << 20
SESSION_SLACK = 6       # the SEIPD packet's header after the session key packets


class OutsideRange(errors.Error):
    """The reader asked for a fragment the range does not need (a bug if it
    ever reaches a caller: reads run ahead, but never use such a fragment)."""


def span(size: int, offset: int, length: int | None, what: str) -> tuple[int, int]:
    """(start, end) of the bytes to restore; a length past the end stops at
    the end (as dd does); an offset past the end is an error."""
    if offset > size:
        raise errors.UsageError(f"--offset {offset} is beyond the end of {what} "
                                f"({size} bytes)")
    end = size if length is None else min(size, offset + length)
    return offset, end


def fragments(clear: ClearInfo, manifest: dict, start: int, end: int) -> list[int]:
    """The fragment numbers (ascending) a read of plaintext [start, end) uses."""
    count, fsize = len(clear.fragments), clear.fragment_size
    if end <= start or count == 0:
        return []

    def holding(m: int) -> int:
        return min(m // fsize + 1, count)
    layout = openpgp.Layout(manifest["seipd_start"], manifest["stream_size"])
    index = manifest["index"]
    starts = [plain for plain, _, _ in index]
    i = bisect.bisect_right(starts, start) - 1
    plain, stream_offset = (index[i][0], index[i][1]) if i >= 0 else (0, -1)
    if stream_offset <= 0 or plain == 0:       # PlainReader reads from the start then
        first = 1
    else:
        first = holding(layout.resume_start(stream_offset, fsize)[0])
    j = bisect.bisect_left(starts, end)         # the first frame starting at or after end
    if end >= manifest["size"] or j >= len(index):
        last = count
    else:
        next_frame = index[j][1]
        last = holding(layout.ciphertext_to_message(
            layout.stream_to_ciphertext(next_frame - 1)))
    session = range(1, holding(manifest["seipd_start"] + SESSION_SLACK) + 1)
    return sorted(set(session) | set(range(first, last + 1)))


def copy(clear: ClearInfo, manifest: dict, unlock, fragment_path: Callable[[int], str],
         out: BinaryIO, start: int, end: int, wanted: list[int]) -> int:
    """Write plaintext [start, end) to ``out``, reading only the fragments
    in ``wanted``; return the number of bytes written."""
    allowed = set(wanted)

    def path(n: int) -> str:
        if n not in allowed:
            raise OutsideRange(f"the range needs no fragment chunk.{n}")
        return fragment_path(n)
    reader = PlainReader(clear, manifest, unlock, path)
    pos = start
    try:
        while pos < end:
            data = reader.read(pos, min(BLOCK, end - pos))
            if not data:
                raise errors.IntegrityError(f"archive ends at byte {pos}, before its "
                                            "stated size")
            try:
                out.write(data)
            except OSError as exc:
                raise errors.from_oserror(exc, "cannot write the output") from None
            pos += len(data)
        try:
            out.flush()
        except OSError as exc:
            raise errors.from_oserror(exc, "cannot write the output") from None
    finally:
        reader.close_stream()
    return pos - start
