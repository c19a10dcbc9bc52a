"""btrfs send streams: ``btrfs-stream\\0``, a le32 version, then commands,
each a 10-byte header (le32 length, le16 command, le32 crc32c) and that many
bytes of attributes (le16 type, le16 length, value).  The stream is complete
at its END command.  ``btrfs receive`` also takes several streams one after
the other, so a new stream header may follow an END.
"""

from __future__ import annotations

import struct
import uuid

from .records import Walker

MAGIC = b"btrfs-stream\0"
STREAM_HEADER = len(MAGIC) + 4
COMMAND = struct.Struct("<IHI")
ATTR = struct.Struct("<HH")
SUBVOL, SNAPSHOT, END = 1, 2, 21
A_UUID, A_CTRANSID, A_PATH, A_CLONE_UUID, A_CLONE_CTRANSID = 1, 2, 15, 20, 21


def attributes(body: bytes) -> dict[int, bytes]:
    """The TLV attributes of a (small) command body."""
    found, pos = {}, 0
    while pos + ATTR.size <= len(body):
        kind, length = ATTR.unpack_from(body, pos)
        found.setdefault(kind, body[pos + ATTR.size:pos + ATTR.size + length])
        pos += ATTR.size + length
    return found


class BtrfsStream(Walker):
    header_size = STREAM_HEADER

    def __init__(self) -> None:
        super().__init__()
        self.first: dict[int, bytes] | None = None     # the first SUBVOL/SNAPSHOT
        self.first_cmd = 0
        self.version = None

    def header(self, h: memoryview) -> int:
        if self.header_size == STREAM_HEADER:
            if bytes(h[:len(MAGIC)]) != MAGIC:
                self.fail("data after the end of a btrfs send stream")
                return 0
            self.version = self.version or struct.unpack_from("<I", h, len(MAGIC))[0]
            self.header_size = COMMAND.size
            self.ended = False
            return 0
        length, cmd, _crc = COMMAND.unpack_from(h)
        if cmd == END:
            self.ended = True
            self.header_size = STREAM_HEADER
        elif cmd in (SUBVOL, SNAPSHOT) and self.first is None and self.keep(length):
            self.first_cmd = cmd
        return length

    def body(self, data: bytes) -> None:
        self.first = attributes(data)

    def missing_end(self) -> str:
        return f"the stream stops after {self.offset} bytes without its END command"

    def identity(self) -> tuple[dict, dict]:
        a = self.first
        if a is None:
            return {}, {}

        def uid(kind):
            return str(uuid.UUID(bytes=a[kind])) if len(a.get(kind, b"")) == 16 else None

        def transid(kind):
            return int.from_bytes(a[kind], "little") if len(a.get(kind, b"")) == 8 else None

        ids = {"uuid": uid(A_UUID), "ctransid": transid(A_CTRANSID),
               "clone_uuid": uid(A_CLONE_UUID), "clone_ctransid": transid(A_CLONE_CTRANSID)}
        names = {"path": a.get(A_PATH, b"").decode("utf-8", "replace"),
                 "version": self.version}
        return ids, names
