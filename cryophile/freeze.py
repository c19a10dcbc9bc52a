"""freeze: move whole fragments from the freeze queue into their vaults.

Runs as trio tasks: store calls go to threads behind ``limiter``.  Upload
order within an archive: fragments as they arrive, chunk.0 last and only
when its backup has finished, so a vault never shows a complete archive
that is not.  Each local copy is removed only after its upload returned;
an interrupted freeze just uploads the same bytes again.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

import trio

from . import errors
from .ids import BackupId
from .spool import ABANDONED, Spool

log = logging.getLogger("cryophile.freeze")

POLL = 1.0
CONCURRENCY = 4
LIST_CLASS = "STANDARD"       # chunk.0 must be readable without a thaw


class Freezer:
    def __init__(self, spool: Spool, stores: Callable[[str], object],
                 storage_class: Callable[[str], str],
                 select: Callable[[BackupId], bool] = lambda bid: True,
                 limiter: trio.CapacityLimiter | None = None):
        self.spool = spool
        self.stores = stores                  # vault uuid -> Store
        self.storage_class = storage_class    # vault uuid -> storage class name
        self.select = select
        self.limiter = limiter or trio.CapacityLimiter(CONCURRENCY)
        self.uploaded = 0
        self.wake = trio.Event()
        self.swept: set[BackupId] = set()

    async def run(self, once: bool = False) -> None:
        """Drain the queue; unless ``once``, keep watching it, and log and
        retry failures rather than stop."""
        while True:
            await trio.to_thread.run_sync(self.spool.clean_dead_backups)
            try:
                await self.drain()
            except errors.Error as exc:
                if once:
                    raise
                log.error("%s (will try again)", exc)
            if once:
                return
            with trio.move_on_after(POLL):
                await self.wake.wait()
            self.wake = trio.Event()

    def poke(self) -> None:
        """Look at the queue now (a fragment was just queued)."""
        self.wake.set()

    async def drain(self) -> None:
        bids = await trio.to_thread.run_sync(lambda: list(self.spool.archives("freeze")))
        for bid in bids:
            if self.select(bid):
                await self.freeze_archive(bid)

    async def freeze_archive(self, bid: BackupId) -> None:
        qdir = self.spool.dir("freeze", bid)
        if os.path.exists(os.path.join(qdir, ABANDONED)):
            await self._forget(bid)
            return
        store = self.stores(bid.vault)
        if bid not in self.swept:
            await self._sweep(store, bid)
        async with trio.open_nursery() as nursery:
            for n in self.spool.fragments("freeze", bid):
                if n:
                    nursery.start_soon(self._upload, store, bid, n,
                                       self.storage_class(bid.vault))
        finished = not os.path.exists(self.spool.dir("backup", bid))
        if finished and self.spool.fragments("freeze", bid) == [0]:
            await self._upload(store, bid, 0, LIST_CLASS)
            log.info("frozen %s", bid)
        if finished and not self.spool.fragments("freeze", bid):
            self.spool.remove_dir("freeze", bid)

    async def _upload(self, store, bid: BackupId, n: int, storage_class: str) -> None:
        path = self.spool.path("freeze", bid, n)
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            return                     # another freeze took it
        key = bid.fragment_key(n)
        log.debug("uploading %s (%d bytes) to %s", key, size, store.url)
        await trio.to_thread.run_sync(
            lambda: store.put(key, path, size=size, storage_class=storage_class),
            limiter=self.limiter)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.uploaded += 1

    async def _sweep(self, store, bid: BackupId) -> None:
        """Abort multipart uploads an earlier, killed freeze left for this archive."""
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
        """Delete what the vault has of a backup that died before completion."""
        store = self.stores(bid.vault)

        def delete_all():
            for info in list(store.list(bid.key + "/")):
                store.delete(info.key)
        try:
            await trio.to_thread.run_sync(delete_all, limiter=self.limiter)
        except errors.AccessDeniedError as exc:
            log.warning("could not delete the fragments of incomplete backup %s from %s (%s); "
                        "they are never listed as an archive", bid, store.url, exc)
        self.spool.remove_dir("freeze", bid)
