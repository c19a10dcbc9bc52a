"""freeze: move whole fragments from the freeze queue into their vaults.

Runs as trio tasks: store calls go to threads behind ``limiter``.  Upload
order within an archive: fragments as they arrive, chunk.0 last and only
when its backup has finished, so a vault never shows a complete archive
that is not.  Each local copy is removed only after its upload returned;
an interrupted freeze just uploads the same bytes again (the store counts
an existing object with the same bytes as stored, and refuses to replace
one with other bytes).

Concurrency: any number of processes may freeze one spool (daemons, a
mount, a backup freezing inline).  An archive is frozen under its
``ArchiveFreezeLock``, taken without waiting, so one process uploads and
sweeps it at a time and the others pass it by.

Cleanup never lists the vault: every key this spool stored for an archive
is recorded in its ledger (freeze/…/ULID/.ledger, "KEY SHA256" lines) right
after the upload, and the keys of a dead backup that are deleted are those
of the ledger only, never whatever else the vault holds under the prefix.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

import trio

from . import errors, health, progress
from .ids import BackupId
from .spool import ABANDONED, ArchiveFreezeLock, Spool, create_in
from .pipeline.split import fragment_sha256

log = logging.getLogger("cryophile.freeze")

POLL = 1.0
CONCURRENCY = 4
LIST_CLASS = "STANDARD"       # chunk.0 must be readable without a thaw
BACKOFF_MIN = 1.0             # first retry after a failure (per archive in a freeze
BACKOFF_MAX = 300.0           # daemon, per round in thaw's), doubling up to this
LEDGER = ".ledger"


class Ledger:
    """The keys this spool stored for one archive, with their SHA-256."""

    def __init__(self, spool: Spool, bid: BackupId):
        self.path = os.path.join(spool.dir("freeze", bid), LEDGER)

    def read(self) -> dict[str, str]:
        try:
            with open(self.path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return {}
        return dict(line.split(" ", 1) for line in lines if " " in line)

    def add(self, key: str, sha256: bytes) -> None:
        def append():
            with open(self.path, "a") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(f"{key} {sha256.hex()}\n")
                f.flush()
                os.fsync(f.fileno())
        create_in(os.path.dirname(self.path), append)


async def backoff_loop(step: Callable, what: str, poll: Callable,
                       lo: float = BACKOFF_MIN, hi: float = BACKOFF_MAX,
                       logger: logging.Logger = log) -> None:
    """A service loop: ``await step()`` again and again, ``await poll()``
    between rounds; a round that fails is logged in one line and the next
    is tried after a delay that doubles from ``lo`` up to ``hi``, and starts
    over at the first round that succeeds."""
    delay = lo
    while True:
        try:
            await step()
        except errors.Error as exc:
            logger.error("%s: %s (trying again in %.0f s)", what, exc, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, hi)
            continue
        delay = lo
        await poll()


class Freezer:
    def __init__(self, spool: Spool, stores: Callable[[str], object],
                 storage_class: Callable[[str], str],
                 select: Callable[[BackupId], bool] = lambda bid: True,
                 limiter: trio.CapacityLimiter | None = None, vault: str | None = None):
        self.spool = spool
        self.vault = vault                    # the one vault select takes, if so
        self.stores = stores                  # vault uuid -> Store
        self.storage_class = storage_class    # vault uuid -> storage class name
        self.select = select
        self.limiter = limiter or trio.CapacityLimiter(CONCURRENCY)
        self.uploaded = 0
        self.wake = trio.Event()
        self.swept: set[BackupId] = set()
        self.backoff: dict[BackupId, tuple[float, float]] = {}   # bid -> (retry at, delay)
        self.failed: set[BackupId] = set()
        self.unreadable: set[str] = set()     # parts of the queue it cannot read, said once
        self.progress = False                 # a bar per archive (on a terminal)
        self.bar = progress.OFF

    async def run(self, once: bool = False) -> None:
        """Drain the queue; unless ``once``, keep watching it.  A daemon logs
        a failing archive in one line and tries it again after a delay that
        doubles from BACKOFF_MIN to BACKOFF_MAX, while the others go on."""
        if once:
            return await self.round()
        while True:
            try:
                await trio.to_thread.run_sync(self.spool.clean_dead_backups)
            except errors.Error as exc:
                log.error("cleaning up dead backups: %s", exc)
            await self.drain(daemon=True)
            await self._pause()

    async def round(self) -> None:
        """Clean up dead backups, then try every archive in the queue; a
        failing archive (or vault) does not stop the others.  Raises the
        first failure at the end, after logging any further ones."""
        await trio.to_thread.run_sync(self.spool.clean_dead_backups)
        failures = await self.drain()
        for exc in failures[1:]:
            log.error("%s", exc)
        if failures:
            raise failures[0]

    async def _pause(self) -> None:
        with trio.move_on_after(POLL):
            await self.wake.wait()
        self.wake = trio.Event()

    def poke(self) -> None:
        """Look at the queue now (a fragment was just queued)."""
        self.wake.set()

    async def drain(self, daemon: bool = False) -> list[errors.Error]:
        unreadable: list[errors.Error] = []     # archives of another user (backup run as root?)
        bids = await trio.to_thread.run_sync(
            lambda: list(self.spool.archives("freeze", unreadable)))
        if self.vault is not None:
            mine = os.path.join(self.spool.queue("freeze"), self.vault)
            unreadable = [exc for exc in unreadable
                          if not os.path.relpath(exc.path, mine).startswith("..")
                          or exc.path == self.spool.queue("freeze")]
        failures = list(unreadable)
        if daemon:          # said once, not at every look at the queue
            for exc in unreadable:
                if str(exc) not in self.unreadable:
                    log.error("%s", exc)
            self.unreadable = {str(exc) for exc in unreadable}
        for bid in bids:
            if not self.select(bid):
                continue
            retry_at, delay = self.backoff.get(bid, (0.0, BACKOFF_MIN / 2))
            if trio.current_time() < retry_at:
                continue
            try:
                await self.freeze_archive(bid)
            except errors.Error as exc:
                failures.append(exc)
                self.failed.add(bid)
                if daemon:
                    delay = min(delay * 2, BACKOFF_MAX)
                    self.backoff[bid] = (trio.current_time() + delay, delay)
                    log.error("freeze of %s: %s (trying again in %.0f s)", bid, exc, delay)
            else:
                self.backoff.pop(bid, None)
        return failures

    async def freeze_archive(self, bid: BackupId) -> None:
        lock = ArchiveFreezeLock(self.spool, bid)
        try:
            if not await trio.to_thread.run_sync(lock.acquire):
                return                      # another process is freezing it
        except OSError as exc:
            raise errors.from_oserror(exc, f"cannot lock {bid} in the freeze queue") from None
        try:
            await self._freeze_locked(bid)
        except OSError as exc:
            raise errors.from_oserror(exc, f"cannot freeze {bid} from the spool") from None
        except BaseExceptionGroup as group:
            exc = errors.unwrap(group)
            if exc is group:
                raise
            raise exc from None
        finally:
            self.bar.finish()
            lock.release()

    async def _freeze_locked(self, bid: BackupId) -> None:
        qdir = self.spool.dir("freeze", bid)
        # (the spool's file calls go to threads too: a slow disk must not stall a mount)
        if await trio.to_thread.run_sync(os.path.exists, os.path.join(qdir, ABANDONED)):
            await self._forget(bid)
            return
        store = self.stores(bid.vault)
        if bid not in self.swept:
            await self._sweep(store, bid)
        ledger = Ledger(self.spool, bid)
        if self.progress:
            self.bar = await trio.to_thread.run_sync(progress.freezing, qdir,
                                                     f"freeze {bid.ulid}")
        queued = await trio.to_thread.run_sync(self.spool.fragments, "freeze", bid)
        async with trio.open_nursery() as nursery:
            for n in queued:
                if n:
                    nursery.start_soon(self._upload, store, bid, ledger, n,
                                       self.storage_class(bid.vault))
        finished, left = await trio.to_thread.run_sync(self._left, bid)
        if finished and left == [0]:
            await self._upload(store, bid, ledger, 0, LIST_CLASS)
            await trio.to_thread.run_sync(health.note_frozen, self.spool, bid)
            log.info("frozen %s", bid)
            left = await trio.to_thread.run_sync(self.spool.fragments, "freeze", bid)
        if finished and not left:
            await trio.to_thread.run_sync(self.spool.remove_dir, "freeze", bid)

    def _left(self, bid: BackupId) -> tuple[bool, list[int]]:
        """Is the backup finished (its work directory gone), and what is left
        in the freeze queue."""
        finished = not os.path.exists(self.spool.dir("backup", bid))
        return finished, self.spool.fragments("freeze", bid)

    async def _upload(self, store, bid: BackupId, ledger: Ledger, n: int,
                      storage_class: str) -> None:
        path = self.spool.path("freeze", bid, n)
        key = bid.fragment_key(n)

        def upload() -> bool:
            try:
                size = os.path.getsize(path)
                sha256 = fragment_sha256(path)     # recorded by the writer
            except FileNotFoundError:
                return False               # dropped meanwhile (an abandoned backup)
            if ledger.read().get(key) != sha256.hex():
                log.debug("uploading %s (%d bytes) to %s", key, size, store.url)
                store.put(key, path, size=size, sha256=sha256, storage_class=storage_class)
                ledger.add(key, sha256)
            self.bar.add(size)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return True

        def upload_or_say() -> bool:
            try:
                return upload()
            except OSError as exc:
                raise errors.from_oserror(exc, f"cannot freeze {path}") from None
        if await trio.to_thread.run_sync(upload_or_say, limiter=self.limiter):
            self.uploaded += 1

    async def _sweep(self, store, bid: BackupId) -> None:
        """Abort multipart uploads an earlier, killed freeze left for this
        archive (under its lock: no live upload of it can be in flight)."""
        try:
            n = await trio.to_thread.run_sync(store.abort_uploads, bid.key + "/",
                                              limiter=self.limiter)
            if n:
                log.info("aborted %d unfinished upload(s) of %s left by an earlier freeze", n, bid)
        except errors.AccessDeniedError as exc:   # the upload itself will say
            log.debug("could not look for unfinished uploads of %s in %s: %s",
                        bid, store.url, exc)
        self.swept.add(bid)

    async def _forget(self, bid: BackupId) -> None:
        """Delete what this spool stored of a backup that died before
        completion: the keys of its ledger, nothing else; and the multipart
        uploads of its keys that a killed freeze left open (invisible, billed)."""
        store = self.stores(bid.vault)
        await self._sweep(store, bid)
        keys = sorted(await trio.to_thread.run_sync(Ledger(self.spool, bid).read))
        if keys:

            def delete_ours():
                for key in keys:
                    store.delete(key)
            try:
                await trio.to_thread.run_sync(delete_ours, limiter=self.limiter)
            except errors.AccessDeniedError as exc:
                log.warning("could not delete the fragments of incomplete backup %s from %s "
                            "(%s); they are never listed as an archive", bid, store.url, exc)
        await trio.to_thread.run_sync(self.spool.remove_dir, "freeze", bid)


class InlineFreeze:
    """What a backup calls when it must make room itself: one freeze round
    over the whole spool, in the calling thread (which must not run trio).
    An archive that failed is not tried again by the same backup: an
    unreachable vault would slow every fragment by its retries."""

    def __init__(self, spool: Spool, stores: Callable[[str], object],
                 storage_class: Callable[[str], str]):
        self.spool, self.stores, self.storage_class = spool, stores, storage_class
        self.swept: set[BackupId] = set()     # sweep each archive once per backup
        self.failed: set[BackupId] = set()    # not tried again by this backup
        self.failure: errors.Error | None = None    # why the last of them failed

    def __call__(self) -> None:
        freezer = Freezer(self.spool, self.stores, self.storage_class,
                          select=lambda bid: bid not in self.failed)
        freezer.swept = self.swept
        try:
            trio.run(freezer.round)
        except errors.Error as exc:
            self.failure = exc
            raise
        finally:
            self.failed |= freezer.failed
