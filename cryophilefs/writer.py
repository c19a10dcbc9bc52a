"""Writing incoming/VAULT/PREFIX/NAME: a backup that runs as the bytes arrive.

The write handler only checks the offset and queues the bytes; one feeder
thread per file (alive from open to seal) hands them to the ArchiveWriter
(compression in its pool, encryption in its own thread), so FUSE,
compression and encryption overlap.  Handing over costs the trio thread a
deque append and, only when the feeder sleeps, a condition notify: no trio
task switch and no trip to a thread per request, since such a trip costs
about as much as the trio side of a request.  The queue is bounded
(``DEPTH`` × ``CHUNK`` bytes): when the pipeline, or freeze behind
``spool_max`` (the writer's backpressure), holds the feeder, the queue
fills and ``write(2)`` waits until it is half empty, rather than failing;
the feeder wakes trio once per ``DEPTH // 2`` requests, not for each.  The
buffers pyfuse3 hands over are bytes, which cannot change: they are queued
as they are (no copy; a 1 MiB request is compressed where it lies), and
smaller requests are handed over together once they make ``CHUNK``.

The life of an incoming file (``Incoming.state``)::

    writing ──flush with data──▶ sealed ──release──▶ (freeze may take chunk.0)
       │                           │
       │ rejected write/truncate   │ a write or truncate after the seal
       ▼                           ▼
    failed ──release──▶ dropped  withdrawn (dropped at once)

    (also: cancelled by unlink while writing; empty if released with nothing
    written; sealed shows as "incomplete" for a zfs/btrfs/tar stream cut short)

flush (every ``close(2)``, also of a duplicate) seals the archive once data
was written: ``close`` returning 0 means chunk.0 is fsynced in the freeze
queue, so a mount killed right after still has the archive (the next mount
or ``cryophile freeze`` takes it).  Until the last close (release) the
backup keeps its lock and work directory, so freeze leaves chunk.0 alone and
the archive can still be withdrawn: a write after the seal means the stream
went on past what was sealed, and a sealed prefix of a stream is not an
archive.  A file closed with nothing written seals nothing, and leaves
nothing in the spool: the ArchiveWriter starts at the first write.

A released entry lingers for ``LINGER`` seconds (not listed, but ``stat``,
``chmod``, ``utimes`` succeed), so that tools that look at what they just
wrote (``rsync``) do not fail; opening it again for writing starts a new
backup under the same name (``O_APPEND`` is refused).
"""

from __future__ import annotations

import collections
import errno
import logging
import threading
import time
from typing import Callable

import trio

from cryophile import errors
from cryophile.ids import BackupId
from cryophile.pipeline.writer import ArchiveWriter

from .faults import FsError

log = logging.getLogger("cryophilefs")

CHUNK = 1 << 20
# The queue smooths two stages whose pace varies along a stream: the FUSE
# side (dd and this process take turns per request; its pace follows how
# soon each is scheduled on busy cores) and the pipeline (its pace follows
# how well each stretch compresses).  With 8 MiB it ran empty and full by
# turns on real data; 32 MiB keeps the pipeline fed through such stretches.
DEPTH = 32
LINGER = 60.0           # seconds a released incoming entry stays resolvable

WRITING, SEALED = "writing", "sealed"
FAILED, CANCELLED, WITHDRAWN, EMPTY = "failed", "cancelled", "withdrawn", "empty"


class HeldWriter(ArchiveWriter):
    """An ArchiveWriter that keeps its sealed archive held (backup/…/ULID and
    its lock) until ``let_go()``; a killed process lets go by dying."""

    held = True

    def __init__(self, *args, **kwargs):
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            # stopped while waiting for spool room for its first fragment (or
            # failed there): the lock and directories it made go with it
            lock = getattr(self, "lock", None)
            if lock is not None and lock.fd is not None:
                self.spool.abandon(self.bid)
                lock.release()
            raise

    def finish(self) -> None:
        if not self.held:
            super().finish()

    def let_go(self) -> None:
        self.held = False
        self.finish()

    def abort(self) -> None:
        if self.closed:             # the seal failed half way: never let it look sealed
            self.withdraw()
        else:
            super().abort()

    def withdraw(self) -> None:
        """Drop the sealed, still held archive: freeze never uploads its chunk.0
        and deletes the fragments it already uploaded."""
        self.spool.abandon(self.bid)
        self.lock.release()


class Incoming:
    def __init__(self, bid: BackupId, name: str,
                 make_writer: Callable[[threading.Event], HeldWriter]):
        self.bid, self.name = bid, name
        self.make_writer = make_writer      # blocking; called at the first write, with:
        self.stopped = threading.Event()    # set: the writer's waits for spool room end
        self.writer: HeldWriter | None = None       # and None again once released
        self.state = WRITING
        self.offset = 0
        self.mtime_ns = time.time_ns()
        self.pending: list[bytes] = []     # requests not queued yet, under CHUNK bytes
        self.pending_size = 0
        # the hand-over to the feeder thread; all below under ``cond``
        self.cond = threading.Condition(threading.Lock())
        self.queue: collections.deque[list[bytes]] = collections.deque()
        self.inflight = 0               # bytes queued or being written by the feeder
        self.idle = False               # the feeder sleeps on ``cond``
        self.stopping = False           # the feeder ends once the queue is empty
        self.waiter: tuple[int, trio.Event] | None = None   # trio waits: inflight <= n
        self.thread_started = False     # the feeder thread began, or its task ended first
        self.feeder_gone = threading.Event()    # that thread ended, or will never run
        self.token = trio.lowlevel.current_trio_token()
        self.error: BaseException | None = None
        self.fed = trio.Event()
        self.lock = trio.Lock()         # writes, seal and release take turns
        self.released: float | None = None
        self.complete = True            # False: sealed, but the stream was cut short
        self.on_withdraw = lambda: None

    @property
    def shown_state(self) -> str:
        """user.cryophile.state of the incoming entry."""
        return "incomplete" if self.state == SEALED and not self.complete else self.state

    @property
    def active(self) -> bool:
        """Still open somewhere (not released)."""
        return self.released is None

    def expired(self) -> bool:
        return self.released is not None and time.monotonic() - self.released > LINGER

    # --- feeding the ArchiveWriter --------------------------------------------------

    async def feed(self) -> None:
        """The feeder task: runs the feeder thread (with a limiter of its own:
        a file open for a long time must not hold one of trio's threads)."""
        try:
            await trio.to_thread.run_sync(self._feed, limiter=trio.CapacityLimiter(1),
                                          abandon_on_cancel=True)
        except Exception as exc:        # a bug: this backup fails, the mount goes on
            log.error("backup %s (%s): the feeder failed", self.bid, self.name, exc_info=exc)
            self.error = self.error or exc
        finally:
            self._stop()                # cancelled (unmount): the thread ends too
            with self.cond:
                if not self.thread_started:     # cancelled before it began: it never will
                    self.thread_started = True
                    self.feeder_gone.set()
            self.fed.set()
            with self.cond:             # whatever is left will never be written
                if self.waiter is not None:
                    self.waiter[1].set()
                    self.waiter = None

    def _feed(self) -> None:
        """The feeder thread: queued bytes into the ArchiveWriter, in order; a
        failure is kept in ``error`` for the next write or the close, and
        what follows it is dropped."""
        with self.cond:
            if self.thread_started:     # its task was cancelled before the thread began
                return
            self.thread_started = True
        try:
            self._feed_all()
        finally:
            self.feeder_gone.set()

    def _feed_all(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.stopping:
                    self.idle = True
                    self.cond.wait()
                self.idle = False
                if not self.queue:
                    return
                batch = self.queue.popleft()
            if self.error is None and self.state == WRITING:
                self._write(batch)
            with self.cond:
                self.inflight -= sum(map(len, batch))
                if self.waiter is not None and self.inflight <= self.waiter[0]:
                    self._wake(self.waiter[1])
                    self.waiter = None

    def _write(self, batch: list[bytes]) -> None:
        """Blocking (the feeder's thread)."""
        try:
            for data in batch:
                self.writer.write(data)
        except OSError as exc:
            self.error = errors.from_oserror(exc, f"backup {self.bid}")
        except Exception as exc:
            self.error = exc

    def _wake(self, event: trio.Event) -> None:
        try:
            self.token.run_sync_soon(event.set)
        except trio.RunFinishedError:      # the mount ended: nobody waits any more
            pass

    def _queue(self) -> bool:
        """Hand the pending requests to the feeder (the trio thread; never
        blocks for long).  True if the queue is now over its bound."""
        batch, size, self.pending, self.pending_size = self.pending, self.pending_size, [], 0
        with self.cond:
            self.queue.append(batch)
            self.inflight += size
            if self.idle:
                self.cond.notify()
            return self.inflight > DEPTH * CHUNK

    async def _wait_inflight(self, most: int) -> None:
        """Until the feeder has at most ``most`` bytes left to write."""
        while not self.fed.is_set():    # (once the feeder ended, nothing waits for it)
            with self.cond:
                if self.inflight <= most:
                    return
                event = trio.Event()
                self.waiter = (most, event)
            await event.wait()

    async def _drain(self) -> None:
        """Everything written so far is in the ArchiveWriter (or failed)."""
        if self.pending:
            self._queue()
        await self._wait_inflight(0)

    def _stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()

    async def _stop_feeding(self) -> None:
        self._stop()
        await self.fed.wait()

    # --- the handlers' side ----------------------------------------------------------

    async def write(self, off: int, buf: bytes) -> int:
        try:
            self.lock.acquire_nowait()          # the usual case: no trip through trio's loop
        except trio.WouldBlock:
            await self.lock.acquire()
        try:
            return await self._take(off, buf)
        finally:
            self.lock.release()

    async def _take(self, off: int, buf: bytes) -> int:
        """A write, under ``lock``."""
        await self._refuse_if_done("write")
        if self.error is not None:
            self._fail(self.error)          # the ArchiveWriter failed
        if off != self.offset:
            self._fail(FsError(errno.ESPIPE, f"write at byte {off}, but a backup is "
                               f"written in order (it continues at byte {self.offset}); "
                               "the backup failed"))
        if self.writer is None:
            await self._start_writer()
        if not isinstance(buf, bytes):     # pyfuse3 gives bytes; others a copy
            buf = bytes(buf)
        self.pending.append(buf)            # immutable: kept as it is
        self.pending_size += len(buf)
        self.offset += len(buf)
        self.mtime_ns = time.time_ns()
        if self.pending_size >= CHUNK and self._queue():      # small requests: one hand-over
            await self._wait_inflight(DEPTH * CHUNK // 2)     # then several in a row
        return len(buf)

    async def _start_writer(self) -> None:
        """The spool sees a backup only once it has data (``touch`` leaves nothing)."""
        try:
            self.writer = await trio.to_thread.run_sync(self.make_writer, self.stopped)
        except OSError as exc:
            self._fail(errors.from_oserror(exc, f"backup {self.bid}"))
        except Exception as exc:
            self._fail(exc)

    async def truncate(self, size: int) -> None:
        async with self.lock:
            if size == self.offset:
                return                      # O_TRUNC of a new file, rsync's final ftruncate
            await self._refuse_if_done("truncate")
            self._fail(FsError(errno.EPERM, f"cannot truncate a backup being written (to "
                               f"{size} bytes; {self.offset} written); the backup failed"))

    async def _refuse_if_done(self, what: str) -> None:
        if self.state == CANCELLED:
            raise FsError(errno.ECANCELED, "removed while being written: backup cancelled")
        if self.state == FAILED:
            raise self._failed()
        if self.state == SEALED and self.active:
            await self._withdraw(what)
        if self.state != WRITING:
            raise FsError(errno.EPERM, f"{what} after the archive was sealed (by the first "
                          f"close after data was written): backup {self.bid} is "
                          f"{self.state}; write a new file for a new backup")

    def _failed(self) -> FsError:
        return FsError(getattr(self.error, "errno", errno.EIO),
                       f"backup {self.bid} failed, nothing will be sealed: {self.error}")

    def _fail(self, exc: BaseException):
        if self.state == WRITING:
            self.state, self.error = FAILED, exc
        raise exc

    async def _withdraw(self, what: str) -> None:
        """The stream went on after the seal: what was sealed is only its start."""
        self.state = WITHDRAWN
        await trio.to_thread.run_sync(self.writer.withdraw)
        self.on_withdraw()
        log.error("%s after backup %s (%s) was sealed by a close: the archive held only "
                  "the start of the stream and was withdrawn", what, self.bid, self.name)

    async def flush(self) -> bool:
        """A close: seal if data was written; True if this flush sealed it.
        Errors of the backup surface here, for the closing process."""
        async with self.lock:
            if self.state == WRITING and self.offset:
                await self._seal()
                return True
            if self.state == FAILED:
                raise self._failed()
            if self.state == WITHDRAWN:
                raise FsError(errno.EPERM, f"backup {self.bid} was withdrawn: written to "
                              "after it was sealed")
            return False

    async def _seal(self) -> None:
        try:
            await self._drain()
            await self._stop_feeding()
            if self.error is not None:
                raise self.error
            await trio.to_thread.run_sync(self._close_writer)
        except BaseException as exc:
            self.state, self.error = FAILED, self.error or exc
            raise
        self.state = SEALED
        log.info("sealed %s (%s, %d bytes)", self.bid, self.name, self.offset)

    def _close_writer(self) -> None:
        """Blocking: chunk.0 written, fsynced and in the freeze queue.  A zfs,
        btrfs or tar stream cut short is sealed all the same, marked
        incomplete (the writing program died; what it wrote is kept, and
        never listed as a good archive)."""
        self.writer.close(incomplete="mark")
        self.complete = self.writer.stream.complete is not False

    async def release(self) -> bool:
        """The last close: the archive is let go to freeze, or the backup dropped.
        True if an archive was let go."""
        async with self.lock:
            self.released = time.monotonic()
            if self.state == WRITING and self.offset:
                try:                        # no flush came (an unmount): seal now
                    await self._seal()
                except Exception as exc:
                    log.debug("seal at release failed: %s", exc)
            if self.state == SEALED:
                await trio.to_thread.run_sync(self.writer.let_go)
                self.writer = None          # the entry lingers; the writer's memory goes
                return True
            if self.state == WITHDRAWN:
                self.writer = None
                return False
            if self.state == WRITING:
                self.state = EMPTY
                log.info("%s (%s) was closed with nothing written: no archive", self.name,
                         self.bid)
            await self._stop_feeding()
            if self.writer is not None:
                await trio.to_thread.run_sync(self.writer.abort)
            self.writer = None
            if self.state == FAILED:
                log.error("backup %s (%s) failed and was dropped, nothing sealed: %s",
                          self.bid, self.name, self.error)
            return False

    def cancel(self) -> bool:
        """unlink while writing: True if the backup is cancelled (else the name
        just goes: the archive was sealed)."""
        if self.state == WRITING:
            self.state = CANCELLED
            return True
        return False

    def interrupt(self) -> None:
        """The mount ends: a wait for spool room ends now (the backup then
        fails, unless it is sealed already).  Any thread."""
        self.stopped.set()

    def abort_at_unmount(self) -> str:
        """Blocking: the mount ends with this file still open.  The feeder
        thread ends first (it may be inside a write, or held with the whole
        pipeline at spool_max: ``stopped`` ends that wait), so that nothing
        writes into the backup's spool files once it is abandoned."""
        if self.state not in (SEALED, WITHDRAWN):
            self.error = self.error or errors.Interrupted("the mount ended while the "
                                                          "backup was being written")
            if self.writer is not None:         # the feeder's write in progress stops
                self.writer.error = self.writer.error or self.error
        self.interrupt()
        self._stop()
        self.feeder_gone.wait()     # every wait of the feeder ends on the above
        if self.state == SEALED:
            self.writer.let_go()
            return "kept"
        if self.state != WITHDRAWN and self.writer is not None:
            self.writer.abort()
        return "dropped"
