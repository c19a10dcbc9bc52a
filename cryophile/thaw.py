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

from . import errors, health, manifest, progress, restorequeue, thawprogress
from .ids import BackupId
from .spool import FileLock, Spool, create_in
from .pipeline import verdict
from .pipeline.reader import verify_fragment
from .store.base import State

trio = None    # imported by the first Thawer: a restore reading in place runs without it

log = logging.getLogger("cryophile.thaw")

POLL_MIN = 1.0
POLL_MAX = 300.0        # a Glacier restore takes hours: don't hammer HeadObject
DOWNLOADS = 4
VERIFY_TRIES = 3


def fetch(store, key: str, dest: str, check: Callable[[str], None] | None = None,
          expect: manifest.Fragment | None = None, n: int = 0) -> None:
    """Download ``key`` to ``dest`` via a temporary file, renamed once checked:
    against ``expect`` (size and SHA-256, hashed as the bytes arrive) and/or by
    ``check(tmp)``.  No fsync: the restore queue is a cache; the verdict
    recorded with it holds for this boot only (pipeline/verdict.py)."""
    tmp = f"{dest}.part-{uuid.uuid4().hex[:8]}"
    try:
        with create_in(os.path.dirname(dest), lambda: open(tmp, "wb")) as f:
            os.fchmod(f.fileno(), 0o600)
            sink = _Hashing(f)
            store.get(key, sink)
            f.flush()
            if expect is not None:
                sink.verify(expect, n)
                verdict.record(f.fileno(), expect.sha256)   # restore need not hash it again
        if check is not None:
            check(tmp)
        os.rename(tmp, dest)
    except _SpoolWriteError as exc:
        raise errors.from_oserror(exc.exc, f"cannot write {dest}") from None
    except OSError as exc:
        raise errors.from_oserror(exc, f"cannot write {dest}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _SpoolWriteError(Exception):
    """The spool could not take a write (not an OSError: stores would take it
    for their own failure and blame the vault)."""

    def __init__(self, exc: OSError):
        super().__init__(str(exc))
        self.exc = exc


class _Hashing:
    """A file wrapper that hashes what is written."""

    def __init__(self, f):
        self.f, self.hash, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        try:
            return self.f.write(data)
        except OSError as exc:
            raise _SpoolWriteError(exc) from None

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

    def acquire(self, create: bool = True) -> bool:
        held = super().acquire(create)
        if held and create and self.fd is not None:
            health.record_holder(self.fd)       # `status` names the holder
        return held


PERMANENT = (errors.MissingFragmentError, errors.IntegrityError, errors.NotFoundError)


class Thawer:
    """Serves thaw requests, each fragment as a task of its own.

    Concurrency: ``run`` is the only loop; it starts one task per request
    not already being served (``active``), at most ``DOWNLOADS`` downloading
    at once, blocking store calls in threads under ``limiter``.  A fragment
    that is missing or fails its checks after ``VERIFY_TRIES`` downloads is
    a permanent failure: recorded in the spool (restorequeue.record_failure)
    with its request dropped, never retried until someone asks again.  Other
    failures (the vault unreachable…) are retried with backoff, or with
    ``fail_fast`` end ``run``.
    """

    def __init__(self, spool: Spool, stores: Callable[[str], object],
                 settings: Callable[[str], tuple[str, int]],
                 select: Callable[[BackupId], bool] = lambda bid: True,
                 limiter: trio.CapacityLimiter | None = None,
                 poll_min: float = POLL_MIN, poll_max: float = POLL_MAX,
                 fail_fast: bool = False, guard=None,
                 progress_every: float = thawprogress.EVERY_LOG):
        global trio
        import trio
        self.spool, self.stores, self.settings = spool, stores, settings
        self.guard = guard          # ledger.Guard: charges (or refuses) each restore request
        self.select = select
        self.limiter = limiter or trio.CapacityLimiter(DOWNLOADS * 2)
        self.downloads = trio.Semaphore(DOWNLOADS)
        self.poll_min, self.poll_max = poll_min, poll_max
        self.fail_fast = fail_fast
        self.downloaded = 0
        self.failure: BaseException | None = None      # what ended run, if anything
        self.permanent: errors.Error | None = None     # the first permanent failure
        self.active: set[tuple[BackupId, int, bool]] = set()
        self.retry_at: dict[BackupId, tuple[float, float]] = {}   # bid -> (when, delay)
        self.marks: dict[BackupId, manifest.ClearInfo] = {}
        self.mark_locks: dict[BackupId, trio.Lock] = {}
        self._wake = trio.Event()
        self.progress = thawprogress.Tracker(log, progress_every)   # "3 of 120 restored…"
        self.bar = progress.OFF     # the downloads' bar (`cryophile thaw` on a terminal)

    def poke(self) -> None:
        """New requests: look now (call in trio, or via trio.from_thread)."""
        self._wake.set()

    async def run(self, once: bool = False) -> None:
        """Serve requests; with ``once``, until none is left, then raise the
        first failure (permanent ones included) if there was one."""
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    pending = await trio.to_thread.run_sync(self._pending)
                    self.progress.requested(((b, n) for b, n, _ in pending),
                                            {b for b, _, _ in self.active})
                    self.progress.tick()
                    for req in pending:
                        if req not in self.active and self._due(req[0]):
                            self.active.add(req)
                            nursery.start_soon(self._serve, req, once)
                    if once and not pending and not self.active:
                        break
                    with trio.move_on_after(self.poll_min):
                        await self._wake.wait()
                    self._wake = trio.Event()
        except BaseExceptionGroup as group:
            self.failure = errors.unwrap(group)
            raise self.failure from None
        self.progress.tick()
        if once and self.permanent is not None:
            self.failure = self.permanent
            raise self.permanent

    def _due(self, bid: BackupId) -> bool:
        return self.retry_at.get(bid, (0.0, 0.0))[0] <= trio.current_time()

    def _pending(self) -> list[tuple[BackupId, int, bool]]:
        """(archive, fragment, warm only) for each request; requests for what
        has failed for good are dropped (someone asked without clearing)."""
        found = []
        for bid in self.spool.archives("thaw"):
            if not self.select(bid):
                continue
            failed = restorequeue.failures(self.spool, bid)
            for warm in (False, True):
                for n in restorequeue.requests(self.spool, bid, warm):
                    if n in failed or 0 in failed:
                        restorequeue.drop_request(self.spool, bid, n, warm)
                    else:
                        found.append((bid, n, warm))
        return found

    async def _serve(self, req: tuple[BackupId, int, bool], once: bool) -> None:
        bid, n, warm = req
        store = self.stores(bid.vault)
        which = n
        try:
            if not await trio.to_thread.run_sync(self._wanted, bid, n, warm):
                return          # served or given up on since the requests were listed
            if warm:
                await self.warm_fragment(store, bid, n)
            else:
                which = 0
                clear = await self._mark(store, bid)
                which = n
                await self.thaw_fragment(store, bid, n, clear)
            self.retry_at.pop(bid, None)
        except PERMANENT as exc:
            await trio.to_thread.run_sync(self._give_up, bid, which, exc, once)
        except errors.Error as exc:
            if self.fail_fast or once:
                raise
            self._failed(bid, exc)
            _, delay = self.retry_at.get(bid, (0.0, self.poll_min / 2))
            delay = min(max(delay * 2, self.poll_min), self.poll_max)
            self.retry_at[bid] = (trio.current_time() + delay, delay)
            log.error("thaw of %s failed, will retry in %.0f s: %s", bid, delay, exc)
        finally:
            self.active.discard(req)
            self.poke()

    def _wanted(self, bid: BackupId, n: int, warm: bool) -> bool:
        """Still asked for, and not given up on meanwhile (by another task)."""
        if restorequeue.failure(self.spool, bid, n) is not None:
            restorequeue.drop_request(self.spool, bid, n, warm)
            return False
        return n in restorequeue.requests(self.spool, bid, warm)

    async def _mark(self, store, bid: BackupId) -> manifest.ClearInfo:
        """chunk.0's clear part, fetched once for all the archive's tasks."""
        lock = self.mark_locks.setdefault(bid, trio.Lock())
        async with lock:
            if bid not in self.marks or not await trio.to_thread.run_sync(
                    os.path.exists, self.spool.path("restore", bid, 0)):
                self.marks[bid] = await trio.to_thread.run_sync(
                    fetch_mark, self.spool, store, bid, limiter=self.limiter)
            return self.marks[bid]

    def _give_up(self, bid: BackupId, which: int, exc: errors.Error, once: bool) -> None:
        # what the vault holds now, so that a record it no longer matches is known stale
        seen = restorequeue.look(self.stores(bid.vault), bid.fragment_key(which))
        restorequeue.record_failure(self.spool, bid, which, exc, seen)
        # a restore reports what it hits itself; thaw --once its first failure
        reported = self.fail_fast or (once and self.permanent is None)
        self.permanent = self.permanent or exc
        self._failed(bid, exc)
        level = logging.DEBUG if reported else logging.ERROR
        log.log(level, "thaw of %s chunk.%d failed for good (not retried until asked "
                "again): %s", bid, which, exc)

    def _failed(self, bid: BackupId, exc: errors.Error) -> None:
        """A hook for subclasses (the mount tells waiting readers)."""

    async def warm_fragment(self, store, bid: BackupId, n: int) -> None:
        """Ask the vault to restore fragment n, without downloading it."""
        key = bid.fragment_key(n)
        try:
            info = await trio.to_thread.run_sync(store.head, key, limiter=self.limiter)
        except errors.NotFoundError:
            raise errors.MissingFragmentError(
                f"fragment chunk.{n} of {bid} is missing from {store.url}") from None
        tier, days = self.settings(bid.vault)
        if info.state is State.ARCHIVED:
            log.debug("requesting restore of %s (%s, %s tier, %d days)",
                      key, info.storage_class, tier, days)
            await self._charge(bid, n, info, tier, days)
            await trio.to_thread.run_sync(
                lambda: store.request_restore(key, tier=tier, days=days), limiter=self.limiter)
        if info.state is State.AVAILABLE:
            self.progress.restored(bid, n)
        else:
            self.progress.restoring(bid, n, info.storage_class, tier)
        await trio.to_thread.run_sync(restorequeue.drop_request, self.spool, bid, n, True)

    async def _charge(self, bid: BackupId, n: int, info, tier: str, days: int) -> None:
        """The thaw budget's ledger, before each RestoreObject (BudgetError if refused)."""
        if self.guard is not None:
            await trio.to_thread.run_sync(self.guard.request, bid, n, info, tier, days)

    async def thaw_fragment(self, store, bid: BackupId, n: int,
                            clear: manifest.ClearInfo) -> None:
        dest = self.spool.path("restore", bid, n)
        if n < 1 or n > len(clear.fragments):
            log.warning("ignoring thaw request for %s chunk.%d: no such fragment", bid, n)
        elif not await trio.to_thread.run_sync(os.path.exists, dest):
            try:
                await self._wait_restored(store, bid, n)
                async with self.downloads:
                    await self._download(store, bid, n, clear.fragments[n - 1], dest)
            except errors.NotFoundError:
                raise errors.MissingFragmentError(
                    f"fragment chunk.{n} of {bid} is missing from {store.url}") from None
        await trio.to_thread.run_sync(restorequeue.drop_request, self.spool, bid, n, False)
        await trio.to_thread.run_sync(restorequeue.prune_dir, self.spool, "thaw", bid)

    async def _wait_restored(self, store, bid: BackupId, n: int) -> None:
        key = bid.fragment_key(n)
        tier, days = self.settings(bid.vault)
        delay = self.poll_min
        requested = False
        while True:
            info = await trio.to_thread.run_sync(store.head, key, limiter=self.limiter)
            if info.state is State.AVAILABLE:
                self.progress.restored(bid, n)
                return
            self.progress.restoring(bid, n, info.storage_class, tier)
            if info.state is State.ARCHIVED and not requested:
                log.debug("requesting restore of %s (%s, %s tier, %d days)",
                         key, info.storage_class, tier, days)
                await self._charge(bid, n, info, tier, days)
                await trio.to_thread.run_sync(
                    lambda: store.request_restore(key, tier=tier, days=days),
                    limiter=self.limiter)
                requested = True
                continue            # some stores restore at once: look again now
            else:
                log.debug("%s is still being restored; next look in %.0f s", key, delay)
            self.progress.wait(bid, +1)
            try:
                await trio.sleep(delay)
            finally:
                self.progress.wait(bid, -1)
            delay = min(delay * 2, self.poll_max)
            requested = False       # still archived after a wait: ask again

    async def _download(self, store, bid, n, frag, dest) -> None:
        key = bid.fragment_key(n)
        log.debug("downloading %s (%d bytes) from %s", key, frag.size, store.url)
        self.bar.grow(frag.size)
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
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass


def request(spool: Spool, bid: BackupId, fragments: list[int]) -> None:
    """Queue thaw requests for fragments not yet in the restore queue."""
    have = set(spool.fragments("restore", bid))
    restorequeue.request(spool, bid, [n for n in fragments if n not in have])
