"""Stream recognition: what a backup's input is, and whether it ended as its
kind must.

A ``Watcher`` is fed every buffer of the input, in order, as it goes by
(memoryviews; nothing is buffered but the first 512 bytes and record
headers cut by a buffer boundary).  From the first bytes it recognises a
zfs send stream (a DRR_BEGIN record, either byte order), a btrfs send
stream (``btrfs-stream\\0``) or a tar archive (a ustar header with a good
checksum); anything else is ``unknown`` and not looked at further.  Then
it walks the records (O(records) work, bodies are skipped by counting) and
``finish()`` tells whether the stream reached its end mark: zfs's final
DRR_END, btrfs's END command, tar's two zero blocks.  A stream cut short
(a producer that died, a pipe closed early) is not complete.

It also keeps the stream's identity: random ids (zfs guids, btrfs uuids
and transids), which may be stored in the clear, and names (snapshots,
datasets, paths), which may not.

The parsers are pure state machines over bytes; the archive writer calls
them, they know nothing of archives.
"""

from __future__ import annotations

import dataclasses

from . import btrfs, tar, zfs
from .records import Walker

HEAD = 512                  # enough to recognise any kind
KINDS = ("zfs", "btrfs", "tar", "unknown")


@dataclasses.dataclass(frozen=True)
class Stream:
    """What the input was.  ``complete`` is None when the kind is unknown
    (nothing to check)."""

    kind: str
    complete: bool | None
    reason: str | None = None
    ids: dict = dataclasses.field(default_factory=dict)       # may be stored in the clear
    names: dict = dataclasses.field(default_factory=dict)     # encrypted only

    def clear(self) -> dict:
        """For chunk.0's clear metadata: kind, completeness and random ids."""
        return {"kind": self.kind, "complete": self.complete, **self.ids}

    def manifest(self) -> dict:
        """For the encrypted manifest: everything."""
        return {**self.clear(), "reason": self.reason, **self.names}


def recognise(head: bytes, final: bool = False) -> str | None:
    """The kind of a stream that starts with ``head``; None while more bytes
    are needed to tell (``final``: there are no more)."""
    if len(head) >= 16 and zfs.byte_order(head):
        return "zfs"
    if head.startswith(btrfs.MAGIC):
        return "btrfs"
    if len(head) >= tar.BLOCK:
        return "tar" if tar.is_header(head) else "unknown"
    if final:
        # a tar cut inside its first header still shows its magic
        return "tar" if bytes(head[257:262]) == b"ustar" else "unknown"
    return None


def _walker(kind: str, head: bytes) -> Walker:
    if kind == "zfs":
        return zfs.ZfsStream(zfs.byte_order(head))
    if kind == "btrfs":
        return btrfs.BtrfsStream()
    return tar.TarStream()


class Watcher:
    """Fed every input buffer in order; ``finish()`` says what it was."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.kind: str | None = None
        self.walker: Walker | None = None
        self.size = 0

    def feed(self, data) -> None:
        if self.walker is not None:
            self.walker.feed(data if isinstance(data, memoryview) else memoryview(data))
            return
        if self.kind is not None:
            return                          # unknown: nothing to follow
        view = memoryview(data)
        take = view[:HEAD - len(self.head)]
        self.head += take
        kind = recognise(self.head)
        if kind is not None:
            self._start(kind)
            if self.walker is not None and len(take) < len(view):
                self.walker.feed(view[len(take):])

    def _start(self, kind: str) -> None:
        self.kind = kind
        if kind != "unknown":
            head, self.head = bytes(self.head), bytearray()
            self.walker = _walker(kind, head)
            self.walker.feed(memoryview(head))

    def finish(self) -> Stream:
        if self.kind is None:
            self._start(recognise(self.head, final=True))
        if self.walker is None:
            return Stream("unknown", None)
        complete, reason = self.walker.verdict()
        ids, names = self.walker.identity()
        return Stream(self.kind, complete, reason, ids, names)


def snapshot_name(stream: dict | None) -> str | None:
    """The snapshot an archive holds, from its manifest's ``stream`` (names
    are encrypted): zfs ``pool/fs@snap``, btrfs the subvolume's path."""
    if not isinstance(stream, dict):
        return None
    name = stream.get("toname") if stream.get("kind") == "zfs" else (
        stream.get("path") if stream.get("kind") == "btrfs" else None)
    return name if isinstance(name, str) and name else None
