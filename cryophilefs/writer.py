"""Writing incoming/VAULT/PREFIX/NAME: a backup that runs as the bytes arrive.

The write handler only checks the offset and queues the bytes; one feeder
task per file hands them to the ArchiveWriter in a thread (compression
there, encryption in the writer's own thread), so FUSE, compression and
encryption overlap.  The queue is bounded (``DEPTH`` × ``CHUNK``): when
freeze falls behind ``spool_max``, the writer's backpressure holds the
feeder, the queue fills and ``write(2)`` waits, rather than failing.

flush (every ``close(2)``) pushes everything through and reports errors to
the closing process; release (the last close) seals the archive.
"""

from __future__ import annotations

import errno
import logging
import time

import trio

from cryophile import errors
from cryophile.ids import BackupId
from cryophile.pipeline.writer import ArchiveWriter

from .faults import FsError

log = logging.getLogger("cryophilefs")

CHUNK = 1 << 20
DEPTH = 8


class Incoming:
    def __init__(self, bid: BackupId, name: str, writer: ArchiveWriter):
        self.bid, self.name, self.writer = bid, name, writer
        self.offset = 0
        self.mtime_ns = time.time_ns()
        self.pending = bytearray()
        self.send, self.receive = trio.open_memory_channel(DEPTH)
        self.sent = self.taken = 0
        self.progress = trio.Event()
        self.error: BaseException | None = None
        self.aborted = False
        self.fed = trio.Event()

    async def feed(self) -> None:
        """The feeder task: queued bytes into the ArchiveWriter, in order."""
        try:
            async with self.receive:
                async for data in self.receive:
                    if self.error is None:
                        await self._write(data)
                    self.taken += 1
                    self.progress.set()
                    self.progress = trio.Event()
        finally:
            self.fed.set()

    async def _write(self, data) -> None:
        try:
            await trio.to_thread.run_sync(self.writer.write, data)
        except OSError as exc:
            self.error = errors.from_oserror(exc, f"backup {self.bid}")
        except Exception as exc:
            self.error = exc

    async def write(self, off: int, buf: bytes) -> int:
        self.check()
        if off != self.offset:
            raise FsError(errno.ESPIPE, f"write at byte {off}, but a backup is written in "
                          f"order: it continues at byte {self.offset}")
        self.pending += buf
        self.offset += len(buf)
        self.mtime_ns = time.time_ns()
        if len(self.pending) >= CHUNK:
            await self._push()
        return len(buf)

    async def _push(self) -> None:
        data, self.pending = self.pending, bytearray()
        self.sent += 1
        await self.send.send(data)

    def check(self) -> None:
        if self.aborted:
            raise FsError(errno.ECANCELED, "removed while being written: backup cancelled")
        if self.error is not None:
            raise self.error

    async def flush(self) -> None:
        """Everything written so far is in the ArchiveWriter; errors surface here."""
        if self.pending and not self.aborted:
            await self._push()
        while self.taken < self.sent:
            await self.progress.wait()
        if not self.aborted:
            self.check()

    async def seal(self) -> str | None:
        """The last close: seal (or drop) the archive; its backup id, if sealed."""
        try:
            await self.flush()
        except Exception as exc:
            self.error = self.error or exc
        await self.send.aclose()
        await self.fed.wait()
        if not self.aborted and self.error is None:
            try:
                await trio.to_thread.run_sync(self.writer.close)
            except Exception as exc:
                self.error = exc
        if self.aborted or self.error is not None:
            await trio.to_thread.run_sync(self.writer.abort)
            if self.error is not None:
                log.error("backup %s (%s) failed and was dropped: %s", self.bid, self.name,
                          self.error)
            return None
        log.info("sealed %s (%s, %d bytes)", self.bid, self.name, self.offset)
        return str(self.bid)

    def truncate(self, size: int) -> None:
        if size != self.offset:
            raise FsError(errno.EPERM, "cannot truncate a backup being written "
                          f"(to {size} bytes; {self.offset} written)")
