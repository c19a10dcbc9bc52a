"""thaw: bring requested fragments back from the vault into the restore queue.

A request is an empty file SPOOL/thaw/VAULT/PREFIX/ULID/chunk.N.  For each,
the fragment is restored from an archived storage class if need be (the
vault's tier and days), polled with exponential backoff while the restore
is ongoing, downloaded to a temporary name, checked against the size and
SHA-256 in chunk.0, and renamed into SPOOL/restore/…/chunk.N.  Neither the
secret key nor plaintext is needed or produced here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from typing import Callable

import trio

from . import errors, manifest
from .ids import BackupId
from .spool import FileLock, Spool, chunk_name, create_in
from .pipeline.reader import verify_fragment
from .store.base import State

log = logging.getLogger("cryophile.thaw")

POLL_MIN = 1.0
POLL_MAX = 300.0        # a Glacier restore takes hours: don't hammer HeadObject
DOWNLOADS = 4
VERIFY_TRIES = 3


def fetch(store, key: str, dest: str, check: Callable[[str], None] | None = None,
          expect: manifest.Fragment | None = None, n: int = 0) -> None:
    """Download ``key`` to ``dest`` via a temporary file, renamed once checked:
    against ``expect`` (size and SHA-256, hashed as the bytes arrive) and/or by
    ``check(tmp)``.  No fsync: the restore queue is a cache that restore
    verifies again before use."""
    tmp = f"{dest}.part-{uuid.uuid4().hex[:8]}"
    try:
        with create_in(os.path.dirname(dest), lambda: open(tmp, "wb")) as f:
            os.fchmod(f.fileno(), 0o600)
            sink = _Hashing(f)
            store.get(key, sink)
        if expect is not None:
            sink.verify(expect, n)
        if check is not None:
            check(tmp)
        os.rename(tmp, dest)
    except OSError as exc:
        raise errors.from_oserror(exc, f"cannot write {dest}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _Hashing:
    """A file wrapper that hashes what is written."""

    def __init__(self, f):
        self.f, self.hash, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def verify(self, frag: manifest.Fragment, n: int) -> None:
        if self.size != frag.size:
            raise errors.MissingFragmentError(
                f"fragment chunk.{n} has {self.size} bytes, expected {frag.size}")
        if self.hash.hexdigest() != frag.sha256:
            raise errors.IntegrityError(f"fragment chunk.{n} fails its SHA-256 check")


def fetch_mark(spool: Spool, store, bid: BackupId) -> manifest.ClearInfo:
    """chunk.0 into the restore queue (it is never archived); its clear part."""
    path = spool.path("restore", bid, 0)
    if not os.path.exists(path):
        try:
            fetch(store, bid.fragment_key(0), path,
                  lambda tmp: manifest.check_identity(manifest.load(tmp)[0], bid))
        except errors.NotFoundError:
            raise errors.NotFoundError(_why_missing(store, bid)) from None
    return manifest.load(path)[0]


def _why_missing(store, bid: BackupId) -> str:
    try:
        partial = next(iter(store.list(bid.key + "/")), None)
    except errors.StoreError:
        partial = None
    if partial is not None:
        return (f"archive {bid} is incomplete in {store.url}: its backup stopped before "
                "completion (no chunk.0), so it cannot be restored")
    return f"no archive {bid} in {store.url}"


class DaemonLock(FileLock):
    """Held by a running `cryophile thaw` so that restore leaves the work to it."""

    def __init__(self, spool: Spool):
        super().__init__(os.path.join(spool.queue("thaw"), ".daemon"))


class Thawer:
    def __init__(self, spool: Spool, stores: Callable[[str], object],
                 settings: Callable[[str], tuple[str, int]],
                 select: Callable[[BackupId], bool] = lambda bid: True,
                 limiter: trio.CapacityLimiter | None = None,
                 poll_min: float = POLL_MIN, poll_max: float = POLL_MAX):
        self.spool, self.stores, self.settings = spool, stores, settings
        self.select = select
        self.limiter = limiter or trio.CapacityLimiter(DOWNLOADS * 2)
        self.downloads = trio.Semaphore(DOWNLOADS)
        self.poll_min, self.poll_max = poll_min, poll_max
        self.downloaded = 0
        self.failure: BaseException | None = None

    async def run(self, once: bool = False) -> None:
        while True:
            pending = await trio.to_thread.run_sync(self._pending)
            if once and not pending:
                return
            for bid in pending:
                try:
                    await self.thaw_archive(bid)
                except errors.Error as exc:
                    if once:
                        self.failure = exc
                        raise
                    log.error("thaw of %s failed, will retry: %s", bid, exc)
            await trio.sleep(self.poll_min)

    def _pending(self) -> list[BackupId]:
        return [bid for bid in self.spool.archives("thaw")
                if self.select(bid) and self.spool.fragments("thaw", bid)]

    async def thaw_archive(self, bid: BackupId) -> None:
        store = self.stores(bid.vault)
        clear = await trio.to_thread.run_sync(fetch_mark, self.spool, store, bid,
                                              limiter=self.limiter)
        wanted = self.spool.fragments("thaw", bid)
        try:
            async with trio.open_nursery() as nursery:
                for n in wanted:
                    nursery.start_soon(self.thaw_fragment, store, bid, n, clear)
        except BaseExceptionGroup as group:
            # one named error for the caller (run's retry, restore's message)
            match, _ = group.split(errors.Error)
            if match is None:
                raise
            while isinstance(match, BaseExceptionGroup):
                match = match.exceptions[0]
            raise match from None
        self.spool.remove_dir("thaw", bid)

    async def thaw_fragment(self, store, bid: BackupId, n: int,
                            clear: manifest.ClearInfo) -> None:
        marker = self.spool.path("thaw", bid, n)
        dest = self.spool.path("restore", bid, n)
        if n < 1 or n > len(clear.fragments):
            log.warning("ignoring thaw request for %s chunk.%d: no such fragment", bid, n)
        elif not os.path.exists(dest):
            try:
                await self._wait_restored(store, bid, n)
                async with self.downloads:
                    await self._download(store, bid, n, clear.fragments[n - 1], dest)
            except errors.NotFoundError:
                raise errors.MissingFragmentError(
                    f"fragment chunk.{n} of {bid} is missing from {store.url}") from None
        try:
            os.unlink(marker)
        except FileNotFoundError:
            pass

    async def _wait_restored(self, store, bid: BackupId, n: int) -> None:
        key = bid.fragment_key(n)
        tier, days = self.settings(bid.vault)
        delay = self.poll_min
        requested = False
        while True:
            info = await trio.to_thread.run_sync(store.head, key, limiter=self.limiter)
            if info.state is State.AVAILABLE:
                return
            if info.state is State.ARCHIVED and not requested:
                log.debug("requesting restore of %s (%s, %s tier, %d days)",
                         key, info.storage_class, tier, days)
                await trio.to_thread.run_sync(
                    lambda: store.request_restore(key, tier=tier, days=days),
                    limiter=self.limiter)
                requested = True
                continue            # some stores restore at once: look again now
            else:
                log.debug("%s is still being restored; next look in %.0f s", key, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, self.poll_max)
            requested = False       # still archived after a wait: ask again

    async def _download(self, store, bid, n, frag, dest) -> None:
        key = bid.fragment_key(n)
        for attempt in range(1, VERIFY_TRIES + 1):
            try:
                await trio.to_thread.run_sync(
                    lambda: fetch(store, key, dest, expect=frag, n=n),
                    limiter=self.limiter)
                self.downloaded += 1
                return
            except (errors.IntegrityError, errors.MissingFragmentError) as exc:
                if attempt == VERIFY_TRIES:
                    # keep the kind: truncated (8) or damaged (9)
                    raise type(exc)(
                        f"{key} from {store.url} fails verification after "
                        f"{VERIFY_TRIES} downloads: {exc}") from None
                log.debug("%s: %s; downloading again", key, exc)


def drop_damaged(spool: Spool, bid: BackupId, clear: manifest.ClearInfo) -> None:
    """Thawed fragments that fail verification are fetched again next time
    (fragments linked from the freeze queue are the only copy: kept)."""
    for n in spool.fragments("restore", bid):
        path = spool.path("restore", bid, n)
        if n and not os.path.exists(spool.path("freeze", bid, n)):
            try:
                verify_fragment(path, clear.fragments[n - 1], n)
            except errors.Error:
                os.unlink(path)


def request(spool: Spool, bid: BackupId, fragments: list[int]) -> None:
    """Queue thaw requests for fragments not yet in the restore queue."""
    qdir = spool.dir("thaw", bid)
    have = set(spool.fragments("restore", bid))
    for n in fragments:
        if n not in have:
            create_in(qdir, lambda: open(os.path.join(qdir, chunk_name(n)), "a")).close()
