"""Reading archives: fragments found or thawed, plaintext read ahead.

A fragment is read from the restore queue, else hard-linked there from the
freeze queue (so a freeze finishing meanwhile cannot take it away), else read
in place from a local vault.  Otherwise a thaw is requested and the read
waits for it (in trio, not in a thread, so waiting costs no thread).

Each open file has a ``ReadAhead``: one background task decrypts the next
``AHEAD`` blocks in a thread while the kernel takes what is ready, so that
FUSE and decryption overlap; a read elsewhere moves it there.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time

import trio

from cryophile import errors, restorequeue, thaw
from cryophile.ids import BackupId
from cryophile.pipeline import buffers
from cryophile.pipeline.plainreader import PlainReader
from cryophile.spool import Spool

from .faults import FsError
from .vaults import Archive, local_fragment

log = logging.getLogger("cryophilefs")

BLOCK = 1 << 20          # one decryption step
AHEAD = 12                # blocks decrypted ahead of the last read, per open file
RESUME = AHEAD // 2       # a thread that got that far ahead starts again this far behind
CACHED = AHEAD + 4       # blocks kept per open file: those ahead and a few behind (reads may
                         # arrive out of order); more behind only cycle the decompressed
                         # buffers through more memory (24: 8 MiB more peak, a few % more CPU)
WAIT_POLL = 0.1


class NeedFragment(Exception):
    """Raised in the reading thread: fragment ``n`` is not on this machine."""

    def __init__(self, n: int):
        super().__init__(f"fragment chunk.{n} is not local")
        self.n = n


class Fragments:
    """Where an archive's fragments are on this machine (blocking: threads)."""

    def __init__(self, spool: Spool, store, archive: Archive):
        self.spool, self.store, self.archive = spool, store, archive
        self.bid: BackupId = archive.bid

    def path(self, n: int) -> str:
        found = self.find(n)
        if found is None:
            raise NeedFragment(n)
        return found

    def find(self, n: int) -> str | None:
        dest = self.spool.path("restore", self.bid, n)
        if os.path.exists(dest) or self.spool.link_queued(self.bid, n):
            return dest
        return local_fragment(self.store, self.bid, n)

    def missing(self) -> list[int]:
        return [n for n in range(1, self.archive.fragments + 1) if self.find(n) is None]

class Thaws:
    """Requests thaws and waits for them; knows the thawer's failures.

    A fragment thaw gave up on (a failure record in the spool, see
    cryophile.restorequeue) fails reads at once instead of being asked for
    again.  Once a failure has been reported to a reader, the next open of
    the archive (or ``setfattr user.cryophile.thaw``) clears it: the user
    asks again.  While an archive is open, the mount is registered as one of
    its readers, so that a concurrent `cryophile restore` leaves its thawed
    fragments alone.
    """

    def __init__(self, spool: Spool, thawer=None, policy=None):
        self.spool, self.thawer = spool, thawer
        self.policy = policy        # thawpolicy.ReadPolicy: guards, partial thaws
        self.reported: set[BackupId] = set()
        self.readers: dict[BackupId, restorequeue.Reader] = {}
        self.waits: set[trio.CancelScope] = set()     # the waits in progress (stop ends them)
        self.stopping = False

    def stop(self) -> None:
        """The mount ends: every thaw wait fails now (the thaws themselves go on)."""
        self.stopping = True
        for scope in self.waits:
            scope.cancel()

    async def request(self, archive: Archive, first: int = 1, pid: int = 0,
                      whole: bool = False, approve: bool = False) -> None:
        wanted = list(range(first, archive.fragments + 1))
        if self.policy is not None:
            wanted = wanted if whole else self.policy.window(archive, first)
            try:
                await self.policy.admit(archive, wanted, pid, approve)
            except errors.MissingFragmentError as exc:
                # the plan's look found it gone: a permanent failure, as a thaw's would be
                n = getattr(exc, "fragment", None)
                if n is not None:
                    await trio.to_thread.run_sync(restorequeue.record_failure, self.spool,
                                                  archive.bid, n, exc, getattr(exc, "seen", None))
                raise
        await trio.to_thread.run_sync(thaw.request, self.spool, archive.bid, wanted)
        if self.thawer is not None:
            self.thawer.poke()

    async def ask_again(self, archive: Archive) -> None:
        """Forget the archive's permanent failures (the user asks again)."""
        self.reported.discard(archive.bid)
        if await trio.to_thread.run_sync(restorequeue.clear_failures, self.spool, archive.bid):
            log.info("%s: asking again for what could not be thawed before", archive.bid)

    async def opening(self, archive: Archive) -> None:
        """An open after a failure was reported asks again."""
        if archive.bid in self.reported:
            await self.ask_again(archive)

    async def permanent(self, archive: Archive) -> errors.Error | None:
        """The archive's recorded permanent failure, if any (now reported)."""
        found = await trio.to_thread.run_sync(restorequeue.failures, self.spool, archive.bid)
        if not found:
            return None
        self.reported.add(archive.bid)
        return found[min(found)]

    async def wait(self, fragments: Fragments, n: int) -> None:
        """Until fragment ``n`` is here; a thaw failure raises.  Cancelling the
        wait leaves the thaw requested (another open file may wait for it)."""
        with trio.CancelScope() as scope:
            self.waits.add(scope)
            try:
                if not self.stopping:
                    return await self._wait(fragments, n)
            finally:
                self.waits.discard(scope)
        raise errors.Interrupted(f"{fragments.bid}: the mount is ending; the read waited "
                                 f"for chunk.{n} to be thawed (the thaw goes on)")

    async def _wait(self, fragments: Fragments, n: int) -> None:
        since = time.monotonic()
        bid = fragments.bid
        pid = getattr(fragments, "pid", 0)
        failure = await trio.to_thread.run_sync(restorequeue.failure, self.spool, bid, n)
        if failure is None:
            with trio.CancelScope(shield=True):     # charged to the budget, then requested
                await self.request(fragments.archive, n, pid)
            log.info("thawing %s from chunk.%d on; reads wait for it", bid, n)
        while True:
            if failure is None:
                failure = self.failure(bid, since)
            if failure is not None:
                self.reported.add(bid)
                raise failure
            found, failure, asked = await trio.to_thread.run_sync(self._look, fragments, n)
            if found:
                return
            if failure is None and not asked:      # taken away by another's cleanup
                with trio.CancelScope(shield=True):
                    await self.request(fragments.archive, n, pid)
            await trio.sleep(WAIT_POLL)

    def _look(self, fragments: Fragments, n: int) -> tuple[bool, errors.Error | None, bool]:
        if fragments.find(n) is not None:
            return True, None, True
        failure = restorequeue.failure(self.spool, fragments.bid, n)
        return False, failure, n in restorequeue.requests(self.spool, fragments.bid)

    def failure(self, bid: BackupId, since: float) -> errors.Error | None:
        if self.thawer is None:
            return None
        when, exc = self.thawer.failures.get(bid, (0.0, None))
        return exc if when >= since else None

    async def opened(self, archive: Archive) -> None:
        """The first open of an archive registers the mount as its reader."""
        if archive.bid not in self.readers:
            reader = restorequeue.Reader(self.spool, archive.bid, kind="mount")
            self.readers[archive.bid] = reader
            await trio.to_thread.run_sync(reader.register)

    async def closed(self, archive: Archive) -> None:
        """The last close: thawed copies go, unless a thaw is still wanted."""
        reader = self.readers.pop(archive.bid, None)
        if reader is not None:
            await trio.to_thread.run_sync(self._unregister, reader)

    def _unregister(self, reader: restorequeue.Reader) -> None:
        reader.close(not restorequeue.requests(self.spool, reader.bid))


class FsThawer(thaw.Thawer):
    """A Thawer that remembers each archive's last failure for waiting readers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.failures: dict[BackupId, tuple[float, errors.Error]] = {}

    def _failed(self, bid: BackupId, exc: errors.Error) -> None:
        self.failures[bid] = (time.monotonic(), exc)


class ReadAhead:
    """One open archive: plaintext in 1 MiB blocks, the next ones prepared.

    A background task keeps a thread decrypting blocks in order from
    ``next`` and caching them; reads take what they need from the cache.
    The thread runs on from block to block without coming back to trio, and
    wakes trio only when a read waits for the block it just made: a read of
    a block already there is a lookup, with no thread hand-off (one per MiB
    held the decompression back while the trio thread answered FUSE).

    The kernel's readahead sends several reads at once, at increasing
    offsets: the decryption is steered to the lowest block anyone waits for,
    and only moved when that block is not coming soon anyway, so concurrent
    reads never make it jump back and forth.

    ``lock`` guards the cache and the positions between the trio thread and
    the decrypting thread; it is held only for dictionary work, never while
    decrypting, so the trio thread never waits long for it.
    """

    def __init__(self, archive: Archive, fragments: Fragments, thaws: Thaws, unlock):
        self.archive, self.fragments, self.thaws = archive, fragments, thaws
        self.size = archive.size
        self.blocks = -(-self.size // BLOCK)
        self.plain = PlainReader(archive.clear, archive.manifest, unlock, fragments.path)
        # a fragment file hashed by an earlier open, unchanged since (same inode, size
        # and mtime), is not hashed again: an open and a read far into an archive
        # cost a whole fragment's SHA-256 each time otherwise
        self.plain.verified = archive.verified
        self.token = trio.lowlevel.current_trio_token()
        self.lock = threading.Lock()
        self.cache: dict[int, bytes] = {}
        self.waiting: dict[int, int] = {}     # block -> readers waiting for it
        self.next = 0                 # the block the background thread decrypts next
        self.horizon = 0              # it stops before this block: nothing before the
                                      # first read (an open alone, to stat or fadvise,
                                      # would hash a fragment and decrypt for nothing)
        self.generation = 0           # bumped when steered: the thread's run is stale
        self.decoding = 0             # the block the thread is at (for its failures)
        self.failed: dict[int, BaseException] = {}    # blocks that cannot be read
        self.stalled = False          # the task stopped at a failed block
        self.running = False          # the task has a thread decrypting (or is about to)
        # the waiters of _changed: _wake (trio thread only) wakes all parked at
        # that moment, as a new Event per wake would, without making one
        self.changed = trio.lowlevel.ParkingLot()
        self.closed = False
        # the task's wait for a thaw (its scope, the block): a steer elsewhere or
        # the close ends it, so that a read of a block that is here, or the
        # task's end, does not wait for a thaw nobody waits for any more
        self.thawing: tuple[trio.CancelScope, int] | None = None
        self.frozen: set[int] = set()     # blocks last found to need a fragment not here

    # --- the reader's side --------------------------------------------------

    async def read(self, off: int, size: int) -> bytes:
        size = min(size, self.size - off)
        if size <= 0:
            return b""
        wanted = range(off // BLOCK, (off + size - 1) // BLOCK + 1)
        with self.lock:
            for b in wanted:
                self.waiting[b] = self.waiting.get(b, 0) + 1
            if wanted[-1] + 1 + AHEAD > self.horizon:
                self.horizon = wanted[-1] + 1 + AHEAD    # a running thread sees it
            resume = not self.running and not self._idle()
        if resume:
            self._wake()                  # the task rests at the old horizon
        try:
            while True:
                with self.lock:
                    missing = [b for b in wanted if b not in self.cache]
                    if not missing:
                        data = self._slice(wanted, off, size)
                        break
                for b in missing:
                    if b in self.failed:
                        raise self.failed[b]
                self._steer()
                await self._changed()
        finally:
            with self.lock:
                for b in wanted:
                    if self.waiting[b] == 1:
                        del self.waiting[b]
                    else:
                        self.waiting[b] -= 1
                self._evict()
        return data

    def _slice(self, wanted: range, off: int, size: int) -> bytes:
        start = off - wanted[0] * BLOCK
        if len(wanted) == 1:           # the usual case: a whole block is not copied
            return self.cache[wanted[0]][start:start + size]
        return b"".join(self.cache[b] for b in wanted)[start:start + size]

    def _steer(self) -> None:
        with self.lock:
            pending = [b for b in self.waiting if b not in self.cache and b not in self.failed]
            if not pending:
                return
            # blocks that can be read come first: a read of one never waits
            # behind another read's thaw (nor does the read-ahead's thaw hold it)
            ready = [b for b in pending if b not in self.frozen]
            low = min(ready or pending)
            thawing_other = self.thawing is not None and self.thawing[1] != low
            if self.stalled or thawing_other or not self.next <= low < self.next + AHEAD:
                self.generation += 1
                self.next, self.horizon, self.stalled = low, low + 1 + AHEAD, False
                self._stop_thaw_wait()
                self._wake()
            elif self.horizon <= low + AHEAD:
                # coming soon only if the thread goes that far: a steer to a lower
                # block set the horizon short of it, and the thread would rest
                # there with this read waiting for ever
                self.horizon = low + 1 + AHEAD
                if not self.running:
                    self._wake()

    def _evict(self) -> None:
        """Keep CACHED blocks, dropping those farthest behind the decryption
        (under ``lock``)."""
        while len(self.cache) > CACHED:
            free = [b for b in self.cache if b not in self.waiting]
            if not free:
                return
            low = min(free)      # the farthest behind, else the farthest ahead
            del self.cache[low if low < self.next else max(free)]

    async def _changed(self) -> None:
        await self.changed.park()

    def _wake(self) -> None:
        self.changed.unpark_all()

    def _stop_thaw_wait(self) -> None:
        if self.thawing is not None:
            self.thawing[0].cancel()

    def close(self) -> None:
        self.closed = True
        self._stop_thaw_wait()
        self.plain.close_stream()         # its decryption thread ends too
        with self.lock:
            self.cache.clear()
        self._wake()

    # --- the background task and its thread -----------------------------------

    def _idle(self) -> bool:
        """Nothing to do, or ahead enough that starting again can wait a few
        reads: a thread that goes back to trio at each MiB costs a hand-off
        per read (under ``lock``)."""
        return self.stalled or self.next >= self.blocks or self.horizon - self.next < RESUME

    async def run(self) -> None:
        while not self.closed:
            with self.lock:
                idle = self._idle()
                self.running = not idle
            if idle:
                await self._changed()
            else:
                await self._step()
        # again, now that no thread reads: one that was starting a stream when
        # close() stopped the old one started a new one, decrypting for nobody
        self.plain.close_stream()
        with self.lock:
            self.cache.clear()
        # the heap's freed buffers go back to the kernel: the mount's memory
        # after reads is what it was before them
        await trio.to_thread.run_sync(buffers.release_unused)

    async def _step(self) -> None:
        generation = self.generation
        try:
            await trio.to_thread.run_sync(self._decrypt, generation)
        except NeedFragment as need:
            block = self.decoding
            self.plain.close_stream()         # restart decryption there after the thaw
            with self.lock:
                self.frozen.add(block)
            if self.thaws.policy is not None and not self.waiting.get(block):
                self.stalled = True           # read-ahead thaws nothing: a read will
                self._wake()
                return
            await self._thaw(generation, block, need.n)
        except errors.IntegrityError as exc:
            block = self.decoding
            self.plain.close_stream()
            await trio.to_thread.run_sync(thaw.drop_damaged, self.fragments.spool,
                                          self.archive.bid, self.archive.clear)
            self._fail(generation, block, errors.IntegrityError(
                f"{self.archive.bid} at byte {block * BLOCK}: {exc}; nothing unverified "
                "was returned"))
        except Exception as exc:
            self.plain.close_stream()
            self._fail(generation, self.decoding, exc)

    def _decrypt(self, generation: int) -> None:
        """In a thread: decrypt blocks from ``next`` until the horizon, a
        steer (a new generation) or the close; wake trio for waited-for blocks."""
        while True:
            with self.lock:
                if self.closed or generation != self.generation:
                    return
                block = self.next
                if block >= min(self.horizon, self.blocks):
                    return
                if block in self.cache:
                    self.next += 1
                    continue
                self.decoding = block
            if self.frozen and self.plain.pos != block * BLOCK:
                # a fragment is missing: a skip forward would read through it
                self.plain.close_stream()       # (the index is used instead)
            data = self.plain.read(block * BLOCK, BLOCK)
            with self.lock:
                self.frozen.discard(block)
                if generation != self.generation:
                    return
                self.cache[block] = data
                self.next = block + 1
                self._evict()
                wanted = bool(self.waiting.get(block))
            if wanted:
                try:
                    self.token.run_sync_soon(self._wake)
                except trio.RunFinishedError:
                    return

    async def _thaw(self, generation: int, block: int, n: int) -> None:
        if self.closed or generation != self.generation:
            return                  # steered (or closed) while the thread found it missing
        with trio.CancelScope() as scope:
            self.thawing = (scope, block)
            # a read parked while the thread ran into the missing fragment took
            # the block for coming soon: steered now, it is served first
            self._steer()
            try:
                await self.thaws.wait(self.fragments, n)
                with self.lock:
                    self.frozen.discard(block)
            except Exception as exc:
                self._fail(generation, block, exc)
            finally:
                self.thawing = None

    def _fail(self, generation: int, block: int, exc: BaseException) -> None:
        if generation == self.generation:
            self.failed[block] = exc
            self.stalled = True
            self._wake()


def check_readable(archive: Archive, keyring) -> None:
    if keyring is None:
        raise FsError(errno.ENOKEY, f"cannot read {archive.bid}: no secret key loaded "
                                   "(mount with -k SECRET_KEY_FILE to read archives)")
